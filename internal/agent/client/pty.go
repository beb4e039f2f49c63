package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"syscall"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// Terminal is one open terminal session in the sandbox (wire.OpPty). Write,
// Resize and Signal may be called from any goroutine while one goroutine
// runs Output. Close hangs up: the agent kills the program and everything
// it started.
type Terminal struct {
	ctx  context.Context
	c    *Channel
	r    *wire.Reader
	w    *wire.Writer
	wmu  sync.Mutex
	end  func(bool)
	once sync.Once
	pid  int
}

// OpenTerminal starts p's program on a new terminal and returns once it
// runs. A wire.Error means it never started (e.g. a missing working
// directory). Ending ctx hangs up.
func (c *Channel) OpenTerminal(ctx context.Context, p wire.Pty) (*Terminal, error) {
	r, w, end, err := c.stream(ctx, &wire.Request{Op: wire.OpPty})
	if err != nil {
		return nil, err
	}
	if err := w.JSON(wire.KindJSON, p); err != nil {
		end(false)
		return nil, c.wrap(ctx, err)
	}
	var started wire.PtyStarted
	if err := r.ExpectJSON(&started); err != nil {
		end(false)
		return nil, c.wrap(ctx, err)
	}
	return &Terminal{ctx: ctx, c: c, r: r, w: w, end: end, pid: started.PID}, nil
}

// PID is the program's pid inside the sandbox.
func (t *Terminal) PID() int { return t.pid }

func (t *Terminal) frame(k wire.Kind, b []byte) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	return t.c.wrap(t.ctx, t.w.Frame(k, b))
}

// Write sends typed bytes to the terminal. It blocks while the agent holds
// as much as the stream's window allows.
func (t *Terminal) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), wire.ChunkSize)]
		if err := t.frame(wire.KindStdin, chunk); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// Resize changes the terminal's size; the program gets SIGWINCH.
func (t *Terminal) Resize(rows, cols int) error {
	if rows < 1 || cols < 1 || rows > wire.MaxPtyDim || cols > wire.MaxPtyDim {
		return &wire.Error{Code: wire.CodeBadRequest, Message: fmt.Sprintf("terminal size %dx%d is out of range (1 to %d rows and columns)", rows, cols, wire.MaxPtyDim)}
	}
	b, _ := json.Marshal(wire.PtyResize{Rows: rows, Cols: cols})
	return t.frame(wire.KindJSON, b)
}

// Signal sends sig to the terminal's foreground job.
func (t *Terminal) Signal(sig syscall.Signal) error {
	return t.frame(wire.KindSignal, []byte{byte(sig)})
}

// Output copies the terminal's output to dst, byte for byte, until the
// program exits, and returns its status. dst is written from this
// goroutine only, as fast as it takes the bytes: a slow dst slows the
// program down rather than filling memory.
func (t *Terminal) Output(dst io.Writer) (wire.ExitStatus, error) {
	for {
		k, b, err := next(t.ctx, t.r)
		if err != nil {
			return wire.ExitStatus{}, t.c.wrap(t.ctx, err)
		}
		switch k {
		case wire.KindStdout:
			if _, err := dst.Write(b); err != nil {
				return wire.ExitStatus{}, fmt.Errorf("writing terminal output: %w", err)
			}
		case wire.KindExit:
			var es wire.ExitStatus
			if err := json.Unmarshal(b, &es); err != nil {
				return wire.ExitStatus{}, err
			}
			return es, nil
		case wire.KindError:
			return wire.ExitStatus{}, wire.DecodeError(b)
		default:
			return wire.ExitStatus{}, fmt.Errorf("agent sent unexpected frame %q", k)
		}
	}
}

// Close ends the session; if the program still runs, it is killed with
// everything it started.
func (t *Terminal) Close() error {
	t.once.Do(func() { t.end(false) })
	return nil
}
