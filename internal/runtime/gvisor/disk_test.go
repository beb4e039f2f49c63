package gvisor_test

import (
	"errors"

	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// quotaRes is the small size with a disk quota small enough to fill fast.
var quotaRes = func() runtime.Resources {
	r := testenv.Small
	r.DiskBytes = 32 << 20
	return r
}()

// dfKiB returns the total and used 1K blocks df reports for path inside sb.
func dfKiB(t *testing.T, sb runtime.Sandbox, path string) (total, used int64) {
	t.Helper()
	out := sh(t, sb, "df -k "+path+" | tail -n 1")
	f := strings.Fields(out)
	if len(f) < 3 {
		t.Fatalf("df %s: %q", path, out)
	}
	total, err1 := strconv.ParseInt(f[1], 10, 64)
	used, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("df %s: %q", path, out)
	}
	return total, used
}

// hostDisk reads what the sandbox's writes hold on the host's disk.
func hostDisk(t *testing.T, sb runtime.Sandbox) runtime.Disk {
	t.Helper()
	dr, ok := sb.(runtime.DiskReader)
	if !ok {
		t.Fatal("the sandbox does not tell its disk use")
	}
	d, err := dr.Disk()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// withinQuota checks that the host holds no more than the quota (plus a
// page-rounding margin) for sb.
func withinQuota(t *testing.T, sb runtime.Sandbox, what string) runtime.Disk {
	t.Helper()
	d := hostDisk(t, sb)
	if d.LimitBytes != uint64(quotaRes.DiskBytes) {
		t.Fatalf("%s: disk limit %d, want %d", what, d.LimitBytes, quotaRes.DiskBytes)
	}
	if d.UsedBytes > d.LimitBytes+1<<20 {
		t.Fatalf("%s: the sandbox holds %d bytes of host disk, over its quota of %d", what, d.UsedBytes, d.LimitBytes)
	}
	return d
}

// TestDiskQuota: writes past the quota fail inside with ENOSPC and the
// program's own message, df shows the quota, the host never holds more than
// the quota, and freed space comes back, whatever way the sandbox tries to
// get around it.
func TestDiskQuota(t *testing.T) {
	env := testenv.NewDriver(t)
	quota := quotaRes.DiskBytes

	t.Run("df and dd", func(t *testing.T) {
		sb := newSandboxRes(t, env, quotaRes)
		for _, p := range []string{"/", "/workspace"} {
			if total, _ := dfKiB(t, sb, p); total != quota>>10 {
				t.Errorf("df %s: %d KiB, want the quota %d KiB", p, total, quota>>10)
			}
		}
		if total, _ := dfKiB(t, sb, "/tmp"); total != quotaRes.MemoryBytes/2>>10 {
			t.Errorf("df /tmp: %d KiB, want half the memory, %d KiB", total, quotaRes.MemoryBytes/2>>10)
		}
		before := hostDisk(t, sb)
		r := run(t, sb, runtime.ExecRequest{Command: "dd if=/dev/zero of=/workspace/big bs=1M count=100"})
		t.Logf("dd past the quota: exit %d, stderr %q", r.ExitCode, r.Stderr)
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, "No space left on device") {
			t.Fatalf("dd of 100 MiB under a 32 MiB quota: exit %d, stderr %q", r.ExitCode, r.Stderr)
		}
		full := withinQuota(t, sb, "after dd")
		if full.UsedBytes < uint64(quota)*3/4 {
			t.Errorf("host disk %d bytes after filling a %d-byte quota (before: %d)", full.UsedBytes, quota, before.UsedBytes)
		}
		// /tmp is memory, not disk: filling it fails at its own size.
		r = run(t, sb, runtime.ExecRequest{Command: "head -c 300M /dev/zero > /tmp/fill"})
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, "No space left on device") {
			t.Errorf("filling /tmp past half the memory: exit %d, stderr %q", r.ExitCode, r.Stderr)
		}
		sh(t, sb, "rm -f /tmp/fill /workspace/big")
		if d := hostDisk(t, sb); d.UsedBytes > 4<<20 {
			t.Errorf("after rm the sandbox still holds %d bytes of host disk", d.UsedBytes)
		}
		if _, used := dfKiB(t, sb, "/"); used > 4<<10 {
			t.Errorf("after rm df says %d KiB used", used)
		}
		// And the space is usable again.
		sh(t, sb, "head -c 20M /dev/zero > /workspace/again")
	})

	t.Run("many small files", func(t *testing.T) {
		sb := newSandboxRes(t, env, quotaRes)
		// Shell builtins only: one page per file until the quota ends it
		// (dash's echo says "I/O error" for any failed write), then a
		// program that names the error.
		r := run(t, sb, runtime.ExecRequest{Command: `mkdir -p /workspace/m && cd /workspace/m && i=0; while echo x > f$i; do i=$((i+1)); done; echo $i; head -c 64K /dev/zero > last`, Timeout: 2 * time.Minute})
		n, _ := strconv.Atoi(strings.TrimSpace(r.Stdout))
		t.Logf("small files: %d written; stderr %q", n, lastLine(r.Stderr))
		if !strings.Contains(r.Stderr, "No space left on device") || n < int(quota/4096)/2 || n > int(quota/4096)+16 {
			t.Fatalf("small files: %d written (quota %d pages), exit %d, stderr %q", n, quota/4096, r.ExitCode, lastLine(r.Stderr))
		}
		withinQuota(t, sb, "after small files")
	})

	t.Run("sparse file", func(t *testing.T) {
		sb := newSandboxRes(t, env, quotaRes)
		// A 10 GiB hole costs nothing; filling it is what counts.
		sh(t, sb, "truncate -s 10G /workspace/sparse && ls -l /workspace/sparse")
		r := run(t, sb, runtime.ExecRequest{Command: "dd if=/dev/zero of=/workspace/sparse bs=1M count=64 seek=4096 conv=notrunc"})
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, "No space left on device") {
			t.Fatalf("filling a sparse file past the quota: exit %d, stderr %q", r.ExitCode, r.Stderr)
		}
		withinQuota(t, sb, "after the sparse file")
	})

	t.Run("hard links", func(t *testing.T) {
		sb := newSandboxRes(t, env, quotaRes)
		sh(t, sb, "head -c 16M /dev/zero > /workspace/a && for i in $(seq 100); do ln /workspace/a /workspace/l$i; done")
		if _, used := dfKiB(t, sb, "/"); used > 17<<10 {
			t.Errorf("100 hard links of a 16 MiB file: df says %d KiB used", used)
		}
		// The links neither free nor double anything: 16 + 20 MiB does not fit in 32.
		r := run(t, sb, runtime.ExecRequest{Command: "head -c 20M /dev/zero > /workspace/b"})
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, "No space left on device") {
			t.Fatalf("writing past the quota beside hard links: exit %d, stderr %q", r.ExitCode, r.Stderr)
		}
		withinQuota(t, sb, "after hard links")
		// Removing every name but one frees nothing; the last one frees it.
		sh(t, sb, "rm -f /workspace/b /workspace/l*")
		if _, used := dfKiB(t, sb, "/"); used < 15<<10 {
			t.Errorf("a file with one name left: df says %d KiB used", used)
		}
		sh(t, sb, "rm /workspace/a && head -c 28M /dev/zero > /workspace/c")
	})

	t.Run("open after delete", func(t *testing.T) {
		sb := newSandboxRes(t, env, quotaRes)
		r := run(t, sb, runtime.ExecRequest{Command: `cd /workspace
exec 3>held
head -c 20M /dev/zero >&3
rm held
if head -c 20M /dev/zero > other 2>/dev/null; then echo "wrote past the quota"; else echo "refused while held"; fi
exec 3>&-
rm -f other
head -c 20M /dev/zero > after && echo "written after close"`})
		t.Logf("held file: %q %q", r.Stdout, r.Stderr)
		if r.Stdout != "refused while held\nwritten after close\n" {
			t.Fatalf("a deleted file held open: stdout %q, stderr %q", r.Stdout, r.Stderr)
		}
		withinQuota(t, sb, "after the held file")
	})

	t.Run("fixed at start", func(t *testing.T) {
		sb := newSandboxRes(t, env, quotaRes)
		bigger := quotaRes
		bigger.DiskBytes *= 2
		if err := sb.SetResources(bigger); !errors.Is(err, runtime.ErrInvalidRequest) {
			t.Fatalf("changing the disk quota of a running sandbox: %v", err)
		}
		same := quotaRes
		same.DiskBytes = 0 // "keep": a claim that does not name a disk
		same.MemoryBytes = 768 << 20
		if err := sb.SetResources(same); err != nil {
			t.Fatal(err)
		}
		if got := sb.Info().Resources.DiskBytes; got != quota {
			t.Fatalf("disk quota after SetResources: %d", got)
		}
	})
}

// TestDiskQuotaCheckpoint: a paused sandbox's files are in its snapshot,
// and the restored sandbox has the same quota and use.
func TestDiskQuotaCheckpoint(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandboxRes(t, env, quotaRes)
	ctx := testCtx(t, 2*time.Minute)
	sh(t, sb, "head -c 12M /dev/urandom > /workspace/data && md5sum /workspace/data > /workspace/sum")
	snap, err := sb.Checkpoint(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if snap.Bytes < 12<<20 {
		t.Errorf("snapshot of %d bytes does not hold the sandbox's 12 MiB of files", snap.Bytes)
	}
	if snap.Resources.DiskBytes != quotaRes.DiskBytes {
		t.Errorf("snapshot resources %+v", snap.Resources)
	}
	rs, err := env.Driver.Restore(ctx, snap.Dir, testenv.Rootfs(t, "debian-12"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rs.Destroy(ctx) })
	sh(t, rs, "md5sum -c /workspace/sum")
	if total, used := dfKiB(t, rs, "/"); total != quotaRes.DiskBytes>>10 || used < 12<<10 {
		t.Errorf("restored: df %d KiB total, %d KiB used", total, used)
	}
	d := hostDisk(t, rs)
	t.Logf("restored sandbox holds %d bytes of host disk", d.UsedBytes)
	if d.UsedBytes < 12<<20 || d.UsedBytes > uint64(quotaRes.DiskBytes)+1<<20 {
		t.Errorf("restored sandbox holds %d bytes of host disk", d.UsedBytes)
	}
	r := run(t, rs, runtime.ExecRequest{Command: "head -c 30M /dev/zero > /workspace/more"})
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "No space left on device") {
		t.Fatalf("restored sandbox wrote past its quota: exit %d, stderr %q", r.ExitCode, r.Stderr)
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
