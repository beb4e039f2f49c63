package runtimetest

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

func (s *suite) processes(t *testing.T) {
	s.need(t, s.h.Caps.Processes, "Processes")
	_, sb := s.sandbox(t)
	ps, ok := sb.(runtime.Processes)
	if !ok {
		t.Fatal("the sandbox does not implement runtime.Processes")
	}
	ctx := s.ctx(t)

	t.Run("InputOutputExit", func(t *testing.T) {
		p, err := ps.StartProcess(ctx, runtime.ProcessRequest{Command: `echo "hello $WHO"; pwd; cat; echo err >&2; exit 7`, Env: map[string]string{"WHO": "proc"}, Cwd: "/tmp"})
		if err != nil {
			t.Fatal(err)
		}
		if p.PID <= 0 || !p.Running || p.Command == "" || time.Since(p.StartedAt) > time.Hour {
			t.Fatalf("started: %+v", p)
		}
		list, err := ps.ListProcesses(ctx)
		if err != nil || !slices.ContainsFunc(list, func(q runtime.ProcessInfo) bool { return q.PID == p.PID && q.Running }) {
			t.Fatalf("list: %+v %v", list, err)
		}
		if err := ps.ProcessInput(ctx, p.PID, []byte("typed\n"), true); err != nil {
			t.Fatal(err)
		}
		out, errOut := newStreamWriter(), newStreamWriter()
		end, err := ps.AttachProcess(ctx, p.PID, true, runtime.ProcessOutput{Stdout: out, Stderr: errOut})
		if err != nil {
			t.Fatal(err)
		}
		if end.Running || end.ExitCode == nil || *end.ExitCode != 7 || end.EndedAt == nil {
			t.Fatalf("ended: %+v", end)
		}
		if out.String() != "hello proc\n/tmp\ntyped\n" || errOut.String() != "err\n" {
			t.Fatalf("stdout %q stderr %q", out.String(), errOut.String())
		}
		// An ended process is still listed, as ended.
		list, _ = ps.ListProcesses(ctx)
		if i := slices.IndexFunc(list, func(q runtime.ProcessInfo) bool { return q.PID == p.PID }); i < 0 || list[i].Running {
			t.Errorf("list after the end: %+v", list)
		}
	})

	t.Run("Signal", func(t *testing.T) {
		p, err := ps.StartProcess(ctx, runtime.ProcessRequest{Command: "echo up; sleep 1000"})
		if err != nil {
			t.Fatal(err)
		}
		s.waitOutput(t, ps, p.PID, "up\n")
		if err := ps.SignalProcess(ctx, p.PID, int(syscall.SIGKILL)); err != nil {
			t.Fatal(err)
		}
		end, err := ps.AttachProcess(ctx, p.PID, false, runtime.ProcessOutput{})
		if err != nil {
			t.Fatal(err)
		}
		if end.Running || end.Signal != int(syscall.SIGKILL) || end.ExitCode == nil || *end.ExitCode != 128+int(syscall.SIGKILL) {
			t.Fatalf("killed: %+v", end)
		}
	})

	t.Run("AttachEndsWithContextProcessLives", func(t *testing.T) {
		p, err := ps.StartProcess(ctx, runtime.ProcessRequest{Command: "cat"})
		if err != nil {
			t.Fatal(err)
		}
		actx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err = ps.AttachProcess(actx, p.PID, false, runtime.ProcessOutput{})
		wantErr(t, "attach past its context", err, context.DeadlineExceeded)
		list, _ := ps.ListProcesses(ctx)
		if i := slices.IndexFunc(list, func(q runtime.ProcessInfo) bool { return q.PID == p.PID }); i < 0 || !list[i].Running {
			t.Fatalf("the process ended with its attach: %+v", list)
		}
		if err := ps.ProcessInput(ctx, p.PID, nil, true); err != nil {
			t.Fatal(err)
		}
		if end, err := ps.AttachProcess(ctx, p.PID, false, runtime.ProcessOutput{}); err != nil || end.Running {
			t.Fatalf("after closing stdin: %+v %v", end, err)
		}
	})

	t.Run("UnknownPID", func(t *testing.T) {
		const pid = 999999
		wantErr(t, "input to an unknown pid", ps.ProcessInput(ctx, pid, []byte("x"), false), runtime.ErrNoProcess)
		wantErr(t, "signal to an unknown pid", ps.SignalProcess(ctx, pid, int(syscall.SIGTERM)), runtime.ErrNoProcess)
		_, err := ps.AttachProcess(ctx, pid, false, runtime.ProcessOutput{})
		wantErr(t, "attach to an unknown pid", err, runtime.ErrNoProcess)
	})

	t.Run("DestroyDetaches", func(t *testing.T) {
		_, sb := s.sandbox(t)
		ps := sb.(runtime.Processes)
		p, err := ps.StartProcess(ctx, runtime.ProcessRequest{Command: "sleep 1000"})
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() {
			_, err := ps.AttachProcess(ctx, p.PID, false, runtime.ProcessOutput{})
			errc <- err
		}()
		time.Sleep(100 * time.Millisecond) // let the attach begin; either order must end it
		if err := sb.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errc:
			if !errors.Is(err, runtime.ErrDetached) && !errors.Is(err, runtime.ErrStopped) {
				t.Errorf("attach across a destroy: %v, want ErrDetached or ErrStopped", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("an attach outlived its sandbox")
		}
	})
}

func (s *suite) fileOps(t *testing.T) {
	s.need(t, s.h.Caps.FileOps, "FileOps")
	_, sb := s.sandbox(t)
	f, ok := sb.(runtime.FileOps)
	if !ok {
		t.Fatal("the sandbox does not implement runtime.FileOps")
	}
	ctx := s.ctx(t)
	s.write(t, sb, "/workspace/ops/f", "12345")
	s.sh(t, sb, "ln -s f /workspace/ops/link")

	if st, err := f.Exists(ctx, runtime.FSRequest{Path: "/workspace/ops/missing"}); err != nil || st.Exists {
		t.Errorf("exists of a missing path: %+v %v", st, err)
	}
	if st, err := f.Exists(ctx, runtime.FSRequest{Path: "/workspace/ops/f"}); err != nil || !st.Exists || st.Type != "file" || st.Size != 5 {
		t.Errorf("exists of a file: %+v %v", st, err)
	}
	_, err := f.StatPath(ctx, runtime.FSRequest{Path: "/workspace/ops/missing"})
	wantErr(t, "stat missing", err, runtime.ErrFileNotFound)
	if st, err := f.StatPath(ctx, runtime.FSRequest{Path: "/workspace/ops"}); err != nil || st.Type != "dir" || st.Name != "ops" || st.Path != "/workspace/ops" {
		t.Errorf("stat a dir: %+v %v", st, err)
	}
	if st, err := f.StatPath(ctx, runtime.FSRequest{Path: "/workspace/ops/link"}); err != nil || st.Type != "symlink" || st.Target != "f" {
		t.Errorf("stat a link: %+v %v", st, err)
	}
	_, err = f.StatPath(ctx, runtime.FSRequest{Path: "workspace/ops"})
	wantErr(t, "stat a relative path", err, runtime.ErrInvalidPath)

	_, err = f.Mkdir(ctx, runtime.FSRequest{Path: "/workspace/ops/a/b"})
	wantErr(t, "mkdir without parents", err, runtime.ErrFileNotFound)
	if st, err := f.Mkdir(ctx, runtime.FSRequest{Path: "/workspace/ops/a/b", Parents: true, Mode: 0o700}); err != nil || st.Type != "dir" || st.Mode&0o777 != 0o700 {
		t.Errorf("mkdir with parents: %+v %v", st, err)
	}
	_, err = f.Mkdir(ctx, runtime.FSRequest{Path: "/workspace/ops/a/b"})
	wantErr(t, "mkdir of an existing dir", err, runtime.ErrExists)

	s.write(t, sb, "/workspace/ops/g", "other")
	_, err = f.Rename(ctx, runtime.FSRequest{Path: "/workspace/ops/f", Dest: "/workspace/ops/g"})
	wantErr(t, "rename onto an existing file", err, runtime.ErrExists)
	if st, err := f.Rename(ctx, runtime.FSRequest{Path: "/workspace/ops/f", Dest: "/workspace/ops/g", Overwrite: true}); err != nil || st.Name != "g" || st.Size != 5 {
		t.Errorf("rename with overwrite: %+v %v", st, err)
	}
	if got := s.read(t, sb, "/workspace/ops/g"); got != "12345" {
		t.Errorf("renamed file: %q", got)
	}
	_, err = f.Rename(ctx, runtime.FSRequest{Path: "/workspace/ops/a", Dest: "/workspace/../etc"})
	wantErr(t, "rename to a path with ..", err, runtime.ErrInvalidPath)

	t.Run("Watch", func(t *testing.T) {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		events := make(chan runtime.WatchEvent, 100)
		started := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- f.Watch(wctx, runtime.FSRequest{Path: "/workspace/ops", Recursive: true}, func(int) { close(started) },
				func(ev runtime.WatchEvent) error { events <- ev; return nil })
		}()
		select {
		case <-started:
		case err := <-done:
			t.Fatal(err)
		case <-time.After(30 * time.Second):
			t.Fatal("the watch did not start")
		}
		waitEvent := func(what string, match func(runtime.WatchEvent) bool) {
			t.Helper()
			var seen []runtime.WatchEvent
			deadline := time.After(30 * time.Second)
			for {
				select {
				case ev := <-events:
					if match(ev) {
						return
					}
					seen = append(seen, ev)
				case <-deadline:
					t.Fatalf("no %s event; saw %+v", what, seen)
				}
			}
		}
		if _, err := f.Mkdir(ctx, runtime.FSRequest{Path: "/workspace/ops/sub"}); err != nil {
			t.Fatal(err)
		}
		waitEvent("mkdir", func(ev runtime.WatchEvent) bool { return ev.Type == "create" && ev.Path == "sub" && ev.IsDir })
		s.write(t, sb, "/workspace/ops/sub/new.txt", "x")
		waitEvent("write", func(ev runtime.WatchEvent) bool { return ev.Path == "sub/new.txt" })
		if err := sb.Remove(ctx, "/workspace/ops/g", false); err != nil {
			t.Fatal(err)
		}
		waitEvent("remove", func(ev runtime.WatchEvent) bool { return ev.Type == "remove" && ev.Path == "g" })
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("the watch did not end with its context")
		}
		err := f.Watch(ctx, runtime.FSRequest{Path: "/workspace/ops/missing"}, nil, func(runtime.WatchEvent) error { return nil })
		wantErr(t, "watch a missing dir", err, runtime.ErrFileNotFound)
	})
}

func (s *suite) archiver(t *testing.T) {
	s.need(t, s.h.Caps.Archiver, "Archiver")
	_, sb := s.sandbox(t)
	a, ok := sb.(runtime.Archiver)
	if !ok {
		t.Fatal("the sandbox does not implement runtime.Archiver")
	}
	ctx := s.ctx(t)
	s.write(t, sb, "/workspace/tree/a.txt", "alpha")
	s.write(t, sb, "/workspace/tree/sub/b.bin", strings.Repeat("\x00\xff", 5000))
	for _, comp := range []string{"", "gzip", "zstd"} {
		var buf bytes.Buffer
		if err := a.Tar(ctx, "/workspace/tree", comp, &buf); err != nil {
			t.Fatalf("tar %q: %v", comp, err)
		}
		dest := "/workspace/copy-" + comp
		x, err := a.Untar(ctx, dest, 1<<20, bytes.NewReader(buf.Bytes()))
		if err != nil || x.Bytes != 5+10000 {
			t.Fatalf("untar %q: %+v %v", comp, x, err)
		}
		if got := s.read(t, sb, dest+"/sub/b.bin"); got != strings.Repeat("\x00\xff", 5000) {
			t.Fatalf("untarred %q file differs", comp)
		}
	}
	var buf bytes.Buffer
	err := a.Tar(ctx, "/workspace/missing", "", &buf)
	wantErr(t, "tar a missing dir", err, runtime.ErrFileNotFound)
	if buf.Len() != 0 {
		t.Errorf("a failed tar wrote %d bytes", buf.Len())
	}
	_, err = a.Untar(ctx, "/workspace/bad", 1<<20, strings.NewReader("this is not a tar archive at all, not even close"))
	wantErr(t, "untar garbage", err, runtime.ErrInvalidArchive)
	// The limit bounds what is written.
	var big bytes.Buffer
	if err := a.Tar(ctx, "/workspace/tree", "", &big); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Untar(ctx, "/workspace/limited", 100, bytes.NewReader(big.Bytes())); err == nil {
		t.Error("an untar over its limit succeeded")
	}
	// An archive far larger than the limit (and than any stream window) is
	// refused as well, not left hanging.
	var huge bytes.Buffer
	tw := tar.NewWriter(&huge)
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<20)
	if err := tw.WriteHeader(&tar.Header{Name: "huge.bin", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	_, _ = tw.Write(body)
	_ = tw.Close()
	if _, err := a.Untar(ctx, "/workspace/limited-huge", 1<<20, &huge); err == nil {
		t.Error("a 16 MiB untar under a 1 MiB limit succeeded")
	}
	// Hostile archives are refused and create nothing outside their target.
	for name, entries := range map[string][]tar.Header{
		"dotdot":        {{Name: "../escape.txt", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5}},
		"absolute":      {{Name: "/abs-escape.txt", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5}},
		"through link":  {{Name: "ln", Typeflag: tar.TypeSymlink, Linkname: "/etc"}, {Name: "ln/link-escape.txt", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5}},
		"device":        {{Name: "null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}},
		"fifo":          {{Name: "fifo", Typeflag: tar.TypeFifo, Mode: 0o644}},
		"dotdot inside": {{Name: "a/../../escape.txt", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5}},
	} {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range entries {
			if err := tw.WriteHeader(&h); err != nil {
				t.Fatal(err)
			}
			if h.Size > 0 {
				_, _ = tw.Write([]byte("pwned"))
			}
		}
		_ = tw.Close()
		_, err := a.Untar(ctx, "/workspace/hostile/"+strings.ReplaceAll(name, " ", "-"), 1<<20, &b)
		wantErr(t, "untar "+name, err, runtime.ErrInvalidArchive)
	}
	for _, p := range []string{"/workspace/hostile/escape.txt", "/workspace/escape.txt", "/abs-escape.txt", "/etc/link-escape.txt"} {
		_, err := sb.Stat(ctx, p)
		wantErr(t, "stat "+p+" after hostile archives", err, runtime.ErrFileNotFound)
	}
	if got := s.sh(t, sb, "echo alive"); got != "alive\n" {
		t.Fatalf("after refused archives: %q", got)
	}
}

func (s *suite) terminal(t *testing.T) {
	s.need(t, s.h.Caps.Terminal, "Terminal")
	_, sb := s.sandbox(t)
	op, ok := sb.(runtime.TerminalOpener)
	if !ok {
		t.Fatal("the sandbox does not implement runtime.TerminalOpener")
	}
	term, err := op.OpenTerminal(s.ctx(t), runtime.TerminalRequest{Command: "read line; echo \"got $line\"; exit 3", Rows: 30, Cols: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	if term.PID() <= 0 {
		t.Errorf("terminal pid %d", term.PID())
	}
	if err := term.Resize(40, 120); err != nil {
		t.Errorf("resize: %v", err)
	}
	if _, err := term.Write([]byte("typed\r")); err != nil {
		t.Fatal(err)
	}
	sw := newStreamWriter()
	res, err := term.Output(sw)
	if err != nil || res.ExitCode != 3 || !strings.Contains(sw.String(), "got typed") {
		t.Fatalf("terminal: %+v %v, screen %q", res, err, sw.String())
	}

	// A signal ends the program with it; a hang-up ends one that runs on.
	for _, end := range []string{"signal", "close"} {
		term, err := op.OpenTerminal(s.ctx(t), runtime.TerminalRequest{Command: "echo ready; sleep 1000"})
		if err != nil {
			t.Fatal(err)
		}
		sw := newStreamWriter()
		done := make(chan runtime.ExecResult, 1)
		go func() {
			res, _ := term.Output(sw)
			done <- res
		}()
		if !sw.waitFor("ready", 30*time.Second) {
			t.Fatalf("the terminal shows %q", sw.String())
		}
		if end == "signal" {
			if err := term.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		} else {
			_ = term.Close()
		}
		select {
		case res := <-done:
			if end == "signal" && res.Signal != int(syscall.SIGKILL) {
				t.Errorf("SIGKILL on a terminal: %+v", res)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not end the terminal's program", end)
		}
		_ = term.Close()
	}

	// Refusals.
	_, err = op.OpenTerminal(s.ctx(t), runtime.TerminalRequest{Command: "true", Cwd: "/nope"})
	wantErr(t, "a terminal in a missing cwd", err, runtime.ErrFileNotFound)
	for _, req := range []runtime.TerminalRequest{
		{Command: "true", Rows: 1001, Cols: 80}, {Command: "true", Rows: -1}, {Command: "a\x00b"},
		{Command: "true", Env: map[string]string{"A=B": "x"}}, {Command: "true", Env: map[string]string{"A": "x\x00"}},
	} {
		if term, err := op.OpenTerminal(s.ctx(t), req); !errors.Is(err, runtime.ErrInvalidRequest) {
			if err == nil {
				_ = term.Close()
			}
			t.Errorf("terminal %+v: got %v, want ErrInvalidRequest", req, err)
		}
	}
}

func (s *suite) userFiles(t *testing.T) {
	s.need(t, s.h.Caps.UserFiles, "UserFiles")
	_, sb := s.sandbox(t)
	u, ok := sb.(runtime.UserFiles)
	if !ok {
		t.Fatal("the sandbox does not implement runtime.UserFiles")
	}
	ctx := s.ctx(t)
	const user = runtime.UserUser
	if n, err := u.WriteFileAs(ctx, user, "/workspace/u/mine.txt", 0o600, strings.NewReader("the user's")); err != nil || n != 10 {
		t.Fatalf("write as the user: %d %v", n, err)
	}
	var b bytes.Buffer
	if _, err := u.ReadFileAs(ctx, user, "/workspace/u/mine.txt", &b); err != nil || b.String() != "the user's" {
		t.Fatalf("read as the user: %q %v", b.String(), err)
	}
	if ents, err := u.ListAs(ctx, user, "/workspace/u"); err != nil || len(ents) != 1 || ents[0].Name != "mine.txt" {
		t.Fatalf("list as the user: %+v %v", ents, err)
	}
	if f, ok := sb.(runtime.FileOps); ok {
		if st, err := f.StatPath(ctx, runtime.FSRequest{Path: "/workspace/u/mine.txt"}); err != nil || st.UID != 1000 || st.Owner != user {
			t.Errorf("a file the user wrote: %+v %v", st, err)
		}
	}
	// The user's permissions decide.
	_, err := u.WriteFileAs(ctx, user, "/etc/user-pwned", 0, strings.NewReader("x"))
	wantErr(t, "write into /etc as the user", err, runtime.ErrPermission)
	_, err = sb.Stat(ctx, "/etc/user-pwned")
	wantErr(t, "the refused file", err, runtime.ErrFileNotFound)
	wantErr(t, "remove /etc/hostname as the user", u.RemoveAs(ctx, user, "/etc/hostname", false), runtime.ErrPermission)
	if _, err := sb.Stat(ctx, "/etc/hostname"); err != nil {
		t.Errorf("/etc/hostname after a refused remove: %v", err)
	}
	if _, err := sb.WriteFile(ctx, "/root/secret", 0o600, strings.NewReader("root's")); err != nil {
		t.Fatal(err)
	}
	b.Reset()
	_, err = u.ReadFileAs(ctx, user, "/root/secret", &b)
	wantErr(t, "read root's secret as the user", err, runtime.ErrPermission)
	if b.Len() != 0 {
		t.Errorf("a refused read gave %q", b.String())
	}
	// Root reads and removes what the user wrote.
	if got := s.read(t, sb, "/workspace/u/mine.txt"); got != "the user's" {
		t.Errorf("root reads %q", got)
	}
	if err := u.RemoveAs(ctx, user, "/workspace/u", true); err != nil {
		t.Fatalf("remove as the user: %v", err)
	}
	_, err = u.WriteFileAs(ctx, "no-such-user", "/workspace/x", 0, strings.NewReader("x"))
	wantErr(t, "write as an unknown user", err, runtime.ErrNoUser)
	_, err = u.ListAs(ctx, "no-such-user", "/workspace")
	wantErr(t, "list as an unknown user", err, runtime.ErrNoUser)
}
