package main

import (
	"errors"
	"flag"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

// shellCommand is `sandbox shell ID`: root's login shell on a terminal.
func shellCommand() *command {
	return &command{
		name: "shell", synopsis: "[--user user] [--cwd DIR] [--env K=V]... ID", min: 1, max: 1,
		summary: "Open an interactive login shell in the sandbox, as `docker exec -it ID bash` would:\n" +
			"the local terminal is put in raw mode, its size follows the window, Ctrl-C goes to the\n" +
			"remote side, and orkestr exits with the shell's exit status.",
		flags: func(fs *flag.FlagSet) action {
			env := kvFlag{}
			cwd := fs.String("cwd", "", "working directory (default /workspace)")
			fs.Var(env, "env", "`K=V` environment variable (repeatable)")
			user := fs.String("user", "", "run as root (default) or user (uid 1000, home /home/user)")
			return func(c *cli, args []string) error {
				return runTerminal(c, c.client.Sandbox(args[0]), orkestr.TerminalOptions{Env: env.orNil(), Cwd: *cwd, User: *user})
			}
		},
	}
}

// runTerminal runs o's program on a terminal in sb, wired to the local one:
// raw mode while it runs (when stdin is a terminal), the window size
// followed, and the remote exit status returned as this process's.
func runTerminal(c *cli, sb *orkestr.Sandbox, o orkestr.TerminalOptions) error {
	in, _ := c.stdin.(*os.File)
	out, _ := c.stdout.(*os.File)
	sizeOf := func() (int, int, bool) {
		for _, f := range []*os.File{out, in} {
			if f != nil && term.IsTerminal(int(f.Fd())) {
				if cols, rows, err := term.GetSize(int(f.Fd())); err == nil && rows > 0 && cols > 0 {
					return min(rows, 1000), min(cols, 1000), true
				}
			}
		}
		return 0, 0, false
	}
	if rows, cols, ok := sizeOf(); ok {
		o.Rows, o.Cols = rows, cols
	}
	if o.Env == nil {
		o.Env = map[string]string{}
	}
	if _, set := o.Env["TERM"]; !set {
		if t := os.Getenv("TERM"); t != "" && t != "dumb" {
			o.Env["TERM"] = t
		}
	}
	t, err := sb.Terminal(c.ctx, o)
	if err != nil {
		c.printError(err)
		return exitCode(exitExecFailed)
	}
	defer t.Close()

	if in != nil && term.IsTerminal(int(in.Fd())) {
		state, err := term.MakeRaw(int(in.Fd()))
		if err == nil {
			defer func() { _ = term.Restore(int(in.Fd()), state) }()
		}
	}
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	stopWinch := make(chan struct{})
	defer close(stopWinch)
	go func() {
		for {
			select {
			case <-winch:
				if rows, cols, ok := sizeOf(); ok {
					_ = t.Resize(rows, cols)
				}
			case <-stopWinch:
				return
			}
		}
	}()
	// Typed bytes go out as they come; the end of a piped stdin sends
	// nothing (the program decides when it is done, as with docker exec).
	go func() { _, _ = io.Copy(t, c.stdin) }()

	_, err = io.Copy(c.stdout, t)
	exit := t.Exit()
	if err != nil || exit == nil {
		if err == nil {
			err = errors.New("orkestr: the terminal ended without an exit status")
		}
		if c.ctx.Err() != nil {
			return exitCode(130)
		}
		c.printError(err)
		return exitCode(exitExecFailed)
	}
	if exit.ExitCode < 0 || exit.ExitCode > 255 {
		return exitCode(255)
	}
	return exitCode(exit.ExitCode)
}

// ttyOpts are exec's docker-style terminal flags: -it (or -t, --tty) runs
// the command on a terminal with standard input attached.
type ttyOpts struct{ it, t, i *bool }

func ttyFlags(fs *flag.FlagSet) ttyOpts {
	o := ttyOpts{
		it: fs.Bool("it", false, "run on an interactive terminal, as docker exec -it (same as -t)"),
		t:  fs.Bool("t", false, "run on an interactive terminal (raw mode, window size, Ctrl-C to the command)"),
		i:  fs.Bool("i", false, "with -t: attach standard input (always on with a terminal)"),
	}
	fs.BoolVar(o.t, "tty", false, "same as -t")
	return o
}

func (o ttyOpts) on() bool { return *o.it || *o.t }
