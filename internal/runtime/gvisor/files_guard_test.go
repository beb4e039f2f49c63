package gvisor_test

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// intact fails the test unless the sandbox still runs commands and still
// has its system directories, its workspace and its agent channel.
func intact(t *testing.T, sb runtime.Sandbox, after string) {
	t.Helper()
	out := run(t, sb, runtime.ExecRequest{Command: "ls -d /bin /etc /usr /workspace /run/agent/token /proc/1 && echo alive"})
	if out.ExitCode != 0 || !strings.HasSuffix(out.Stdout, "alive\n") {
		t.Fatalf("after %s the sandbox is damaged: exit %d, %q %q", after, out.ExitCode, out.Stdout, out.Stderr)
	}
}

// TestFilesNeverEscapeThePath is issue 16's regression: a recursive delete
// of /proc followed /proc/<pid>/root into / and emptied the sandbox. Every
// spelling of that must answer at once with the error of its own and leave
// the sandbox whole.
func TestFilesNeverEscapeThePath(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)

	// A process whose working directory is / (its /proc/<pid>/cwd is a
	// way to /), a link to / in the workspace and a tree that holds both
	// kinds of link.
	sh(t, sb, "cd / && (setsid sleep 100000 >/dev/null 2>&1 &) ; ln -s / /workspace/rootlink; "+
		"mkdir -p /workspace/tree/a/b && echo x > /workspace/tree/a/b/f && ln -s / /workspace/tree/a/root && ln -s /proc/1/root /workspace/tree/proc1root && ln -s /proc /workspace/tree/proc")
	pid := strings.TrimSpace(sh(t, sb, "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = sleep ] && echo ${p#/proc/} && break; done"))
	if _, err := strconv.Atoi(pid); err != nil {
		t.Fatalf("no sleeper pid: %q", pid)
	}

	deletes := []struct {
		path string
		want error
	}{
		{"/proc", runtime.ErrFileBusy},            // a mount point
		{"/proc/1", runtime.ErrPermission},        // the agent's own process
		{"/proc/1/root", runtime.ErrPermission},   // ... and its way to /
		{"/proc/self/cwd", runtime.ErrPermission}, // self is the agent
		{"/proc/self", runtime.ErrPermission},     // the link itself is on proc
		{"/proc/" + pid, runtime.ErrReadOnly},     // another process: kernel filesystem
		{"/proc/" + pid + "/cwd", runtime.ErrReadOnly},
		{"/proc/" + pid + "/root", runtime.ErrReadOnly},
		{"/proc/" + pid + "/cwd/proc", runtime.ErrFileBusy},  // through the link: /proc
		{"/proc/" + pid + "/cwd/run", runtime.ErrPermission}, // holds /run/agent
		{"/workspace/rootlink/proc", runtime.ErrFileBusy},
		{"/workspace/rootlink/run/agent", runtime.ErrPermission},
		{"/workspace/rootlink/agent", runtime.ErrPermission},
		{"/run/agent/token", runtime.ErrPermission},
		{"/tmp", runtime.ErrFileBusy},
		{"/dev/shm", runtime.ErrFileBusy},
		{"/dev", runtime.ErrFileBusy},
		{"/sys", runtime.ErrFileBusy},
		{"/sys/kernel", runtime.ErrReadOnly},
		{"/sys/fs/cgroup", runtime.ErrFileBusy},
	}
	for _, d := range deletes {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		start := time.Now()
		err := sb.Remove(ctx, d.path, true)
		took := time.Since(start)
		cancel()
		if !errors.Is(err, d.want) {
			t.Errorf("DELETE %s: got %v, want %v", d.path, err, d.want)
		}
		t.Logf("DELETE %s: %v (%s)", d.path, err, took.Round(time.Millisecond))
		intact(t, sb, "DELETE "+d.path)
	}

	// Deleting a link deletes the link, never what it points to.
	ctx := testCtx(t, time.Minute)
	if err := sb.Remove(ctx, "/workspace/rootlink", true); err != nil {
		t.Fatalf("delete the link to /: %v", err)
	}
	// A tree with links to / and to /proc inside goes, links and all,
	// and nothing they point at.
	if err := sb.Remove(ctx, "/workspace/tree", true); err != nil {
		t.Fatalf("delete a tree with links out: %v", err)
	}
	if out := sh(t, sb, "ls -A /workspace; kill -0 "+pid+" && echo sleeper-alive"); out != "sleeper-alive\n" {
		t.Fatalf("after deleting the links: %q", out)
	}
	intact(t, sb, "deleting links")

	// Reads, lists and writes of the agent's own files and kernel
	// filesystems are refused with their own errors.
	var w bytes.Buffer
	for _, c := range []struct {
		path string
		want error
	}{
		{"/run/agent/token", runtime.ErrPermission},
		{"/proc/self/environ", runtime.ErrPermission},
		{"/proc/1/mem", runtime.ErrPermission},
		{"/proc/1/root/run/agent/token", runtime.ErrPermission},
		{"/agent/orkestr-agent", runtime.ErrPermission},
		{"/proc/" + pid + "/mem", runtime.ErrIO},
	} {
		if _, err := sb.ReadFile(ctx, c.path, &w); !errors.Is(err, c.want) {
			t.Errorf("GET %s: got %v, want %v", c.path, err, c.want)
		}
	}
	if w.Len() != 0 {
		t.Errorf("refused reads returned %d bytes", w.Len())
	}
	for _, p := range []string{"/run/agent", "/proc/1", "/proc/self/fd", "/agent"} {
		if _, err := sb.List(ctx, p); !errors.Is(err, runtime.ErrPermission) {
			t.Errorf("list %s: got %v, want ErrPermission", p, err)
		}
	}
	if ents, err := sb.List(ctx, "/proc"); err != nil || len(ents) < 5 {
		t.Errorf("list /proc: %d entries, %v", len(ents), err)
	}
	for _, c := range []struct {
		path string
		want error
	}{
		{"/run/agent/token", runtime.ErrPermission},
		{"/run/agent/new", runtime.ErrPermission},
		{"/proc/1/root/run/agent/token", runtime.ErrPermission},
		{"/sys/kernel/evil", runtime.ErrReadOnly},
		{"/proc/" + pid + "/evil", runtime.ErrReadOnly},
		{"/proc/sys/kernel/hostname", runtime.ErrReadOnly},
	} {
		if _, err := sb.WriteFile(ctx, c.path, 0, strings.NewReader("pwned")); !errors.Is(err, c.want) {
			t.Errorf("PUT %s: got %v, want %v", c.path, err, c.want)
		}
		if err := sb.MkdirAll(ctx, c.path, 0); !errors.Is(err, c.want) {
			t.Errorf("mkdir %s: got %v, want %v", c.path, err, c.want)
		}
	}
	// Devices are not replaced by regular files.
	for _, p := range []string{"/dev/null", "/dev/zero", "/dev/urandom"} {
		if _, err := sb.WriteFile(ctx, p, 0, strings.NewReader("pwned")); !errors.Is(err, runtime.ErrInvalidRequest) {
			t.Errorf("PUT %s: got %v, want ErrInvalidRequest", p, err)
		}
	}
	if out := sh(t, sb, "test -c /dev/null && echo x > /dev/null && echo ok"); out != "ok\n" {
		t.Errorf("/dev/null after the refused writes: %q", out)
	}
	intact(t, sb, "refused reads and writes")
	// Files on ordinary mounts still work.
	writeString(t, sb, "/tmp/ok", "fine")
	writeString(t, sb, "/dev/shm/ok", "fine")
	if err := sb.Remove(ctx, "/dev/shm/ok", true); err != nil {
		t.Errorf("delete a file on /dev/shm: %v", err)
	}
	if got := readString(t, sb, "/tmp/ok"); got != "fine" {
		t.Errorf("/tmp/ok: %q", got)
	}
}

// TestFilesRemoveStopsWhenCancelled: a caller that gives up on a large
// delete stops it; the agent does not go on deleting.
func TestFilesRemoveStopsWhenCancelled(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)
	sh(t, sb, "mkdir -p /workspace/big && cd /workspace/big && for d in $(seq 1 40); do mkdir $d && (cd $d && seq 1 1000 | xargs touch); done")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err := sb.Remove(ctx, "/workspace/big", true)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Skipf("the delete finished before it could be cancelled (%v)", err)
	}
	count := func() string { return sh(t, sb, "find /workspace/big -type f | wc -l") }
	n1 := count()
	time.Sleep(2 * time.Second)
	n2 := count()
	if n1 != n2 || strings.TrimSpace(n1) == "0" {
		t.Fatalf("files left after the cancel: %s, two seconds later: %s (the agent kept deleting)", strings.TrimSpace(n1), strings.TrimSpace(n2))
	}
	// The rest can still be deleted.
	if err := sb.Remove(testCtx(t, 5*time.Minute), "/workspace/big", true); err != nil {
		t.Fatal(err)
	}
	intact(t, sb, "a cancelled delete")
}

// TestFilesListLargeDirectory: a directory whose listing is larger than
// one wire frame is listed whole.
func TestFilesListLargeDirectory(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)
	sh(t, sb, "mkdir -p /workspace/many && cd /workspace/many && seq -f 'file-with-a-fairly-long-name-%06g' 1 12000 | xargs touch")
	ents, err := sb.List(testCtx(t, time.Minute), "/workspace/many")
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 12000 || ents[0].Name != "file-with-a-fairly-long-name-000001" || ents[11999].Name != "file-with-a-fairly-long-name-012000" {
		t.Fatalf("listed %d entries", len(ents))
	}
}
