package agent

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// ptyInputLimit bounds the typed bytes held for a program that does not
// read its terminal. The stream is read on regardless, so a hang-up or a
// resize is never stuck behind input; beyond the limit input is dropped,
// as a real terminal's full input queue does.
const ptyInputLimit = 1 << 20

// ptyDrain bounds how long output is still read after the program and
// everything left in its cgroup were killed: a process that escaped the
// cgroup may hold the terminal open.
const ptyDrain = 2 * time.Second

// pty serves one terminal session on st (see wire.OpPty). The stream is
// never reused afterwards.
func (a *Agent) pty(st net.Conn, r *wire.Reader, w *wire.Writer) {
	var spec wire.Pty
	if err := r.ExpectJSON(&spec); err != nil {
		_ = w.Err(wire.CodeBadRequest, "malformed terminal request: "+err.Error())
		return
	}
	if msg := checkPty(&spec); msg != "" {
		_ = w.Err(wire.CodeBadRequest, msg)
		return
	}
	u, err := lookupUser(spec.User)
	if err != nil {
		sendStartErr(w, err)
		return
	}
	cwd := spec.Cwd
	if cwd == "" {
		cwd = "/workspace"
	}
	if fi, err := os.Stat(cwd); err != nil || !fi.IsDir() {
		_ = w.Err(wire.CodeNotFound, fmt.Sprintf("working directory %s does not exist or is not a directory", cwd))
		return
	}
	master, slave, err := openPty()
	if err != nil {
		_ = w.Err(wire.CodeInternal, "open a terminal: "+err.Error())
		return
	}
	defer master.Close()
	if err := setSize(master, spec.Rows, spec.Cols); err != nil {
		slave.Close()
		_ = w.Err(wire.CodeInternal, "set the terminal size: "+err.Error())
		return
	}
	// The terminal is the user's, as login(1) makes it.
	if !u.isRoot() {
		_ = slave.Chown(int(u.uid), int(u.gid))
	}
	env := a.envMapFor(spec.Env, u)
	if _, ok := spec.Env["TERM"]; !ok {
		env["TERM"] = "xterm-256color"
	}
	// The program waits on fd 3 until it is in a cgroup of its own, so
	// everything it ever starts can be killed with the session.
	gateR, gateW, err := os.Pipe()
	if err != nil {
		slave.Close()
		_ = w.Err(wire.CodeInternal, err.Error())
		return
	}
	body := spec.Command
	if body == "" {
		body = "exec " + shellQuote(loginShell(u.uid)) + " -l"
	}
	argv := []string{"/bin/sh", "-c", a.groups.tasksUlimit() + "read -r _ <&3; exec 3<&-; " + body}
	pid, exited, err := a.reaper.start("/bin/sh", argv, &os.ProcAttr{
		Dir: cwd, Env: environ(env), Files: []*os.File{slave, slave, slave, gateR},
		Sys: &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Credential: u.credential()},
	})
	slave.Close()
	gateR.Close()
	if err != nil {
		gateW.Close()
		sendStartErr(w, fmt.Errorf("start the terminal's program: %w", err))
		return
	}
	start := time.Now()
	cgroup := a.groups.join(pid)
	_, _ = gateW.Write([]byte("\n"))
	gateW.Close()

	var wmu sync.Mutex
	send := func(k wire.Kind, b []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		return w.Frame(k, b)
	}
	if err := send(wire.KindJSON, mustJSON(wire.PtyStarted{PID: pid})); err != nil {
		killTree(pid)
		killGroup(cgroup)
		<-exited
		return
	}

	// Output: read only as fast as the host takes it, so a peer that does
	// not read stalls the program instead of filling memory.
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		buf := make([]byte, 32<<10)
		for {
			n, err := master.Read(buf)
			if n > 0 && send(wire.KindStdout, buf[:n]) != nil {
				return
			}
			if err != nil {
				return
			}
		}
	}()

	in := newPtyInput(master)
	defer in.stop()
	defer func() {
		in.mu.Lock()
		dropped := in.dropped
		in.mu.Unlock()
		if dropped > 0 && a.Log != nil {
			a.Log.Debug("terminal input the program did not read was dropped", "pid", pid, "bytes", dropped)
		}
	}()
	hostGone := make(chan struct{})
	go func() {
		defer close(hostGone)
		for {
			k, b, err := r.Next()
			if err != nil {
				return
			}
			switch k {
			case wire.KindStdin:
				in.put(b)
			case wire.KindJSON:
				var rs wire.PtyResize
				if json.Unmarshal(b, &rs) == nil && rs.Rows > 0 && rs.Cols > 0 && rs.Rows <= wire.MaxPtyDim && rs.Cols <= wire.MaxPtyDim {
					_ = setSize(master, rs.Rows, rs.Cols)
				}
			case wire.KindSignal:
				if len(b) == 1 {
					// To the terminal's foreground job, as a key would.
					pg, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPGRP)
					if err != nil || pg <= 1 {
						pg = pid
					}
					_ = unix.Kill(-pg, unix.Signal(b[0]))
				}
			case wire.KindDone:
				return
			}
		}
	}()

	var ws unix.WaitStatus
	hungUp := false
	select {
	case ws = <-exited:
	case <-hostGone:
		hungUp = true
		killTree(pid)
		ws = <-exited
	}
	// What the program left running goes with the session.
	killGroup(cgroup)
	select {
	case <-outDone:
	case <-hostGone:
	case <-time.After(ptyDrain):
	}
	_ = master.SetReadDeadline(time.Now())
	if !hungUp {
		select {
		case <-outDone:
		case <-hostGone:
			hungUp = true
		}
	}
	if hungUp {
		// Unblock an output write the host will never take.
		_ = st.SetDeadline(time.Now())
		<-outDone
		return
	}
	es := wire.ExitStatus{DurationMS: time.Since(start).Milliseconds()}
	switch {
	case ws.Exited():
		es.ExitCode = ws.ExitStatus()
	case ws.Signaled():
		es.Signal = int(ws.Signal())
		es.ExitCode = 128 + int(ws.Signal())
	default:
		es.ExitCode = -1
	}
	if send(wire.KindExit, mustJSON(es)) != nil {
		return
	}
	// The host closes the stream (or says done) once it has the status.
	select {
	case <-hostGone:
	case <-time.After(10 * time.Second):
	}
}

// checkPty validates a terminal request and fills in the default size; it
// returns what is wrong, or "".
func checkPty(p *wire.Pty) string {
	for k, v := range p.Env {
		if err := validEnvKey(k); err != nil {
			return err.Error()
		}
		if strings.ContainsRune(v, 0) {
			return fmt.Sprintf("environment variable %s contains NUL", k)
		}
	}
	if strings.ContainsRune(p.Command, 0) {
		return "command contains NUL"
	}
	if p.Rows == 0 {
		p.Rows = wire.DefaultPtyRows
	}
	if p.Cols == 0 {
		p.Cols = wire.DefaultPtyCols
	}
	if p.Rows < 1 || p.Cols < 1 || p.Rows > wire.MaxPtyDim || p.Cols > wire.MaxPtyDim {
		return fmt.Sprintf("terminal size %dx%d is out of range (1 to %d rows and columns)", p.Rows, p.Cols, wire.MaxPtyDim)
	}
	return ""
}

// openPty opens a new pseudo-terminal pair. The master is non-blocking so
// reads can be given a deadline.
func openPty() (master, slave *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("pty number: %w", err)
	}
	name := "/dev/pts/" + strconv.Itoa(n)
	sfd, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("open %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), os.NewFile(uintptr(sfd), name), nil
}

func setSize(master *os.File, rows, cols int) error {
	return unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(rows), Col: uint16(cols)})
}

// loginShell is uid's shell from /etc/passwd when it is there and
// executable, else /bin/sh.
func loginShell(uid uint32) string {
	want := strconv.FormatUint(uint64(uid), 10)
	f, err := os.Open("/etc/passwd")
	if err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Split(sc.Text(), ":")
			if len(fs) == 7 && fs[2] == want {
				if fi, err := os.Stat(fs[6]); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
					return fs[6]
				}
				break
			}
		}
	}
	return "/bin/sh"
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// ptyInput writes typed bytes to the terminal from a goroutine of its own,
// holding at most ptyInputLimit bytes the program has not read yet: the
// bytes queued plus the ones being written. Two buffers take turns, so a
// flood makes no garbage.
type ptyInput struct {
	master   *os.File
	mu       sync.Mutex
	buf      []byte // queued
	spare    []byte // the other buffer, while not being written
	inflight int    // bytes of the write in progress
	dropped  int64
	wake     chan struct{}
	done     chan struct{}
	once     sync.Once
}

func newPtyInput(master *os.File) *ptyInput {
	in := &ptyInput{master: master, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go in.run()
	return in
}

func (in *ptyInput) put(b []byte) {
	in.mu.Lock()
	room := max(ptyInputLimit-len(in.buf)-in.inflight, 0)
	in.buf = append(in.buf, b[:min(len(b), room)]...)
	in.dropped += int64(len(b) - min(len(b), room))
	in.mu.Unlock()
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

func (in *ptyInput) run() {
	for {
		select {
		case <-in.done:
			return
		case <-in.wake:
		}
		for {
			in.mu.Lock()
			chunk := in.buf
			in.buf, in.spare = in.spare[:0], nil
			in.inflight = len(chunk)
			in.mu.Unlock()
			if len(chunk) == 0 {
				in.mu.Lock()
				in.spare = chunk
				in.mu.Unlock()
				break
			}
			_, err := in.master.Write(chunk)
			in.mu.Lock()
			in.spare, in.inflight = chunk[:0], 0
			in.mu.Unlock()
			if err != nil {
				return // closed, or stopped by the deadline
			}
		}
	}
}

// stop ends the writer; a write blocked on a full terminal is woken by the
// deadline.
func (in *ptyInput) stop() {
	in.once.Do(func() {
		close(in.done)
		_ = in.master.SetWriteDeadline(time.Now())
	})
}
