package gvisor_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

func TestExecOutputAndExitStatus(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)

	out := run(t, sb, runtime.ExecRequest{Command: "printf 'one\\ntwo\\n'; printf 'e1\\n' >&2; exit 0"})
	if out.Stdout != "one\ntwo\n" || out.Stderr != "e1\n" || out.ExitCode != 0 || out.Signal != 0 || out.TimedOut {
		t.Fatalf("got %+v", out)
	}
	for _, code := range []int{1, 42, 255} {
		out := run(t, sb, runtime.ExecRequest{Command: fmt.Sprintf("exit %d", code)})
		if out.ExitCode != code || out.Signal != 0 {
			t.Errorf("exit %d: got %+v", code, out)
		}
	}
	// Killed by a signal: the shell kills itself.
	out = run(t, sb, runtime.ExecRequest{Command: "kill -TERM $$; sleep 5"})
	if out.Signal != int(syscall.SIGTERM) || out.ExitCode != 128+int(syscall.SIGTERM) {
		t.Errorf("self-killed shell: got %+v", out)
	}
	// Command not found is the shell's 127, not a driver error.
	out = run(t, sb, runtime.ExecRequest{Command: "no-such-command-xyz"})
	if out.ExitCode != 127 || !strings.Contains(out.Stderr, "not found") {
		t.Errorf("missing command: got %+v", out)
	}
	// A large output arrives complete and in order.
	out = run(t, sb, runtime.ExecRequest{Command: "seq 1 200000"})
	var want strings.Builder
	for i := 1; i <= 200000; i++ {
		fmt.Fprintf(&want, "%d\n", i)
	}
	if out.Stdout != want.String() {
		t.Errorf("seq output: %d bytes, want %d", len(out.Stdout), want.Len())
	}
	if out.Duration <= 0 {
		t.Errorf("duration not reported: %+v", out.ExecResult)
	}
	// A NUL byte cannot travel in an argv string: refused, not truncated.
	_, err := sb.Exec(testCtx(t, 10*time.Second), runtime.ExecRequest{Command: "echo a\x00b"})
	if !errors.Is(err, runtime.ErrInvalidRequest) {
		t.Errorf("command with NUL: got %v, want ErrInvalidRequest", err)
	}
}

func TestExecStdin(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)

	// 5 MB of random bytes reach the command intact.
	data := make([]byte, 5<<20)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(data)
	sum := sha256.Sum256(data)
	out := run(t, sb, runtime.ExecRequest{Command: "wc -c", Stdin: bytes.NewReader(data)})
	if strings.TrimSpace(out.Stdout) != fmt.Sprint(len(data)) || out.ExitCode != 0 {
		t.Fatalf("wc -c: got %+v", out)
	}
	out = run(t, sb, runtime.ExecRequest{Command: "sha256sum", Stdin: bytes.NewReader(data)})
	if got := strings.Fields(out.Stdout); len(got) == 0 || got[0] != hex.EncodeToString(sum[:]) {
		t.Fatalf("sha256sum of stdin: got %q", out.Stdout)
	}

	// Without Stdin the command reads EOF at once instead of hanging.
	start := time.Now()
	out = run(t, sb, runtime.ExecRequest{Command: "cat; echo done", Timeout: 10 * time.Second})
	if out.Stdout != "done\n" || out.TimedOut || time.Since(start) > 5*time.Second {
		t.Fatalf("cat without stdin: got %+v after %v", out, time.Since(start))
	}

	// A command that ignores its stdin finishes even though the host still
	// has input to send.
	out = run(t, sb, runtime.ExecRequest{Command: "echo ignored", Stdin: bytes.NewReader(data), Timeout: 10 * time.Second})
	if out.Stdout != "ignored\n" || out.ExitCode != 0 || out.TimedOut {
		t.Fatalf("command ignoring stdin: got %+v", out)
	}

	// Stdin is streamed: the command answers the first line before the
	// second one is written.
	pr, pw := io.Pipe()
	defer pw.Close()
	sw := newStreamWriter()
	done := make(chan struct{})
	var res runtime.ExecResult
	var err error
	go func() {
		defer close(done)
		res, err = sb.Exec(testCtx(t, 30*time.Second), runtime.ExecRequest{
			Command: `while read -r l; do echo "got $l"; done; echo bye`, Stdin: pr, Stdout: sw,
		})
	}()
	if _, err := io.WriteString(pw, "1\n"); err != nil {
		t.Fatal(err)
	}
	if !sw.waitFor("got 1\n", 10*time.Second) {
		t.Fatalf("no answer to the first line; stdout so far %q", sw.String())
	}
	if _, err := io.WriteString(pw, "2\n"); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	<-done
	if err != nil || res.ExitCode != 0 || sw.String() != "got 1\ngot 2\nbye\n" {
		t.Fatalf("interactive stdin: %v %+v %q", err, res, sw.String())
	}
}

func TestExecEnv(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)
	ctx := testCtx(t, time.Minute)

	// Before the claim nothing but the defaults is set.
	out := sh(t, sb, `echo "[$SB_ONLY][$PATH][$HOME]"`)
	if out != "[][/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin][/root]\n" {
		t.Fatalf("default env: %q", out)
	}

	weird := "spaces and 'quotes' \"double\" $dollar\nnewline=equals"
	if err := sb.Configure(ctx, runtime.Claim{Hostname: "claimed-host", Env: map[string]string{
		"SB_ONLY": "sandbox", "SHARED": "from-sandbox", "WEIRD": weird,
	}}); err != nil {
		t.Fatal(err)
	}
	// The claim's hostname lands in /etc/hostname. (The kernel's hostname
	// stays the bundle's "sandbox": the agent lacks CAP_SYS_ADMIN to set it.)
	if out := sh(t, sb, "cat /etc/hostname"); out != "claimed-host\n" {
		t.Fatalf("/etc/hostname after the claim: %q", out)
	}
	out = run(t, sb, runtime.ExecRequest{
		Command: `printf '%s|%s|%s|%s' "$SB_ONLY" "$SHARED" "$CALL_ONLY" "$WEIRD"`,
		Env:     map[string]string{"SHARED": "from-call", "CALL_ONLY": "call"},
	}).Stdout
	if want := "sandbox|from-call|call|" + weird; out != want {
		t.Fatalf("merged env: got %q, want %q", out, want)
	}
	// The call's env does not stick to the sandbox.
	out = sh(t, sb, `printf '%s|%s' "$SHARED" "$CALL_ONLY"`)
	if out != "from-sandbox|" {
		t.Fatalf("env after the call: %q", out)
	}
	// A call may override the defaults too.
	out = run(t, sb, runtime.ExecRequest{Command: `echo "$HOME"`, Env: map[string]string{"HOME": "/workspace"}}).Stdout
	if out != "/workspace\n" {
		t.Fatalf("HOME override: %q", out)
	}

	// A second Configure replaces the sandbox env.
	if err := sb.Configure(ctx, runtime.Claim{Env: map[string]string{"SHARED": "again"}}); err != nil {
		t.Fatal(err)
	}
	if out := sh(t, sb, `printf '%s|%s' "$SB_ONLY" "$SHARED"`); out != "|again" {
		t.Fatalf("env after reconfigure: %q", out)
	}

	// Malformed names are refused before anything runs.
	for _, bad := range []map[string]string{{"A=B": "x"}, {"": "x"}, {"OK": "nul\x00byte"}} {
		_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "true", Env: bad})
		if !errors.Is(err, runtime.ErrInvalidRequest) {
			t.Errorf("exec env %q: got %v, want ErrInvalidRequest", bad, err)
		}
	}
	if err := sb.Configure(ctx, runtime.Claim{Env: map[string]string{"A=B": "x"}}); !errors.Is(err, runtime.ErrInvalidRequest) {
		t.Errorf("configure with a bad name: got %v, want ErrInvalidRequest", err)
	}
}

func TestExecCwd(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)
	ctx := testCtx(t, time.Minute)

	if out := sh(t, sb, "pwd"); out != "/workspace\n" {
		t.Fatalf("default cwd: %q", out)
	}
	if out := run(t, sb, runtime.ExecRequest{Command: "pwd", Cwd: "/tmp"}).Stdout; out != "/tmp\n" {
		t.Fatalf("cwd /tmp: %q", out)
	}
	if err := sb.MkdirAll(ctx, "/workspace/sub dir/x", 0o755); err != nil {
		t.Fatal(err)
	}
	if out := run(t, sb, runtime.ExecRequest{Command: "pwd", Cwd: "/workspace/sub dir/x"}).Stdout; out != "/workspace/sub dir/x\n" {
		t.Fatalf("cwd with a space: %q", out)
	}
	for _, bad := range []string{"/no/such/dir", "/etc/passwd"} {
		var stdout bytes.Buffer
		_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "echo ran", Cwd: bad, Stdout: &stdout})
		if !errors.Is(err, runtime.ErrFileNotFound) || !strings.Contains(err.Error(), bad) {
			t.Errorf("cwd %s: got %v, want ErrFileNotFound naming the directory", bad, err)
		}
		if stdout.Len() != 0 {
			t.Errorf("cwd %s: the command ran: %q", bad, stdout.String())
		}
	}
}

func TestExecTimeoutKillsTree(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)

	// Background children, children in sessions of their own (also double
	// forks that leave them orphaned under PID 1), an orphan
	// left in the command's process group, and a trap that ignores TERM.
	cmd := `trap '' TERM
sleep 1001 &
setsid sleep 1002 &
(sleep 1003 &)
sh -c 'setsid sleep 1004 & sleep 1005' &
setsid sh -c 'trap "" TERM HUP; sleep 1006 & sleep 1007' &
setsid sh -c 'sleep 1009 &'
(setsid sleep 1010 &)
echo started
sleep 1008`
	sw := newStreamWriter()
	start := time.Now()
	res, err := sb.Exec(testCtx(t, 30*time.Second), runtime.ExecRequest{Command: cmd, Timeout: time.Second, Stdout: sw})
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if !res.TimedOut || res.ExitCode == 0 || sw.String() != "started\n" {
		t.Fatalf("got %+v, stdout %q", res, sw.String())
	}
	if elapsed > 3*time.Second {
		t.Errorf("timeout of 1s returned after %v", elapsed)
	}
	if res.Duration < time.Second || res.Duration > 3*time.Second {
		t.Errorf("reported duration %v", res.Duration)
	}
	// Nothing of the tree may survive. Give the sentry a moment to finish
	// tearing the processes down.
	var left []proc
	if !eventually(2*time.Second, func() bool {
		left = procsNamed(listProcs(t, sb), "sleep")
		return len(left) == 0
	}) {
		t.Fatalf("processes survived the timeout: %v", left)
	}
	// The sandbox still works and a following command is not affected.
	if out := sh(t, sb, "echo next"); out != "next\n" {
		t.Fatalf("after timeout: %q", out)
	}
}

func TestExecContextCancelKillsCommand(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sw := newStreamWriter()
	errc := make(chan error, 1)
	go func() {
		_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "sleep 2001 & setsid sleep 2002 & echo started; sleep 2003", Stdout: sw})
		errc <- err
	}()
	if !sw.waitFor("started\n", 10*time.Second) {
		t.Fatal("command did not start")
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Exec did not return after its context was cancelled")
	}
	var left []proc
	if !eventually(3*time.Second, func() bool {
		left = procsNamed(listProcs(t, sb), "sleep")
		return len(left) == 0
	}) {
		t.Fatalf("processes survived the cancelled exec: %v", left)
	}
	// An exec whose context is already done does not run at all.
	_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "touch /workspace/ran"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("exec with a cancelled context: %v", err)
	}
	if out := sh(t, sb, "test -e /workspace/ran && echo ran || echo no"); out != "no\n" {
		t.Fatalf("exec with a cancelled context ran: %q", out)
	}
}

func TestExecStreamsOutput(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)

	sw := newStreamWriter()
	ew := newStreamWriter()
	start := time.Now()
	res, err := sb.Exec(testCtx(t, 30*time.Second), runtime.ExecRequest{
		Command: "echo a; echo ea >&2; sleep 2; echo b; echo eb >&2", Stdout: sw, Stderr: ew,
	})
	end := time.Since(start)
	if err != nil || res.ExitCode != 0 {
		t.Fatal(res, err)
	}
	if sw.String() != "a\nb\n" || ew.String() != "ea\neb\n" {
		t.Fatalf("stdout %q stderr %q", sw.String(), ew.String())
	}
	for name, w := range map[string]*streamWriter{"stdout": sw, "stderr": ew} {
		first := w.firstAt().Sub(start)
		if first > time.Second || end-first < 1500*time.Millisecond {
			t.Errorf("%s: first write after %v, exec returned after %v: output was not streamed", name, first, end)
		}
	}
}

func TestExecConcurrent(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)

	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var o, e bytes.Buffer
			in := strings.Repeat("x", i*1000)
			res, err := sb.Exec(testCtx(t, time.Minute), runtime.ExecRequest{
				Command: `echo "id=$ID"; wc -c; head -c $((ID*3000)) /dev/zero | wc -c; echo "err$ID" >&2; sleep 0.$((ID%5)); exit $((ID%7))`,
				Env:     map[string]string{"ID": fmt.Sprint(i)},
				Stdin:   strings.NewReader(in), Stdout: &o, Stderr: &e,
			})
			want := fmt.Sprintf("id=%d\n%d\n%d\n", i, len(in), i*3000)
			switch {
			case err != nil:
				errs <- fmt.Errorf("exec %d: %w", i, err)
			case res.ExitCode != i%7 || o.String() != want || e.String() != fmt.Sprintf("err%d\n", i):
				errs <- fmt.Errorf("exec %d: exit %d, stdout %q (want %q), stderr %q", i, res.ExitCode, o.String(), want, e.String())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A command that leaves a child holding its output pipes returns when the
// command ends, with the output written until then, not when the child
// does; the child goes on.
func TestExecBackgroundChildHoldingPipes(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)

	for _, cmd := range []string{
		"sleep 3001 & echo now",
		"(sleep 3002; echo never) & echo now",
		"sh -c 'sleep 3003' 2>&1 & echo now >&2; echo now",
	} {
		var o, e bytes.Buffer
		start := time.Now()
		res, err := sb.Exec(testCtx(t, time.Minute), runtime.ExecRequest{Command: cmd, Stdout: &o, Stderr: &e})
		elapsed := time.Since(start)
		if err != nil || res.ExitCode != 0 || o.String() != "now\n" {
			t.Fatalf("%s: %+v %v, stdout %q", cmd, res, err, o.String())
		}
		// The children sleep for most of an hour; the lateWaits bound is 3 s.
		if elapsed > 2500*time.Millisecond {
			t.Errorf("%s: returned after %v: the child held the exec", cmd, elapsed)
		}
	}
	if got := procsNamed(listProcs(t, sb), "sleep"); len(got) != 3 {
		t.Errorf("the background children should still run: %v", got)
	}
}

func TestExecSignals(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)

	sigs := make(chan syscall.Signal, 1)
	sw := newStreamWriter()
	type result struct {
		res runtime.ExecResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := sb.Exec(testCtx(t, 30*time.Second), runtime.ExecRequest{
			Command: `trap 'echo "got TERM"; exit 42' TERM; echo ready; while :; do sleep 0.1; done`,
			Stdout:  sw, Signals: sigs,
		})
		done <- result{res, err}
	}()
	if !sw.waitFor("ready\n", 10*time.Second) {
		t.Fatal("script did not start")
	}
	sigs <- syscall.SIGTERM
	select {
	case r := <-done:
		if r.err != nil || r.res.ExitCode != 42 || sw.String() != "ready\ngot TERM\n" {
			t.Fatalf("got %+v %v, stdout %q", r.res, r.err, sw.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the trap did not run after SIGTERM")
	}

	// An uncatchable signal ends the command with that signal, and signals
	// work while stdin is attached too.
	pr, pw := io.Pipe()
	defer pw.Close()
	sigs = make(chan syscall.Signal, 1)
	sw = newStreamWriter()
	go func() {
		res, err := sb.Exec(testCtx(t, 30*time.Second), runtime.ExecRequest{
			Command: `echo ready; cat`, Stdin: pr, Stdout: sw, Signals: sigs,
		})
		done <- result{res, err}
	}()
	if !sw.waitFor("ready\n", 10*time.Second) {
		t.Fatal("second script did not start")
	}
	sigs <- syscall.SIGKILL
	select {
	case r := <-done:
		if r.err != nil || r.res.Signal != int(syscall.SIGKILL) {
			t.Fatalf("SIGKILL: got %+v %v", r.res, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SIGKILL did not end the command")
	}
}

func TestExecReapsZombies(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)

	// Orphans, both in and out of the command's session, that exit after
	// the command returned; they are re-parented to the agent, PID 1.
	out := run(t, sb, runtime.ExecRequest{Command: `for i in 1 2 3 4 5; do (sleep 0.$i &); (setsid sleep 0.$i &); done
sh -c 'sleep 0.3 & sleep 0.3 & exit 0' &
echo spawned`})
	if out.ExitCode != 0 || out.Stdout != "spawned\n" {
		t.Fatalf("got %+v", out)
	}
	// Right away the orphans are still running, re-parented to PID 1.
	ps := listProcs(t, sb)
	orphans := 0
	for _, p := range ps {
		if p.Comm == "sleep" && p.PPID == 1 {
			orphans++
		}
	}
	if orphans == 0 {
		t.Logf("no orphan seen before they exited: %v", ps)
	}
	time.Sleep(time.Second)
	var zombies []proc
	if !eventually(3*time.Second, func() bool {
		zombies = zombies[:0]
		for _, p := range listProcs(t, sb) {
			if p.State == "Z" || p.Comm == "sleep" {
				zombies = append(zombies, p)
			}
		}
		return len(zombies) == 0
	}) {
		t.Fatalf("zombies or leftovers remain: %v", zombies)
	}
	// The agent still hands exit statuses to the commands it started.
	if out := run(t, sb, runtime.ExecRequest{Command: "exit 7"}); out.ExitCode != 7 {
		t.Fatalf("exit status after reaping orphans: %+v", out)
	}
}

// streamWriter records output and when it first arrived.
type streamWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	first time.Time
	cond  chan struct{} // closed and replaced on every write
}

func newStreamWriter() *streamWriter { return &streamWriter{cond: make(chan struct{})} }

func (w *streamWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.first.IsZero() {
		w.first = time.Now()
	}
	w.buf.Write(p)
	close(w.cond)
	w.cond = make(chan struct{})
	return len(p), nil
}

func (w *streamWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func (w *streamWriter) firstAt() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.first
}

// waitFor waits until the output contains s.
func (w *streamWriter) waitFor(s string, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		w.mu.Lock()
		ok := strings.Contains(w.buf.String(), s)
		c := w.cond
		w.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-c:
		case <-timer.C:
			return false
		}
	}
}

// TestExecShellSemantics pins what a command sees of the shell it runs in
// and what its exec reports, whichever way the agent learns the exit
// status (the shell's early report or its exit): EXIT traps still write
// their output, the report leaves no trace in -x output or in the
// command's file descriptors, and a redefined builtin does not change it.
func TestExecShellSemantics(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)
	if _, err := sb.WriteFile(testCtx(t, 10*time.Second), "/tmp/traps.sh", 0o644, strings.NewReader("trap 'echo sourced-bye' EXIT\n")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		command, stdout, stderr string
		code                    int
	}{
		{command: "true", code: 0},
		{command: "false", code: 1},
		{command: "echo out; echo err >&2; (exit 7)", stdout: "out\n", stderr: "err\n", code: 7},
		{command: "trap 'echo bye' EXIT; echo hi; false", stdout: "hi\nbye\n", code: 1},
		{command: "trap 'echo bye; exit 3' EXIT; echo hi", stdout: "hi\nbye\n", code: 3},
		{command: ". /tmp/traps.sh; echo hi", stdout: "hi\nsourced-bye\n", code: 0},
		{command: "set -x; true", stderr: "+ true\n", code: 0},
		{command: "set -u; true", code: 0},
		{command: "set -C; (exit 5)", code: 5},
		{command: "IFS=0123456789; (exit 10)", code: 10},
		{command: "set -e; false; echo not-reached", code: 1},
		{command: "echo() { printf 'X%s\\n' \"$*\"; }; echo hi", stdout: "Xhi\n", code: 0},
		{command: "exec >/dev/null; echo gone; exit 4", code: 4},
		{command: "sh -c 'ls /proc/$$/fd' | tr '\\n' ' '", stdout: "0 1 2 ", code: 0},
		{command: "return 6", code: 6},
		{command: "cat <<EOF\nunterminated", stdout: "unterminated\n", code: 0},
	} {
		out := run(t, sb, runtime.ExecRequest{Command: c.command})
		if out.Stdout != c.stdout || out.Stderr != c.stderr || out.ExitCode != c.code || out.Signal != 0 {
			t.Errorf("%q: got stdout %q stderr %q exit %d signal %d; want %q %q %d",
				c.command, out.Stdout, out.Stderr, out.ExitCode, out.Signal, c.stdout, c.stderr, c.code)
		}
	}
}
