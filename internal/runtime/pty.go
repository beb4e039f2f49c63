package runtime

import (
	"context"
	"io"
	"syscall"
)

// TerminalRequest describes a program to run on a terminal in a sandbox.
type TerminalRequest struct {
	Command    string // run by /bin/sh -c; "" for the user's login shell
	Env        map[string]string
	Cwd        string // "" for /workspace
	Rows, Cols int    // 0 for 24×80
	User       string // UserRoot (default) or UserUser
}

// Terminal is an open terminal session. Write sends typed bytes; Output
// copies everything the terminal shows to w until the program exits and
// returns its status; Close hangs up, killing the program and all it
// started.
type Terminal interface {
	io.Writer
	PID() int
	Resize(rows, cols int) error
	Signal(sig syscall.Signal) error
	Output(w io.Writer) (ExecResult, error)
	Close() error
}

// TerminalOpener is implemented by sandboxes that can run programs on a
// terminal.
type TerminalOpener interface {
	OpenTerminal(ctx context.Context, r TerminalRequest) (Terminal, error)
}
