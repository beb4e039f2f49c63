package fake

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

var _ runtime.TerminalOpener = (*Sandbox)(nil)

// OpenTerminal implements runtime.TerminalOpener. The program is
// interpreted as Exec's are; "" is a login shell that reads a command line
// at a time after a "$ " prompt. The terminal echoes what is typed, turns
// a typed \r into \n and a written \n into \r\n, as a tty in its default
// mode does; it draws nothing.
func (sb *Sandbox) OpenTerminal(ctx context.Context, r runtime.TerminalRequest) (runtime.Terminal, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := sb.begin(); err != nil {
		return nil, err
	}
	rows, cols, err := termSize(r.Rows, r.Cols)
	if err != nil {
		return nil, err
	}
	sh, cmds, err := sb.prepare(r.Command, r.Env, r.Cwd, r.User)
	if err != nil {
		return nil, err
	}
	sb.mu.Lock()
	sb.st.NextPID++
	pid := sb.st.NextPID
	sb.mu.Unlock()
	t := &terminal{sb: sb, pid: pid, rows: rows, cols: cols, in: newInbuf(1<<20, true), done: make(chan struct{})}
	t.cond = sync.NewCond(&t.mu)
	t.k = newKiller(t.in)
	sh.stdin, sh.stdout, sh.stderr = t.in, crlf{t}, crlf{t}
	sh.killed, sh.sig = t.k.ch, t.k.signal
	id := sb.track(t.k.kill)
	start := time.Now()
	go func() {
		defer sb.untrack(id)
		var st status
		if strings.TrimSpace(r.Command) == "" {
			st = sh.interactive()
		} else {
			st = sh.run(cmds, 0, nil)
		}
		t.in.kill(errKilled)
		sb.mu.Lock()
		stopErr := sb.stopErr
		sb.mu.Unlock()
		t.mu.Lock()
		t.res = runtime.ExecResult{ExitCode: st.Code, Signal: st.Signal, Duration: time.Since(start), Blocked: []runtime.BlockedConnection{}}
		t.err = stopErr
		t.ended = true
		t.cond.Broadcast()
		t.mu.Unlock()
		close(t.done)
	}()
	return t, nil
}

func termSize(rows, cols int) (int, int, error) {
	if rows == 0 {
		rows = 24
	}
	if cols == 0 {
		cols = 80
	}
	if rows < 1 || cols < 1 || rows > 1000 || cols > 1000 {
		return 0, 0, fmt.Errorf("%w: a terminal of %d×%d (1 to 1000 each)", runtime.ErrInvalidRequest, rows, cols)
	}
	return rows, cols, nil
}

// interactive is a login shell: a prompt, a line, its commands, until exit
// or the end of input.
func (sh *shell) interactive() status {
	st := status{}
	for {
		_, _ = io.WriteString(sh.stdout, "$ ")
		line, err := readLine(sh.stdin)
		if sh.isKilled() {
			return sh.killStatus()
		}
		if line != "" {
			cmds, perr := parse(line)
			if perr != nil {
				fmt.Fprintf(sh.stderr, "sh: 1: Syntax error: %v\n", perr)
				sh.last = 2
			} else if st = sh.run(cmds, 0, nil); sh.exited || st.Signal != 0 {
				return st
			}
		}
		if err != nil {
			return status{Code: sh.last}
		}
	}
}

// terminal is an open terminal session of the fake.
type terminal struct {
	sb         *Sandbox
	pid        int
	in         *inbuf
	k          *killer
	done       chan struct{}
	mu         sync.Mutex
	cond       *sync.Cond
	out        []byte
	ended      bool
	res        runtime.ExecResult
	err        error
	rows, cols int
}

// show appends to what the terminal shows.
func (t *terminal) show(p []byte) {
	t.mu.Lock()
	t.out = append(t.out, p...)
	t.cond.Broadcast()
	t.mu.Unlock()
}

// crlf is a program's output as the terminal shows it.
type crlf struct{ t *terminal }

func (c crlf) Write(p []byte) (int, error) {
	c.t.show([]byte(strings.ReplaceAll(string(p), "\n", "\r\n")))
	return len(p), nil
}

func (t *terminal) PID() int { return t.pid }

// Write types p: echoed, with \r read as \n.
func (t *terminal) Write(p []byte) (int, error) {
	if err := t.sb.begin(); err != nil {
		return 0, err
	}
	select {
	case <-t.done:
		return 0, fmt.Errorf("%w: the terminal's program has ended", runtime.ErrNoProcess)
	default:
	}
	typed := strings.ReplaceAll(string(p), "\r", "\n")
	t.show([]byte(strings.ReplaceAll(typed, "\n", "\r\n")))
	if _, err := t.in.Write([]byte(typed)); err != nil {
		return 0, fmt.Errorf("%w: the terminal's program has ended", runtime.ErrNoProcess)
	}
	return len(p), nil
}

func (t *terminal) Resize(rows, cols int) error {
	rows, cols, err := termSize(rows, cols)
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.rows, t.cols = rows, cols
	t.mu.Unlock()
	return nil
}

func (t *terminal) Signal(sig syscall.Signal) error {
	if sig == syscall.SIGWINCH || sig == syscall.SIGCHLD || sig == syscall.SIGURG {
		return nil
	}
	t.k.kill(int(sig))
	return nil
}

// Output copies what the terminal shows to w until the program ends.
func (t *terminal) Output(w io.Writer) (runtime.ExecResult, error) {
	sent := 0
	for {
		t.mu.Lock()
		for len(t.out) == sent && !t.ended {
			t.cond.Wait()
		}
		chunk, ended, res, err := t.out[sent:], t.ended, t.res, t.err
		sent = len(t.out)
		t.mu.Unlock()
		if len(chunk) > 0 {
			if _, werr := w.Write(chunk); werr != nil {
				return runtime.ExecResult{}, werr
			}
			continue
		}
		if ended {
			return res, err
		}
	}
}

// Close hangs up: the program is killed.
func (t *terminal) Close() error {
	t.k.kill(int(syscall.SIGHUP))
	<-t.done
	return nil
}
