package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

// syncBuf is a buffer written by one goroutine and polled by the test.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func (s *syncBuf) waitFor(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(s.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("never saw %q; got %q", want, s.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestGoSDKTerminal(t *testing.T) {
	s := startAPI(t, serverOpts{})
	c := sdkClient(t, s, s.key)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sbx, err := c.CreateSandbox(ctx, orkestr.CreateParams{Template: "debian-12"})
	if err != nil {
		t.Fatal(err)
	}
	defer sbx.Terminate(context.Background())

	term, err := sbx.Terminal(ctx, orkestr.TerminalOptions{Command: "stty size; read l; stty size; echo \"got $l $V\"; exit 9", Rows: 12, Cols: 34, Env: map[string]string{"V": "v1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	if term.PID <= 1 {
		t.Errorf("pid %d", term.PID)
	}
	out := &syncBuf{}
	done := make(chan error, 1)
	go func() { _, err := io.Copy(out, term); done <- err }()
	out.waitFor(t, "12 34\r\n")
	if err := term.Resize(20, 70); err != nil {
		t.Fatal(err)
	}
	if _, err := term.Write([]byte("line\r")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("reading: %v (%q)", err, out.String())
	}
	if !strings.Contains(out.String(), "20 70\r\ngot line v1") {
		t.Errorf("output %q", out.String())
	}
	if ex := term.Exit(); ex == nil || ex.ExitCode != 9 {
		t.Errorf("exit %+v", ex)
	}

	// Wait without reading; refusals are typed errors.
	term2, err := sbx.Terminal(ctx, orkestr.TerminalOptions{Command: "seq 1 100000; exit 2"})
	if err != nil {
		t.Fatal(err)
	}
	if ex, err := term2.Wait(); err != nil || ex.ExitCode != 2 {
		t.Errorf("wait: %+v %v", ex, err)
	}
	var nf *orkestr.SandboxNotFoundError
	if _, err := c.Sandbox("sbx_01JZZZZZZZZZZZZZZZZZZZZZZZ").Terminal(ctx, orkestr.TerminalOptions{}); !errors.As(err, &nf) {
		t.Errorf("unknown sandbox: %v", err)
	}
	var apiErr *orkestr.Error
	if _, err := sbx.Terminal(ctx, orkestr.TerminalOptions{Cwd: "/no/such/dir"}); !errors.As(err, &apiErr) || apiErr.Code != "invalid_request" {
		t.Errorf("missing cwd: %v", err)
	}
	// Cancelling the context hangs up.
	cctx, ccancel := context.WithCancel(ctx)
	term3, err := sbx.Terminal(cctx, orkestr.TerminalOptions{Command: "echo up; sleep 777"})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_, _ = term3.Read(buf)
	ccancel()
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := sbx.Exec(ctx, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '", orkestr.ExecOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(res.Stdout, "sleep 777") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the program outlived the cancelled context")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// openHostPty opens a terminal pair on the test host for the CLI to run on.
func openHostPty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	sfd, err := unix.Open("/dev/pts/"+strconv.Itoa(n), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	master, slave = os.NewFile(uintptr(fd), "ptmx"), os.NewFile(uintptr(sfd), "pts")
	t.Cleanup(func() { master.Close(); slave.Close() })
	return master, slave
}

// TestCLIExecInteractiveOnARealTerminal runs `orkestr sandbox exec -it`
// on a terminal of this host, as a person would: raw mode, the window
// size followed on SIGWINCH, Ctrl-C to the remote side, the remote exit
// status as the CLI's, the local terminal restored afterwards.
func TestCLIExecInteractiveOnARealTerminal(t *testing.T) {
	s := startAPI(t, serverOpts{})
	id := s.create(s.key, map[string]any{"template": "debian-12"})
	master, slave := openHostPty(t)
	if err := unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 30, Col: 100}); err != nil {
		t.Fatal(err)
	}
	before, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "orkestr"), "sandbox", "exec", "-it", id, "--", "bash", "--norc")
	cmd.Env = append(os.Environ(), "ORKESTR_API_KEY="+s.key, "ORKESTR_BASE_URL="+s.url, "TERM=xterm")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()
	out := &syncBuf{}
	go func() { _, _ = io.Copy(out, master) }()
	typeIn := func(s string) {
		t.Helper()
		if _, err := master.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	typeIn("stty size; echo $((40+2))\r")
	out.waitFor(t, "30 100\r\n42")
	// Raw mode: the local terminal neither echoes nor interprets.
	raw, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if raw.Lflag&(unix.ICANON|unix.ECHO|unix.ISIG) != 0 {
		t.Errorf("local terminal not in raw mode: lflag %#x", raw.Lflag)
	}
	// The window changes: the CLI hears SIGWINCH and resizes the remote.
	if err := unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 44, Col: 133}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), "44 133") {
		if time.Now().After(deadline) {
			t.Fatalf("remote size never followed: %q", out.String())
		}
		typeIn("stty size\r")
		time.Sleep(300 * time.Millisecond)
	}
	// Ctrl-C interrupts the remote command, not the CLI.
	typeIn("sleep 100\r")
	time.Sleep(500 * time.Millisecond)
	typeIn("\x03")
	typeIn("echo rc=$?\r")
	out.waitFor(t, "rc=130")
	typeIn("exit 7\r")
	errc := make(chan error, 1)
	go func() { errc <- cmd.Wait() }()
	select {
	case err := <-errc:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 7 {
			t.Errorf("CLI exit: %v, want status 7; output %q", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("CLI did not exit; output %q", out.String())
	}
	after, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if after.Lflag != before.Lflag || after.Iflag != before.Iflag || after.Oflag != before.Oflag {
		t.Errorf("local terminal not restored: lflag %#x → %#x", before.Lflag, after.Lflag)
	}
}

// TestCLITerminalPiped: without a local terminal, `sandbox shell` and
// `exec -t` still run on a remote one, reading piped input.
func TestCLITerminalPiped(t *testing.T) {
	s := startAPI(t, serverOpts{})
	id := s.create(s.key, map[string]any{"template": "debian-12"})
	run := func(stdin string, args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(filepath.Join(binDir, "orkestr"), args...)
		cmd.Env = append(os.Environ(), "ORKESTR_API_KEY="+s.key, "ORKESTR_BASE_URL="+s.url)
		cmd.Stdin = strings.NewReader(stdin)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), code
	}
	out, code := run("echo hi-$((1+1)); exit 4\n", "sandbox", "shell", id)
	if code != 4 || !strings.Contains(out, "hi-2") {
		t.Errorf("shell: %d %q", code, out)
	}
	// Each word after -- reaches the program as written.
	out, code = run("", "sandbox", "exec", "-t", id, "--", "printf", "%s|", "a b", "$HOME", "it's")
	if code != 0 || out != "a b|$HOME|it's|" {
		t.Errorf("exec -t words: %d %q", code, out)
	}
	out, code = run("", "sandbox", "exec", "-it", id, "--", "exit 3")
	if code != 3 {
		t.Errorf("exec -it 'exit 3': %d %q", code, out)
	}
	out, code = run("id -u; echo $HOME; exit 6\n", "sandbox", "shell", "--user", "user", id)
	if code != 6 || !strings.Contains(out, "1000") || !strings.Contains(out, "/home/user") {
		t.Errorf("shell --user user: %d %q", code, out)
	}
	out, code = run("", "sandbox", "exec", "-it", "--user", "user", id, "--", "id -u")
	if code != 0 || strings.TrimSpace(out) != "1000" {
		t.Errorf("exec -it --user user: %d %q", code, out)
	}
	out, code = run("", "sandbox", "exec", "-it", "sbx_01JZZZZZZZZZZZZZZZZZZZZZZZ", "--", "true")
	if code != 125 || !strings.Contains(out, "sandbox_not_found") {
		t.Errorf("unknown sandbox: %d %q", code, out)
	}
}

// TestTerminalAsUser: a terminal may run as user (uid 1000): its login
// shell, HOME and permissions are that user's, and it owns its terminal.
func TestTerminalAsUser(t *testing.T) {
	s := startAPI(t, serverOpts{})
	c := sdkClient(t, s, s.key)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sbx, err := c.CreateSandbox(ctx, orkestr.CreateParams{Template: "debian-12"})
	if err != nil {
		t.Fatal(err)
	}
	defer sbx.Terminate(context.Background())
	if res, err := sbx.Exec(ctx, "echo secret >/root/only-root && chmod 600 /root/only-root", orkestr.ExecOptions{}); err != nil || res.ExitCode != 0 {
		t.Fatalf("setup: %+v %v", res, err)
	}
	read := func(o orkestr.TerminalOptions, input string) (string, int) {
		t.Helper()
		term, err := sbx.Terminal(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		defer term.Close()
		if input != "" {
			if _, err := term.Write([]byte(input)); err != nil {
				t.Fatal(err)
			}
		}
		out, err := io.ReadAll(term)
		if err != nil {
			t.Fatalf("reading: %v (%q)", err, out)
		}
		ex := term.Exit()
		if ex == nil {
			t.Fatalf("no exit status (%q)", out)
		}
		return string(out), ex.ExitCode
	}
	const probe = `echo "id=$(id -u):$(id -g) home=$HOME tty=$(stat -c %u "$(tty)")"; cat /root/only-root || echo cannot-read`
	out, code := read(orkestr.TerminalOptions{Command: probe, User: orkestr.UserUser}, "")
	if code != 0 || !strings.Contains(out, "id=1000:1000 home=/home/user tty=1000\r\n") || !strings.Contains(out, "cannot-read") || strings.Contains(out, "secret") {
		t.Errorf("user terminal: %d %q", code, out)
	}
	out, code = read(orkestr.TerminalOptions{Command: probe}, "")
	if code != 0 || !strings.Contains(out, "id=0:0 home=/root tty=0\r\n") || !strings.Contains(out, "secret") {
		t.Errorf("root terminal: %d %q", code, out)
	}
	// The login shell is the user's: it prints who it is and exits.
	out, code = read(orkestr.TerminalOptions{User: orkestr.UserUser}, "echo \"me=$(id -un) in=$HOME sh=$0\"; exit 5\r")
	if code != 5 || !strings.Contains(out, "me=user in=/home/user sh=/bin/bash\r\n") || !strings.Contains(out, "user@") {
		t.Errorf("user login shell: %d %q", code, out)
	}
	// The Go SDK's files as user: the user's permissions, the user's files.
	uf := sbx.FilesAs(orkestr.UserUser)
	var apiErr *orkestr.Error
	if _, err := uf.Read(ctx, "/root/only-root"); !errors.As(err, &apiErr) || apiErr.Code != "permission_denied" {
		t.Errorf("SDK read /root as user: %v", err)
	}
	if err := uf.Write(ctx, "/home/user/sdk/f.txt", "mine"); err != nil {
		t.Fatal(err)
	}
	if st, err := uf.Stat(ctx, "/home/user/sdk/f.txt", orkestr.FileOptions{}); err != nil || st.UID != 1000 || st.Size != 4 {
		t.Errorf("SDK stat of the user's file: %+v %v", st, err)
	}
	if ents, err := uf.List(ctx, "/home/user/sdk"); err != nil || len(ents) != 1 || ents[0].Name != "f.txt" {
		t.Errorf("SDK list as user: %+v %v", ents, err)
	}
	if err := uf.Delete(ctx, "/root/only-root"); !errors.As(err, &apiErr) || apiErr.Code != "permission_denied" {
		t.Errorf("SDK delete /root as user: %v", err)
	}
	if _, err := uf.OpenArchive(ctx, "/home/user", ""); err == nil {
		t.Error("archive as user was not refused")
	}
	// Refusals: an unknown user name, a directory the user cannot enter.
	if _, err := sbx.Terminal(ctx, orkestr.TerminalOptions{User: "admin"}); !errors.As(err, &apiErr) || apiErr.Code != "invalid_request" || apiErr.Details["field"] != "user" {
		t.Errorf("user admin: %v", err)
	}
	if _, err := sbx.Terminal(ctx, orkestr.TerminalOptions{User: orkestr.UserUser, Cwd: "/root"}); !errors.As(err, &apiErr) || apiErr.Code != "invalid_request" || !strings.Contains(apiErr.Message, "working directory") {
		t.Errorf("user in /root: %v", err)
	}
}
