package runtimetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

func (s *suite) exec(t *testing.T) {
	_, sb := s.sandbox(t)

	t.Run("OutputAndExitStatus", func(t *testing.T) {
		out := s.run(t, sb, runtime.ExecRequest{Command: "echo out; echo err >&2; printf '%s-%d\\n' a 7; exit 3"})
		if out.Stdout != "out\na-7\n" || out.Stderr != "err\n" || out.ExitCode != 3 || out.Signal != 0 || out.TimedOut {
			t.Fatalf("got %+v", out)
		}
		for _, code := range []int{0, 1, 42, 255} {
			if out := s.run(t, sb, runtime.ExecRequest{Command: fmt.Sprintf("exit %d", code)}); out.ExitCode != code || out.Signal != 0 {
				t.Errorf("exit %d: got %+v", code, out)
			}
		}
		if out := s.run(t, sb, runtime.ExecRequest{Command: "false"}); out.ExitCode != 1 {
			t.Errorf("false: got %+v", out)
		}
		// Command not found is the shell's 127, not a driver error.
		out = s.run(t, sb, runtime.ExecRequest{Command: "no-such-command-xyz"})
		if out.ExitCode != 127 || !strings.Contains(out.Stderr, "not found") {
			t.Errorf("missing command: got %+v", out)
		}
		out = s.run(t, sb, runtime.ExecRequest{Command: "sleep 0.2"})
		if out.ExitCode != 0 || out.Duration < 150*time.Millisecond {
			t.Errorf("sleep 0.2: got %+v (duration is at least the command's)", out.ExecResult)
		}
	})

	t.Run("Stdin", func(t *testing.T) {
		data := make([]byte, 3<<20+17)
		_, _ = rand.NewChaCha8([32]byte{7}).Read(data)
		out := s.run(t, sb, runtime.ExecRequest{Command: "cat", Stdin: bytes.NewReader(data)})
		if out.ExitCode != 0 || out.Stdout != string(data) {
			t.Fatalf("cat of %d bytes of stdin: exit %d, %d bytes back, equal %v", len(data), out.ExitCode, len(out.Stdout), out.Stdout == string(data))
		}
		// Without Stdin the command reads EOF at once.
		out = s.run(t, sb, runtime.ExecRequest{Command: "cat; echo done", Timeout: 30 * time.Second})
		if out.Stdout != "done\n" || out.TimedOut {
			t.Fatalf("cat without stdin: %+v", out)
		}
		// A command that ignores its stdin ends though input remains.
		out = s.run(t, sb, runtime.ExecRequest{Command: "echo ignored", Stdin: bytes.NewReader(data), Timeout: 30 * time.Second})
		if out.Stdout != "ignored\n" || out.ExitCode != 0 || out.TimedOut {
			t.Fatalf("command ignoring stdin: %+v", out)
		}
	})

	t.Run("StreamsStdinAndStdout", func(t *testing.T) {
		// The command answers input before the input ends, and its
		// output reaches the caller before the command ends.
		pr, pw := io.Pipe()
		defer pw.Close()
		sw := newStreamWriter()
		done := make(chan error, 1)
		var res runtime.ExecResult
		go func() {
			var err error
			res, err = sb.Exec(s.ctx(t), runtime.ExecRequest{Command: "echo ready; cat; echo bye", Stdin: pr, Stdout: sw})
			done <- err
		}()
		if !sw.waitFor("ready\n", 30*time.Second) {
			t.Fatalf("no output before the command ended: %q", sw.String())
		}
		if _, err := io.WriteString(pw, "line 1\n"); err != nil {
			t.Fatal(err)
		}
		if !sw.waitFor("line 1\n", 30*time.Second) {
			t.Fatalf("the first line was not echoed before stdin ended: %q", sw.String())
		}
		_, _ = io.WriteString(pw, "line 2\n")
		pw.Close()
		if err := <-done; err != nil || res.ExitCode != 0 || sw.String() != "ready\nline 1\nline 2\nbye\n" {
			t.Fatalf("got %+v %v, stdout %q", res, err, sw.String())
		}
	})

	t.Run("Env", func(t *testing.T) {
		weird := "spaces 'single' \"double\" $dollar `tick`\nnewline=equals"
		out := s.run(t, sb, runtime.ExecRequest{
			Command: `printf '%s|%s' "$CALL_ONLY" "$WEIRD"`,
			Env:     map[string]string{"CALL_ONLY": "call", "WEIRD": weird},
		})
		if want := "call|" + weird; out.Stdout != want {
			t.Fatalf("env: got %q, want %q", out.Stdout, want)
		}
		// The call's env does not stick.
		if got := s.sh(t, sb, `printf '%s' "$CALL_ONLY"`); got != "" {
			t.Fatalf("env after the call: %q", got)
		}
		// A call overrides the sandbox's env.
		if got := s.run(t, sb, runtime.ExecRequest{Command: `echo "$HOME"`, Env: map[string]string{"HOME": "/elsewhere"}}).Stdout; got != "/elsewhere\n" {
			t.Fatalf("HOME override: %q", got)
		}
		for _, bad := range []map[string]string{{"A=B": "x"}, {"": "x"}, {"OK": "nul\x00byte"}, {"NUL\x00NAME": "x"}} {
			_, err := s.tryRun(t, sb, runtime.ExecRequest{Command: "true", Env: bad})
			wantErr(t, fmt.Sprintf("exec with env %q", bad), err, runtime.ErrInvalidRequest)
		}
	})

	t.Run("Cwd", func(t *testing.T) {
		if got := s.sh(t, sb, "pwd"); got != "/workspace\n" {
			t.Fatalf("default cwd: %q", got)
		}
		if got := s.run(t, sb, runtime.ExecRequest{Command: "pwd", Cwd: "/tmp"}).Stdout; got != "/tmp\n" {
			t.Fatalf("cwd /tmp: %q", got)
		}
		if err := sb.MkdirAll(s.ctx(t), "/workspace/sub dir/x", 0o755); err != nil {
			t.Fatal(err)
		}
		if got := s.run(t, sb, runtime.ExecRequest{Command: "pwd", Cwd: "/workspace/sub dir/x"}).Stdout; got != "/workspace/sub dir/x\n" {
			t.Fatalf("cwd with a space: %q", got)
		}
		s.write(t, sb, "/workspace/a-file", "x")
		for _, bad := range []string{"/no/such/dir", "/workspace/a-file"} {
			out, err := s.tryRun(t, sb, runtime.ExecRequest{Command: "echo ran", Cwd: bad})
			if !errors.Is(err, runtime.ErrFileNotFound) || !strings.Contains(err.Error(), bad) {
				t.Errorf("cwd %s: got %v, want ErrFileNotFound naming the directory", bad, err)
			}
			if out.Stdout != "" {
				t.Errorf("cwd %s: the command ran: %q", bad, out.Stdout)
			}
		}
	})

	t.Run("Timeout", func(t *testing.T) {
		start := time.Now()
		out := s.run(t, sb, runtime.ExecRequest{Command: "echo started; sleep 1000; echo never", Timeout: time.Second})
		if !out.TimedOut || out.ExitCode == 0 || out.Stdout != "started\n" {
			t.Fatalf("got %+v", out)
		}
		if took := time.Since(start); took > 30*time.Second {
			t.Fatalf("a 1 s timeout returned after %v", took)
		}
		if out.Duration < time.Second {
			t.Errorf("reported duration %v is shorter than the timeout", out.Duration)
		}
		if got := s.sh(t, sb, "echo next"); got != "next\n" {
			t.Fatalf("after a timeout: %q", got)
		}
	})

	t.Run("ContextCancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		sw := newStreamWriter()
		errc := make(chan error, 1)
		go func() {
			_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "echo started; sleep 1000", Stdout: sw})
			errc <- err
		}()
		if !sw.waitFor("started\n", 30*time.Second) {
			t.Fatal("the command did not start")
		}
		cancel()
		select {
		case err := <-errc:
			wantErr(t, "cancelled exec", err, context.Canceled)
		case <-time.After(30 * time.Second):
			t.Fatal("Exec did not return after its context was cancelled")
		}
		// An exec whose context is already done does not run at all.
		_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "echo ran > /workspace/ran"})
		wantErr(t, "exec with a cancelled context", err, context.Canceled)
		_, err = sb.Stat(s.ctx(t), "/workspace/ran")
		wantErr(t, "the file of an exec with a cancelled context", err, runtime.ErrFileNotFound)
	})

	t.Run("Signals", func(t *testing.T) {
		for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
			sigs := make(chan syscall.Signal, 1)
			sw := newStreamWriter()
			done := make(chan execOut, 1)
			go func() {
				res, err := sb.Exec(s.ctx(t), runtime.ExecRequest{Command: "echo ready; sleep 1000", Stdout: sw, Signals: sigs})
				if err != nil {
					t.Errorf("exec: %v", err)
				}
				done <- execOut{ExecResult: res}
			}()
			if !sw.waitFor("ready\n", 30*time.Second) {
				t.Fatal("the command did not start")
			}
			sigs <- sig
			select {
			case r := <-done:
				if r.Signal != int(sig) || r.ExitCode != 128+int(sig) || r.TimedOut {
					t.Errorf("%v: got %+v, want signal %d and exit %d", sig, r.ExecResult, sig, 128+int(sig))
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("%v did not end the command", sig)
			}
		}
		// Signals reach a command reading its stdin too.
		pr, pw := io.Pipe()
		defer pw.Close()
		sigs := make(chan syscall.Signal, 1)
		sw := newStreamWriter()
		done := make(chan runtime.ExecResult, 1)
		go func() {
			res, _ := sb.Exec(s.ctx(t), runtime.ExecRequest{Command: "echo ready; cat", Stdin: pr, Stdout: sw, Signals: sigs})
			done <- res
		}()
		if !sw.waitFor("ready\n", 30*time.Second) {
			t.Fatal("the command did not start")
		}
		sigs <- syscall.SIGKILL
		select {
		case r := <-done:
			if r.Signal != int(syscall.SIGKILL) {
				t.Errorf("SIGKILL to cat: got %+v", r)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("SIGKILL did not end cat")
		}
	})

	t.Run("Users", func(t *testing.T) {
		if got := s.run(t, sb, runtime.ExecRequest{Command: `echo "$HOME"`, User: runtime.UserUser}).Stdout; got != "/home/user\n" {
			t.Errorf("HOME of the user: %q", got)
		}
		if got := s.run(t, sb, runtime.ExecRequest{Command: `echo "$HOME"`, User: runtime.UserRoot}).Stdout; got != "/root\n" {
			t.Errorf("HOME of root: %q", got)
		}
		_, err := s.tryRun(t, sb, runtime.ExecRequest{Command: "true", User: "no-such-user"})
		wantErr(t, "exec as an unknown user", err, runtime.ErrNoUser)
		if s.h.Caps.RealCommands {
			if got := s.run(t, sb, runtime.ExecRequest{Command: "id -u; id -u -n", User: runtime.UserUser}).Stdout; got != "1000\nuser\n" {
				t.Errorf("id as the user: %q", got)
			}
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, err := s.tryRun(t, sb, runtime.ExecRequest{Command: fmt.Sprintf("echo n%d; echo e%d >&2; exit %d", i, i, i)})
				if err != nil || out.Stdout != fmt.Sprintf("n%d\n", i) || out.Stderr != fmt.Sprintf("e%d\n", i) || out.ExitCode != i {
					t.Errorf("concurrent exec %d: %+v %v", i, out, err)
				}
			}()
		}
		wg.Wait()
	})

	t.Run("CommandsSeeFiles", func(t *testing.T) {
		s.write(t, sb, "/workspace/from-api.txt", "written by the API\n")
		if got := s.sh(t, sb, "cat /workspace/from-api.txt"); got != "written by the API\n" {
			t.Fatalf("a command reads %q", got)
		}
		s.sh(t, sb, "printf 'written by a command\\n' > /workspace/from-shell.txt")
		if got := s.read(t, sb, "/workspace/from-shell.txt"); got != "written by a command\n" {
			t.Fatalf("the API reads %q", got)
		}
	})

	t.Run("RealShell", func(t *testing.T) {
		s.need(t, s.h.Caps.RealCommands, "RealCommands")
		out := s.run(t, sb, runtime.ExecRequest{Command: "seq 1 100000 | tail -n 2; kill -TERM $$; sleep 5"})
		if out.Stdout != "99999\n100000\n" || out.Signal != int(syscall.SIGTERM) || out.ExitCode != 128+int(syscall.SIGTERM) {
			t.Fatalf("got %+v", out)
		}
		big := s.run(t, sb, runtime.ExecRequest{Command: "seq 1 200000"})
		var want strings.Builder
		for i := 1; i <= 200000; i++ {
			fmt.Fprintf(&want, "%d\n", i)
		}
		if big.Stdout != want.String() {
			t.Errorf("seq output: %d bytes, want %d", len(big.Stdout), want.Len())
		}
	})

	t.Run("TimeoutKillsTheTree", func(t *testing.T) {
		s.need(t, s.h.Caps.RealCommands, "RealCommands")
		cmd := `trap '' TERM
sleep 1001 &
setsid sleep 1002 &
(sleep 1003 &)
setsid sh -c 'trap "" TERM HUP; sleep 1004 & sleep 1005' &
echo started
sleep 1006`
		out := s.run(t, sb, runtime.ExecRequest{Command: cmd, Timeout: time.Second})
		if !out.TimedOut || out.Stdout != "started\n" {
			t.Fatalf("got %+v", out)
		}
		s.noSleepers(t, sb, 1001, 1006)

		// A cancelled context kills the tree as well.
		ctx, cancel := context.WithCancel(context.Background())
		sw := newStreamWriter()
		errc := make(chan error, 1)
		go func() {
			_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "sleep 2001 & setsid sleep 2002 & echo started; sleep 2003", Stdout: sw})
			errc <- err
		}()
		if !sw.waitFor("started\n", 30*time.Second) {
			cancel()
			t.Fatal("the command did not start")
		}
		cancel()
		wantErr(t, "cancelled exec", <-errc, context.Canceled)
		s.noSleepers(t, sb, 2001, 2003)
	})
}

// noSleepers fails t if a `sleep N` for N in [from, to] still runs in sb
// after a while.
func (s *suite) noSleepers(t *testing.T, sb runtime.Sandbox, from, to int) {
	t.Helper()
	var left []string
	if !eventually(10*time.Second, func() bool {
		left = nil
		ps := s.sh(t, sb, `for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < "$f" 2>/dev/null; echo; done`)
		for _, line := range strings.Split(ps, "\n") {
			for n := from; n <= to; n++ {
				if strings.TrimSpace(line) == fmt.Sprintf("sleep %d", n) {
					left = append(left, line)
				}
			}
		}
		return len(left) == 0
	}) {
		t.Fatalf("processes survived: %q", left)
	}
}
