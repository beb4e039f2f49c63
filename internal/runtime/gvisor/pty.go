package gvisor

import (
	"context"
	"io"
	"time"

	"github.com/orkestr-eu/orkestr/internal/agent/client"
	"github.com/orkestr-eu/orkestr/internal/agent/wire"
	"github.com/orkestr-eu/orkestr/internal/runtime"
)

var _ runtime.TerminalOpener = (*sandbox)(nil)

// OpenTerminal starts a program on a terminal in the sandbox. The session
// is not an operation a pause waits for: a pause ends it (the program is
// killed when the restored agent finds its host connection gone).
func (sb *sandbox) OpenTerminal(ctx context.Context, r runtime.TerminalRequest) (runtime.Terminal, error) {
	if err := sb.begin(); err != nil {
		return nil, err
	}
	defer sb.end()
	t, err := sb.ch.OpenTerminal(ctx, wire.Pty{Command: r.Command, Env: r.Env, Cwd: r.Cwd, Rows: r.Rows, Cols: r.Cols, User: r.User})
	if err != nil {
		return nil, sb.mapErr(err)
	}
	return &terminal{Terminal: t, sb: sb}, nil
}

type terminal struct {
	*client.Terminal
	sb *sandbox
}

func (t *terminal) Write(p []byte) (int, error) {
	n, err := t.Terminal.Write(p)
	return n, t.sb.mapErr(err)
}

func (t *terminal) Resize(rows, cols int) error { return t.sb.mapErr(t.Terminal.Resize(rows, cols)) }

func (t *terminal) Output(w io.Writer) (runtime.ExecResult, error) {
	st, err := t.Terminal.Output(w)
	if err != nil {
		return runtime.ExecResult{}, t.sb.mapErr(err)
	}
	return runtime.ExecResult{ExitCode: st.ExitCode, Signal: st.Signal, Duration: time.Duration(st.DurationMS) * time.Millisecond}, nil
}
