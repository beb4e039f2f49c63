package gvisor_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/agent/client"
	"github.com/orkestr-eu/orkestr/internal/agent/wire"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/gvisor"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

func readString(t *testing.T, sb runtime.Sandbox, path string) string {
	t.Helper()
	var b bytes.Buffer
	if _, err := sb.ReadFile(testCtx(t, 30*time.Second), path, &b); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b.String()
}

func writeString(t *testing.T, sb runtime.Sandbox, path, s string) {
	t.Helper()
	n, err := sb.WriteFile(testCtx(t, 30*time.Second), path, 0o644, strings.NewReader(s))
	if err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	if n != int64(len(s)) {
		t.Fatalf("write %s: %d bytes written, want %d", path, n, len(s))
	}
}

func TestFilesRoundTrip(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)
	ctx := testCtx(t, time.Minute)

	// Every byte value survives, and the command line sees the same file.
	all := make([]byte, 256*64)
	for i := range all {
		all[i] = byte(i)
	}
	sum := sha256.Sum256(all)
	n, err := sb.WriteFile(ctx, "/workspace/bin.dat", 0o600, bytes.NewReader(all))
	if err != nil || n != int64(len(all)) {
		t.Fatalf("write: %d %v", n, err)
	}
	var back bytes.Buffer
	fi, err := sb.ReadFile(ctx, "/workspace/bin.dat", &back)
	if err != nil || !bytes.Equal(back.Bytes(), all) {
		t.Fatalf("read back: %v, %d bytes, equal %v", err, back.Len(), bytes.Equal(back.Bytes(), all))
	}
	if fi.Size != int64(len(all)) || fi.IsDir || fi.Mode != 0o600 || fi.Name != "bin.dat" || fi.Path != "/workspace/bin.dat" {
		t.Fatalf("read info: %+v", fi)
	}
	if out := sh(t, sb, "sha256sum /workspace/bin.dat; stat -c %a /workspace/bin.dat"); out != hex.EncodeToString(sum[:])+"  /workspace/bin.dat\n600\n" {
		t.Fatalf("inside the sandbox: %q", out)
	}

	// A file made by a command reads back the same.
	sh(t, sb, "printf 'from the shell\\n' > /workspace/shell.txt")
	if got := readString(t, sb, "/workspace/shell.txt"); got != "from the shell\n" {
		t.Fatalf("read a file written by a command: %q", got)
	}

	// Overwriting replaces the contents (shorter than before) and the mode;
	// mode 0 means 0644.
	if _, err := sb.WriteFile(ctx, "/workspace/bin.dat", 0, strings.NewReader("short")); err != nil {
		t.Fatal(err)
	}
	if got := readString(t, sb, "/workspace/bin.dat"); got != "short" {
		t.Fatalf("after overwrite: %q", got)
	}
	if out := sh(t, sb, "stat -c %a /workspace/bin.dat"); out != "644\n" {
		t.Fatalf("mode after overwrite: %q", out)
	}
	// An empty file, and an executable one.
	writeString(t, sb, "/workspace/empty", "")
	if fi, err := sb.Stat(ctx, "/workspace/empty"); err != nil || fi.Size != 0 || fi.IsDir {
		t.Fatalf("empty file: %+v %v", fi, err)
	}
	if _, err := sb.WriteFile(ctx, "/workspace/run.sh", 0o755, strings.NewReader("#!/bin/sh\necho executable\n")); err != nil {
		t.Fatal(err)
	}
	if out := sh(t, sb, "/workspace/run.sh"); out != "executable\n" {
		t.Fatalf("uploaded script: %q", out)
	}
	// Parents are created on write, anywhere in the sandbox.
	writeString(t, sb, "/workspace/a/b/c/deep.txt", "deep")
	writeString(t, sb, "/opt/new/dir/file", "opt")
	if out := sh(t, sb, "cat /workspace/a/b/c/deep.txt /opt/new/dir/file; test -d /workspace/a/b/c && echo ok"); out != "deepoptok\n" {
		t.Fatalf("parents on write: %q", out)
	}
	// No temporary files are left beside a written file.
	if out := sh(t, sb, "ls -A /workspace/a/b/c"); out != "deep.txt\n" {
		t.Fatalf("leftovers beside the written file: %q", out)
	}
}

func TestFilesListStatRemoveMkdir(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)
	ctx := testCtx(t, time.Minute)

	if err := sb.MkdirAll(ctx, "/workspace/p/q/r", 0o750); err != nil {
		t.Fatal(err)
	}
	if err := sb.MkdirAll(ctx, "/workspace/p/q/r", 0o750); err != nil {
		t.Fatalf("mkdir -p of an existing dir: %v", err)
	}
	if out := sh(t, sb, "stat -c %a /workspace/p/q/r"); out != "750\n" {
		t.Fatalf("mkdir mode: %q", out)
	}
	writeString(t, sb, "/workspace/p/file.txt", "12345")
	writeString(t, sb, "/workspace/p/q/inner.txt", "x")
	sh(t, sb, "ln -s file.txt /workspace/p/link")

	ents, err := sb.List(ctx, "/workspace/p")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, fmt.Sprintf("%s dir=%v size=%d link=%v path=%s", e.Name, e.IsDir, e.Size, e.Symlink, e.Path))
	}
	want := []string{
		"file.txt dir=false size=5 link=false path=/workspace/p/file.txt",
		"link dir=false size=8 link=true path=/workspace/p/link",
		"q dir=true size=", // size of a directory varies
	}
	if len(got) != len(want) {
		t.Fatalf("list: %q", got)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Fatalf("list entry %d: %q, want prefix %q", i, got[i], want[i])
		}
	}
	if ents, err := sb.List(ctx, "/workspace/p/q/r"); err != nil || len(ents) != 0 {
		t.Fatalf("list an empty dir: %v %v", ents, err)
	}

	fi, err := sb.Stat(ctx, "/workspace/p/file.txt")
	if err != nil || fi.Size != 5 || fi.IsDir || fi.Mode != 0o644 || time.Since(fi.Modified) > time.Minute || time.Until(fi.Modified) > time.Minute {
		t.Fatalf("stat file: %+v %v", fi, err)
	}
	if fi, err := sb.Stat(ctx, "/workspace/p/q"); err != nil || !fi.IsDir || fi.Name != "q" {
		t.Fatalf("stat dir: %+v %v", fi, err)
	}
	if fi, err := sb.Stat(ctx, "/workspace/p/link"); err != nil || !fi.Symlink {
		t.Fatalf("stat does not follow a symlink: %+v %v", fi, err)
	}

	// Remove: a file, an empty dir, a non-empty dir only recursively.
	if err := sb.Remove(ctx, "/workspace/p/file.txt", false); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Stat(ctx, "/workspace/p/file.txt"); !errors.Is(err, runtime.ErrFileNotFound) {
		t.Fatalf("stat removed file: %v", err)
	}
	if err := sb.Remove(ctx, "/workspace/p/q/r", false); err != nil {
		t.Fatalf("remove empty dir: %v", err)
	}
	if err := sb.Remove(ctx, "/workspace/p", false); !errors.Is(err, runtime.ErrNotEmpty) {
		t.Fatalf("non-recursive remove of a full dir: got %v, want ErrNotEmpty", err)
	}
	if err := sb.Remove(ctx, "/workspace/p", true); err != nil {
		t.Fatal(err)
	}
	if out := sh(t, sb, "test -e /workspace/p && echo exists || echo gone"); out != "gone\n" {
		t.Fatalf("after recursive remove: %q", out)
	}
	if err := sb.Remove(ctx, "/workspace/p", true); !errors.Is(err, runtime.ErrFileNotFound) {
		t.Fatalf("remove a missing path: got %v, want ErrFileNotFound", err)
	}
	if err := sb.Remove(ctx, "/", true); !errors.Is(err, runtime.ErrInvalidPath) {
		t.Fatalf("remove /: got %v, want ErrInvalidPath", err)
	}
	if out := sh(t, sb, "test -x /bin/sh && echo ok"); out != "ok\n" {
		t.Fatal("the root file system was damaged")
	}
}

func TestFilesErrors(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)
	ctx := testCtx(t, time.Minute)
	writeString(t, sb, "/workspace/file", "contents")

	// A failed read writes nothing into w.
	var w bytes.Buffer
	if _, err := sb.ReadFile(ctx, "/workspace/missing", &w); !errors.Is(err, runtime.ErrFileNotFound) {
		t.Errorf("read missing: got %v, want ErrFileNotFound", err)
	}
	if _, err := sb.ReadFile(ctx, "/workspace", &w); !errors.Is(err, runtime.ErrIsDir) {
		t.Errorf("read dir: got %v, want ErrIsDir", err)
	}
	if _, err := sb.ReadFile(ctx, "/dev/zero", &w); !errors.Is(err, runtime.ErrInvalidRequest) {
		t.Errorf("read a device: got %v, want ErrInvalidRequest", err)
	}
	if _, err := sb.ReadFile(ctx, "/workspace/file/sub", &w); !errors.Is(err, runtime.ErrNotDir) && !errors.Is(err, runtime.ErrFileNotFound) {
		t.Errorf("read below a file: got %v", err)
	}
	if w.Len() != 0 {
		t.Errorf("failed reads wrote %q", w.String())
	}
	if _, err := sb.List(ctx, "/workspace/file"); !errors.Is(err, runtime.ErrNotDir) {
		t.Errorf("list a file: got %v, want ErrNotDir", err)
	}
	if _, err := sb.List(ctx, "/workspace/missing"); !errors.Is(err, runtime.ErrFileNotFound) {
		t.Errorf("list missing: got %v, want ErrFileNotFound", err)
	}
	if _, err := sb.Stat(ctx, "/workspace/missing"); !errors.Is(err, runtime.ErrFileNotFound) {
		t.Errorf("stat missing: got %v, want ErrFileNotFound", err)
	}
	if _, err := sb.WriteFile(ctx, "/workspace", 0, strings.NewReader("x")); !errors.Is(err, runtime.ErrIsDir) {
		t.Errorf("write over a dir: got %v, want ErrIsDir", err)
	}
	if _, err := sb.WriteFile(ctx, "/workspace/file/sub", 0, strings.NewReader("x")); !errors.Is(err, runtime.ErrNotDir) {
		t.Errorf("write below a file: got %v, want ErrNotDir", err)
	}
	if err := sb.MkdirAll(ctx, "/workspace/file/sub", 0); !errors.Is(err, runtime.ErrNotDir) {
		t.Errorf("mkdir below a file: got %v, want ErrNotDir", err)
	}
	// Writes into a read-only mount fail with a permission error and leave
	// the mount alone.
	if _, err := sb.WriteFile(ctx, "/agent/evil", 0, strings.NewReader("x")); err == nil {
		t.Errorf("write into the read-only agent mount succeeded")
	}
	// The failed operations changed nothing.
	if got := readString(t, sb, "/workspace/file"); got != "contents" {
		t.Errorf("file after failed operations: %q", got)
	}
}

func TestFilesHostilePaths(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)
	ctx := testCtx(t, time.Minute)

	bad := map[string]string{
		"empty":           "",
		"relative":        "workspace/x",
		"dot relative":    "./x",
		"NUL":             "/workspace/a\x00b",
		"dotdot":          "/workspace/../etc/passwd",
		"dotdot at end":   "/workspace/..",
		"only dotdot":     "..",
		"dotdot root":     "/..",
		"4097 bytes":      "/" + strings.Repeat("a/", 2048),
		"2 MiB":           "/" + strings.Repeat("b", 2<<20),
		"long component":  "/workspace/" + strings.Repeat("c", 300),
		"dotdot repeated": "/workspace/x/../../etc/shadow",
	}
	if l := len(bad["4097 bytes"]); l != 4097 {
		t.Fatalf("test path is %d bytes", l)
	}
	for name, p := range bad {
		var w bytes.Buffer
		checks := map[string]error{}
		_, checks["read"] = sb.ReadFile(ctx, p, &w)
		_, checks["write"] = sb.WriteFile(ctx, p, 0, strings.NewReader("pwned"))
		_, checks["list"] = sb.List(ctx, p)
		_, checks["stat"] = sb.Stat(ctx, p)
		checks["remove"] = sb.Remove(ctx, p, true)
		checks["mkdir"] = sb.MkdirAll(ctx, p, 0)
		for op, err := range checks {
			if !errors.Is(err, runtime.ErrInvalidPath) {
				t.Errorf("%s %s: got %v, want ErrInvalidPath", op, name, err)
			}
		}
		if w.Len() != 0 {
			t.Errorf("read %s returned data", name)
		}
	}
	// The agent applies the same rules itself, for a host that did not.
	ch := gvisor.ChannelForTest(sb)
	for name, p := range bad {
		if len(p) > wire.MaxFrame/2 {
			continue // cannot be framed at all
		}
		var w bytes.Buffer
		checks := map[string]error{}
		_, checks["read"] = ch.ReadFile(ctx, p, &w)
		_, checks["write"] = ch.WriteFile(ctx, p, 0, strings.NewReader("pwned"))
		_, checks["list"] = ch.List(ctx, p)
		_, checks["stat"] = ch.Stat(ctx, p)
		checks["remove"] = ch.Remove(ctx, p, true)
		checks["mkdir"] = ch.MkdirAll(ctx, p, 0)
		for op, err := range checks {
			// A component over NAME_MAX passes the rules and is refused
			// by the file system, with the same code.
			if !client.IsAgentError(err, wire.CodeInvalidPath) {
				t.Errorf("agent %s %s: got %v, want %s", op, name, err, wire.CodeInvalidPath)
			}
		}
	}

	// Nothing was written anywhere, and the sandbox still answers.
	out := sh(t, sb, "grep -rl pwned /workspace /etc /tmp 2>/dev/null; ls -A /workspace")
	if out != "" {
		t.Fatalf("hostile writes left traces: %q", out)
	}
	// A long path within the limit is not refused as invalid.
	ok := "/workspace/" + strings.Repeat("d/", 1990) + "e"
	if _, err := sb.Stat(ctx, ok); !errors.Is(err, runtime.ErrFileNotFound) {
		t.Fatalf("a %d-byte path: got %v, want ErrFileNotFound", len(ok), err)
	}
	// An oversized command or env is refused as a bad request, not taken
	// for a broken connection.
	big := strings.Repeat("x", 2<<20)
	if _, err := sb.Exec(ctx, runtime.ExecRequest{Command: "echo " + big}); !errors.Is(err, runtime.ErrInvalidRequest) {
		t.Errorf("2 MiB command: got %v, want ErrInvalidRequest", err)
	}
	if _, err := sb.Exec(ctx, runtime.ExecRequest{Command: "true", Env: map[string]string{"BIG": big}}); !errors.Is(err, runtime.ErrInvalidRequest) {
		t.Errorf("2 MiB env: got %v, want ErrInvalidRequest", err)
	}
	if out := sh(t, sb, "echo alive"); out != "alive\n" {
		t.Fatalf("after hostile requests: %q", out)
	}
}

func TestFilesSymlinksStayInSandbox(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)
	ctx := testCtx(t, time.Minute)

	// Host files the sandbox must never see or change.
	hostDir := t.TempDir()
	hostSecret := filepath.Join(hostDir, "secret")
	if err := os.WriteFile(hostSecret, []byte("host-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	tmplJSON := filepath.Join(filepath.Dir(testenv.Rootfs(t, "debian-12")), "template.json")
	tmplPasswd := filepath.Join(testenv.Rootfs(t, "debian-12"), "etc/passwd")
	hostFiles := []string{hostSecret, "/etc/shadow", "/etc/passwd", tmplJSON, tmplPasswd}
	before := hashFiles(t, hostFiles)

	// The sandbox's own /etc/shadow gets a marker the host's does not have.
	sh(t, sb, "echo 'orkestr-marker:*:1:0:99999:7:::' >> /etc/shadow")
	sh(t, sb, fmt.Sprintf(`set -e
ln -s /etc/shadow /workspace/shadow
ln -s %[1]s /workspace/hostdir
ln -s %[2]s /workspace/hostsecret
ln -s %[3]s /workspace/tmpljson
ln -s %[4]s /workspace/tmpletc
ln -s /var/lib/orkestr /workspace/varlib
ln -s /proc/1/root/etc /workspace/procroot
ln -s / /workspace/root`, hostDir, hostSecret, tmplJSON, filepath.Dir(tmplPasswd)))

	// Reads through links see only the sandbox's files.
	shadow := readString(t, sb, "/workspace/shadow")
	if !strings.Contains(shadow, "orkestr-marker") || shadow != sh(t, sb, "cat /etc/shadow") {
		t.Fatalf("shadow via link is not the sandbox's own: %q", shadow)
	}
	if got := readString(t, sb, "/workspace/procroot/shadow"); got != shadow {
		t.Fatalf("/proc/1/root leads elsewhere: %q", got)
	}
	if got := readString(t, sb, "/workspace/root/etc/shadow"); got != shadow {
		t.Fatalf("link to / leads elsewhere: %q", got)
	}
	for _, p := range []string{"/workspace/hostsecret", "/workspace/hostdir/secret", "/workspace/tmpljson", "/workspace/varlib/templates/debian-12/template.json"} {
		var w bytes.Buffer
		if _, err := sb.ReadFile(ctx, p, &w); !errors.Is(err, runtime.ErrFileNotFound) {
			t.Errorf("read %s: got %v (%q), want ErrFileNotFound", p, err, w.String())
		}
	}
	if _, err := sb.List(ctx, "/workspace/varlib"); !errors.Is(err, runtime.ErrFileNotFound) {
		t.Errorf("list a link to the host's /var/lib/orkestr: %v", err)
	}

	// Writes, mkdirs and removes through links act on the sandbox only.
	// Links to host directories dangle inside: nothing can be made below.
	if _, err := sb.WriteFile(ctx, "/workspace/hostdir/secret", 0, strings.NewReader("pwned")); !errors.Is(err, runtime.ErrNotDir) {
		t.Errorf("write below a dangling link: got %v, want ErrNotDir", err)
	}
	if err := sb.MkdirAll(ctx, "/workspace/varlib/templates/evil", 0); !errors.Is(err, runtime.ErrNotDir) {
		t.Errorf("mkdir below a dangling link: got %v, want ErrNotDir", err)
	}
	// Once the same path exists inside, a link leads to the sandbox's copy.
	sh(t, sb, "mkdir -p "+filepath.Dir(tmplPasswd))
	writeString(t, sb, "/workspace/tmpletc/passwd", "pwned")
	writeString(t, sb, "/workspace/hostsecret", "pwned")
	writeString(t, sb, "/workspace/tmpljson", "pwned")
	writeString(t, sb, "/workspace/shadow", "pwned")
	writeString(t, sb, "/workspace/root/etc/passwd", "pwned")
	if err := sb.Remove(ctx, "/workspace/hostdir", true); err != nil {
		t.Fatal(err)
	}
	if err := sb.Remove(ctx, "/workspace/root/"+strings.TrimPrefix(hostSecret, "/"), false); !errors.Is(err, runtime.ErrFileNotFound) {
		t.Errorf("remove the host's file by its path: got %v, want ErrFileNotFound", err)
	}
	// Writing onto a link replaces the link; writing below a link to a
	// directory follows it inside the sandbox.
	if out := sh(t, sb, "test -L /workspace/hostsecret || echo replaced; cat /workspace/hostsecret; echo; cat /etc/passwd; echo; cat "+tmplPasswd); out != "replaced\npwned\npwned\npwned" {
		t.Fatalf("inside the sandbox after the writes: %q", out)
	}
	if out := sh(t, sb, "cat /etc/shadow"); out != shadow {
		t.Fatalf("writing onto the shadow link changed /etc/shadow: %q", out)
	}

	after := hashFiles(t, hostFiles)
	for _, f := range hostFiles {
		if before[f] != after[f] {
			t.Errorf("host file %s changed", f)
		}
	}
	if _, err := os.Stat("/var/lib/orkestr/templates/evil"); err == nil {
		t.Errorf("mkdir through a link created a host directory")
	}
	if b, err := os.ReadFile("/etc/shadow"); err == nil && bytes.Contains(b, []byte("orkestr-marker")) {
		t.Errorf("the host's /etc/shadow has the sandbox's marker")
	}
	if ents, _ := os.ReadDir(hostDir); len(ents) != 1 {
		t.Errorf("host dir now holds %d entries", len(ents))
	}
}

func hashFiles(t *testing.T, paths []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		out[p] = fmt.Sprintf("%x %v %v", s, fi.Mode(), fi.ModTime().UnixNano())
	}
	return out
}

// TestFilesLarge streams 200 MB each way; the host never holds the file.
func TestFilesLarge(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)
	ctx := testCtx(t, 2*time.Minute)
	const size = 200 << 20

	mon := startHeapMonitor()
	up := sha256.New()
	src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{42}), size), up)
	start := time.Now()
	n, err := sb.WriteFile(ctx, "/workspace/big.bin", 0o644, src)
	if err != nil || n != size {
		t.Fatalf("upload: %d %v", n, err)
	}
	upTime := time.Since(start)
	upSum := hex.EncodeToString(up.Sum(nil))

	out := sh(t, sb, "sha256sum /workspace/big.bin; stat -c %s /workspace/big.bin")
	if out != upSum+"  /workspace/big.bin\n"+fmt.Sprint(size)+"\n" {
		t.Fatalf("inside the sandbox: %q, want %s", out, upSum)
	}

	down := &countingHash{h: sha256.New()}
	start = time.Now()
	fi, err := sb.ReadFile(ctx, "/workspace/big.bin", down)
	if err != nil || fi.Size != size || down.n != size {
		t.Fatalf("download: %+v %d %v", fi, down.n, err)
	}
	downTime := time.Since(start)
	if got := hex.EncodeToString(down.h.Sum(nil)); got != upSum {
		t.Fatalf("download hash %s, want %s", got, upSum)
	}
	peak, base := mon.stop()
	t.Logf("upload %v (%.0f MB/s), download %v (%.0f MB/s), heap in use: base %d MiB, peak %d MiB",
		upTime, size/upTime.Seconds()/1e6, downTime, size/downTime.Seconds()/1e6, base>>20, peak>>20)
	// A transfer holds one 1 MiB buffer on the host (its bytes go over a
	// data connection): the bound is 8 MiB per transfer.
	if peak > base+8<<20 {
		t.Fatalf("host heap grew by %d MiB while streaming %d MiB", (peak-base)>>20, size>>20)
	}

	// A download cut short by its context ends promptly, with the
	// context's error.
	cctx, cancel := context.WithCancel(ctx)
	var got atomic.Int64
	w := writerFunc(func(p []byte) (int, error) {
		if got.Add(int64(len(p))) > 1<<20 {
			cancel()
		}
		return len(p), nil
	})
	start = time.Now()
	_, err = sb.ReadFile(cctx, "/workspace/big.bin", w)
	if !errors.Is(err, context.Canceled) || got.Load() >= size || time.Since(start) > 5*time.Second {
		t.Fatalf("cancelled download: %v after %d bytes and %v", err, got.Load(), time.Since(start))
	}
	// So does an upload; the old contents stay.
	cctx, cancel = context.WithCancel(ctx)
	var sent atomic.Int64
	r := readerFunc(func(p []byte) (int, error) {
		if sent.Add(int64(len(p))) > 4<<20 {
			cancel()
		}
		for i := range p {
			p[i] = 'z'
		}
		return len(p), nil
	})
	start = time.Now()
	if _, err := sb.WriteFile(cctx, "/workspace/big.bin", 0, r); !errors.Is(err, context.Canceled) || time.Since(start) > 5*time.Second {
		t.Fatalf("cancelled upload: %v after %v", err, time.Since(start))
	}
	if out := sh(t, sb, "sha256sum /workspace/big.bin; ls -A /workspace"); out != upSum+"  /workspace/big.bin\nbig.bin\n" {
		t.Fatalf("after a cancelled upload: %q", out)
	}
}

type countingHash struct {
	h hash.Hash
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) { c.n += int64(len(p)); return c.h.Write(p) }

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// heapMonitor samples the heap in use until stopped.
type heapMonitor struct {
	base uint64
	peak atomic.Uint64
	quit chan struct{}
	wg   sync.WaitGroup
}

func startHeapMonitor() *heapMonitor {
	goruntime.GC()
	var ms goruntime.MemStats
	goruntime.ReadMemStats(&ms)
	m := &heapMonitor{base: ms.HeapInuse, quit: make(chan struct{})}
	m.peak.Store(ms.HeapInuse)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		tick := time.NewTicker(25 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-m.quit:
				return
			case <-tick.C:
			}
			var ms goruntime.MemStats
			goruntime.ReadMemStats(&ms)
			if ms.HeapInuse > m.peak.Load() {
				m.peak.Store(ms.HeapInuse)
			}
		}
	}()
	return m
}

func (m *heapMonitor) stop() (peak, base uint64) {
	close(m.quit)
	m.wg.Wait()
	return m.peak.Load(), m.base
}
