package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

// TestGoSDKProcesses drives background processes through the Go SDK.
func TestGoSDKProcesses(t *testing.T) {
	s := startAPI(t, serverOpts{})
	c := sdkClient(t, s, s.key)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sb, err := c.CreateSandbox(ctx, orkestr.CreateParams{Template: "debian-12"})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Terminate(context.Background())

	// stdin through an io.Reader, output through io.Writers.
	cat, err := sb.StartProcess(ctx, "cat", orkestr.ProcessOptions{})
	if err != nil || cat.PID <= 0 || !cat.Running {
		t.Fatalf("start: %+v %v", cat, err)
	}
	if err := cat.SendStdin(ctx, strings.NewReader("one\ntwo\n")); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := cat.Attach(ctx, orkestr.AttachOptions{Replay: true, Stdout: &out}); err != nil {
		t.Fatal(err)
	}
	if out.String() != "one\ntwo\n" || cat.Running || cat.ExitCode == nil || *cat.ExitCode != 0 {
		t.Fatalf("cat: %q %+v", out.String(), cat)
	}

	// A reader of the output, a signal, and Wait.
	loop, err := sb.StartProcess(ctx, "for i in 1 2 3; do echo tick $i; done; sleep 600", orkestr.ProcessOptions{Cwd: "/tmp"})
	if err != nil {
		t.Fatal(err)
	}
	r := loop.Output(ctx, false)
	buf := make([]byte, len("tick 1\ntick 2\ntick 3\n"))
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "tick 1\ntick 2\ntick 3\n" {
		t.Fatalf("output reader: %q %v", buf, err)
	}
	r.Close()
	list, err := sb.Processes(ctx)
	if err != nil || len(list) != 2 || list[1].PID != loop.PID || !list[1].Running || list[1].Cwd != "/tmp" {
		t.Fatalf("list: %+v %v", list, err)
	}
	if err := loop.SendSignal(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := loop.Wait(ctx); err != nil || loop.Running || loop.Signal == nil || *loop.Signal != 9 || *loop.ExitCode != 137 {
		t.Fatalf("wait: %+v %v", loop, err)
	}
	if _, err := sb.GetProcess(ctx, 1); !orkestr.IsProcessNotFound(err) {
		t.Fatalf("pid 1: %v", err)
	}
	got, err := sb.GetProcess(ctx, loop.PID)
	if err != nil || got.Running || got.EndedAt == nil {
		t.Fatalf("get: %+v %v", got, err)
	}
	// A Wait bounded by its context comes back with the context's error.
	sleeper, err := sb.StartProcess(ctx, "sleep 600", orkestr.ProcessOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer wcancel()
	if err := sleeper.Wait(wctx); !errors.Is(err, context.DeadlineExceeded) || !sleeper.Running {
		t.Fatalf("bounded wait: %v %+v", err, sleeper)
	}
}

// TestUsers: exec and processes run as root by default and as the
// unprivileged user on request, through the API, the Go SDK and the CLI.
func TestUsers(t *testing.T) {
	if os.Getenv("ORKESTR_TEMPLATE_DIR") == "" {
		t.Log("templates from the default directory")
	}
	s := startAPI(t, serverOpts{})
	c := sdkClient(t, s, s.key)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sb, err := c.CreateSandbox(ctx, orkestr.CreateParams{Template: "debian-12"})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Terminate(context.Background())
	const probe = `echo "$(id -u):$(id -g):$(id -G):$HOME:$USER:$(pwd)"; touch /workspace/w-$(id -u) && ls -ln /workspace/w-$(id -u) | awk '{print $3}'; cat /etc/shadow >/dev/null 2>&1 || echo no-shadow`
	res, err := sb.Exec(ctx, probe, orkestr.ExecOptions{})
	if err != nil || res.Stdout != "0:0:0:/root::/workspace\n0\n" {
		t.Fatalf("default user: %+v %v", res, err)
	}
	res, err = sb.Exec(ctx, probe, orkestr.ExecOptions{User: orkestr.UserUser})
	if err != nil || res.Stdout != "1000:1000:1000:/home/user:user:/workspace\n1000\nno-shadow\n" {
		t.Fatalf("user: %+v %v", res, err)
	}
	p, err := sb.StartProcess(ctx, "id -u; echo $HOME", orkestr.ProcessOptions{User: orkestr.UserUser})
	if err != nil || p.User != "user" {
		t.Fatalf("process as user: %+v %v", p, err)
	}
	var out bytes.Buffer
	if err := p.Attach(ctx, orkestr.AttachOptions{Replay: true, Stdout: &out}); err != nil || out.String() != "1000\n/home/user\n" {
		t.Fatalf("process as user printed %q (%v)", out.String(), err)
	}
	// Root's files stay root's: user cannot write into /root.
	res, err = sb.Exec(ctx, "touch /root/x", orkestr.ExecOptions{User: orkestr.UserUser})
	if err != nil || res.ExitCode == 0 {
		t.Fatalf("user wrote into /root: %+v %v", res, err)
	}
	if _, err := sb.Exec(ctx, "true", orkestr.ExecOptions{User: orkestr.UserUser, Cwd: "/root"}); err == nil || !strings.Contains(err.Error(), "cwd") {
		t.Errorf("user in /root: %v", err)
	}
	for _, bad := range []string{"admin", "Root", "1000", "user\x00"} {
		_, err := sb.Exec(ctx, "true", orkestr.ExecOptions{User: bad})
		var e *orkestr.Error
		if !errors.As(err, &e) || e.Status != 400 || e.Details["field"] != "user" {
			t.Errorf("user %q: %v", bad, err)
		}
	}
}

// TestGoSDKFiles: stat, exists, mkdir, rename and a watch through the Go
// SDK.
func TestGoSDKFiles(t *testing.T) {
	s := startAPI(t, serverOpts{})
	c := sdkClient(t, s, s.key)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sb, err := c.CreateSandbox(ctx, orkestr.CreateParams{Template: "debian-12"})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Terminate(context.Background())
	files := sb.Files()
	st, err := files.MakeDir(ctx, "/workspace/proj/src", orkestr.MkdirOptions{User: orkestr.UserUser})
	if err != nil || st.Type != "dir" || st.UID != 1000 || st.Owner == nil || *st.Owner != "user" {
		t.Fatalf("mkdir: %+v %v", st, err)
	}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	w, err := files.OpenWatch(wctx, "/workspace/proj", true)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	events := make(chan orkestr.WatchEvent, 64)
	go func() {
		defer close(events)
		for ev, err := range w.Events() {
			if err != nil {
				return
			}
			events <- ev
		}
	}()
	// The watch holds: the first change is seen.
	if err := files.Write(ctx, "/workspace/proj/src/main.py", "print(1)\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case first := <-events:
		if !strings.HasPrefix(first.Path, "src/") {
			t.Fatalf("first event: %+v", first)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the watch saw nothing")
	}
	if _, err := files.Rename(ctx, "/workspace/proj/src/main.py", "/workspace/proj/app.py", orkestr.RenameOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(30 * time.Second)
	for found := false; !found; {
		select {
		case ev := <-events:
			found = ev.Type == "rename" && ev.From == "src/main.py" && ev.Path == "app.py"
		case <-deadline:
			t.Fatal("no rename event")
		}
	}
	stop()
	if ok, err := files.Exists(ctx, "/workspace/proj/app.py", orkestr.FileOptions{}); err != nil || !ok {
		t.Fatalf("exists: %v %v", ok, err)
	}
	if ok, err := files.Exists(ctx, "/workspace/proj/src/main.py", orkestr.FileOptions{}); err != nil || ok {
		t.Fatalf("exists after the move: %v %v", ok, err)
	}
	st, err = files.Stat(ctx, "/workspace/proj/app.py", orkestr.FileOptions{User: orkestr.UserUser})
	if err != nil || st.Size != 9 || st.Type != "file" || st.ModifiedAt == nil {
		t.Fatalf("stat: %+v %v", st, err)
	}
	var e *orkestr.Error
	if _, err := files.Rename(ctx, "/workspace/proj/app.py", "/etc/app.py", orkestr.RenameOptions{User: orkestr.UserUser}); !errors.As(err, &e) || e.Code != "permission_denied" {
		t.Fatalf("rename into /etc as user: %v", err)
	}
}
