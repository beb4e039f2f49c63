package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

func sandboxCommands() []*command {
	return []*command{
		{
			name: "create", synopsis: "--template NAME [flags]", summary: "Start a sandbox and print it.",
			flags: func(fs *flag.FlagSet) action {
				var p orkestr.CreateParams
				env, md := kvFlag{}, kvFlag{}
				fs.StringVar(&p.Template, "template", "", "template (see `orkestr templates`); required")
				fs.StringVar(&p.Size, "size", "", "small | medium | large (default small; plan-capped)")
				fs.StringVar(&p.Network, "network", "", "off | restricted | open (default off)")
				fs.IntVar(&p.TimeoutSeconds, "timeout", 0, "seconds of running time until auto-termination (default 600)")
				fs.Var(env, "env", "`K=V` environment variable of the sandbox (repeatable)")
				fs.Var(md, "metadata", "`K=V` metadata (repeatable)")
				fs.StringVar(&p.Region, "region", "", "region, e.g. fsn1 (default automatic)")
				return func(c *cli, _ []string) error {
					if p.Template == "" {
						return usagef("--template is required")
					}
					p.Env, p.Metadata = env.orNil(), md.orNil()
					sb, err := c.client.CreateSandbox(c.ctx, p)
					if err != nil {
						return err
					}
					return c.print(sb, func(w io.Writer) { printSandbox(w, sb) })
				}
			},
		},
		{
			name: "ls", summary: "List the account's sandboxes, newest first.",
			flags: func(fs *flag.FlagSet) action {
				status := fs.String("status", "", "only this status: starting | running | paused | terminated | error")
				limit := fs.Int("limit", 0, "show at most this many (default all)")
				return func(c *cli, _ []string) error {
					list := []*orkestr.Sandbox{}
					for sb, err := range c.client.ListSandboxes(c.ctx, orkestr.ListParams{Status: orkestr.SandboxStatus(*status)}) {
						if err != nil {
							return err
						}
						list = append(list, sb)
						if *limit > 0 && len(list) >= *limit {
							break
						}
					}
					return c.print(list, func(w io.Writer) {
						fmt.Fprintln(w, "ID\tSTATUS\tTEMPLATE\tSIZE\tREGION\tCREATED\tEXPIRES")
						for _, sb := range list {
							fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", sb.ID, sb.Status, sb.Template, sb.Size, sb.Region,
								fmtTime(&sb.CreatedAt), fmtTime(sb.ExpiresAt))
						}
					})
				}
			},
		},
		shellCommand(),
		oneSandbox("get", "Print a sandbox.", func(c *cli, sb *orkestr.Sandbox) error {
			if err := sb.Refresh(c.ctx); err != nil {
				return err
			}
			return c.print(sb, func(w io.Writer) { printSandbox(w, sb) })
		}),
		oneSandbox("pause", "Snapshot a sandbox and stop its clock; resume it later.", func(c *cli, sb *orkestr.Sandbox) error {
			res, err := sb.Pause(c.ctx)
			if err != nil {
				return err
			}
			return c.print(res, func(w io.Writer) {
				fmt.Fprintf(w, "paused %s (snapshot of %s)\n", res.ID, fmtBytes(res.SnapshotBytes))
			})
		}),
		oneSandbox("resume", "Restore a paused sandbox and print it.", func(c *cli, sb *orkestr.Sandbox) error {
			if err := sb.Resume(c.ctx); err != nil {
				return err
			}
			return c.print(sb, func(w io.Writer) { printSandbox(w, sb) })
		}),
		{
			name: "fork", synopsis: "[-n N] ID", min: 1, max: 1,
			summary: "Make N running clones of a running or paused sandbox (same memory, processes,\n" +
				"files, env and metadata; each its own id and network identity) and print them.\n" +
				"All or nothing: if the plan's concurrency cannot take N more, none is made.",
			flags: func(fs *flag.FlagSet) action {
				n := fs.Int("n", 1, "how many clones (1 to the plan's max_fork, see `orkestr limits`)")
				return func(c *cli, args []string) error {
					if *n < 1 {
						return usagef("-n must be at least 1")
					}
					clones, err := c.client.Sandbox(args[0]).Fork(c.ctx, *n)
					if err != nil {
						return err
					}
					return c.print(clones, func(w io.Writer) {
						for _, sb := range clones {
							fmt.Fprintln(w, sb.ID)
						}
					})
				}
			},
		},
		oneSandbox("rm", "Terminate a sandbox.", func(c *cli, sb *orkestr.Sandbox) error {
			if err := sb.Terminate(c.ctx); err != nil {
				return err
			}
			return c.print(sb, func(w io.Writer) { fmt.Fprintf(w, "terminated %s\n", sb.ID) })
		}),
		{
			name: "exec", synopsis: "[flags] ID [--] COMMAND [ARG]...", min: 2, max: -1, stopAt: 1,
			summary: "Run COMMAND in the sandbox, streaming its output, and exit with its exit status.\n" +
				"With ARGs, each word is one argument, as written (shell-quoted for /bin/sh -c):\n" +
				"  -- python3 -c 'print(2**100)'   -- echo '$HOME' \"a b\"   (prints $HOME a b)\n" +
				"A single COMMAND word is a shell command line: -- 'echo $HOME; ls | wc -l'.\n" +
				"Flags go before ID. With --json the output is collected and printed as one JSON result.",
			flags: func(fs *flag.FlagSet) action {
				var o orkestr.ExecOptions
				env := kvFlag{}
				fs.IntVar(&o.TimeoutSeconds, "timeout", 0, "seconds until the command is killed (default 60)")
				fs.Var(env, "env", "`K=V` environment variable for the command (repeatable)")
				fs.StringVar(&o.Cwd, "cwd", "", "working directory (default /workspace)")
				fs.StringVar(&o.User, "user", "", "run as root (default) or user (uid 1000, home /home/user)")
				stdin := fs.Bool("stdin", false, "send standard input (UTF-8, up to 1 MiB) to the command")
				tty := ttyFlags(fs)
				detach := fs.Bool("detach", false, "start the command in the background and print its pid (see sandbox ps, logs, kill)")
				return func(c *cli, args []string) error {
					o.Env = env.orNil()
					if *tty.i && !tty.on() {
						*stdin = true
					}
					if tty.on() && c.json {
						return usagef("--json cannot be combined with a terminal (-t, -it)")
					}
					if tty.on() && *detach {
						return usagef("--detach cannot be combined with a terminal (-t, -it)")
					}
					if tty.on() {
						return runTerminal(c, c.client.Sandbox(args[0]), orkestr.TerminalOptions{Command: commandLine(args[1:]), Env: o.Env, Cwd: o.Cwd, User: o.User})
					}
					if *detach {
						p, err := c.client.Sandbox(args[0]).StartProcess(c.ctx, commandLine(args[1:]),
							orkestr.ProcessOptions{Env: o.Env, Cwd: o.Cwd, User: o.User})
						if err != nil {
							return err
						}
						return c.print(p, func(w io.Writer) { fmt.Fprintln(w, p.PID) })
					}
					if *stdin {
						o.Stdin = c.stdin
					}
					return execCommand(c, c.client.Sandbox(args[0]), commandLine(args[1:]), o)
				}
			},
		},
	}
}

// processCommands are the verbs on background processes.
func processCommands() []*command {
	return []*command{
		oneSandbox("ps", "List the sandbox's background processes (started with exec --detach).", func(c *cli, sb *orkestr.Sandbox) error {
			list, err := sb.Processes(c.ctx)
			if err != nil {
				return err
			}
			return c.print(list, func(w io.Writer) {
				fmt.Fprintln(w, "PID\tUSER\tSTATUS\tSTARTED\tCOMMAND")
				for _, p := range list {
					status := "running"
					if !p.Running && p.ExitCode != nil {
						status = fmt.Sprintf("exited %d", *p.ExitCode)
					}
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", p.PID, p.User, status, fmtTime(&p.StartedAt), p.Command)
				}
			})
		}),
		{
			name: "logs", synopsis: "ID PID", min: 2, max: 2,
			summary: "Print a background process's output (its last 1 MiB, then as it comes) until it ends;\n" +
				"exit with its exit status. Ctrl-C stops reading; the process goes on.",
			flags: func(fs *flag.FlagSet) action {
				return func(c *cli, args []string) error {
					p, err := processOf(c, args)
					if err != nil {
						return err
					}
					if err := p.Attach(c.ctx, orkestr.AttachOptions{Replay: true, Stdout: c.stdout, Stderr: c.stderr}); err != nil {
						return err
					}
					if p.ExitCode == nil || *p.ExitCode < 0 || *p.ExitCode > 255 {
						return exitCode(255)
					}
					return exitCode(*p.ExitCode)
				}
			},
		},
		{
			name: "kill", synopsis: "[--signal SIG] ID PID", min: 2, max: 2,
			summary: "Send a signal (default TERM) to a background process's group.",
			flags: func(fs *flag.FlagSet) action {
				sig := fs.Int("signal", 15, "signal number (15 TERM, 9 KILL, 2 INT, 1 HUP)")
				return func(c *cli, args []string) error {
					p, err := processOf(c, args)
					if err != nil {
						return err
					}
					return p.SendSignal(c.ctx, syscall.Signal(*sig))
				}
			},
		},
	}
}

func processOf(c *cli, args []string) (*orkestr.Process, error) {
	pid, err := strconv.Atoi(args[1])
	if err != nil || pid < 1 {
		return nil, usagef("PID must be a positive number, not %q", args[1])
	}
	return c.client.Sandbox(args[0]).GetProcess(c.ctx, pid)
}

// commandLine turns the words after ID into the command /bin/sh -c runs.
// One word is a command line for the shell, as written (pipes, variables,
// several commands); several words are an argv, each quoted so that the
// shell passes it on unchanged.
func commandLine(words []string) string {
	if len(words) == 1 {
		return words[0]
	}
	quoted := make([]string, len(words))
	for i, w := range words {
		quoted[i] = shellWord(w)
	}
	return strings.Join(quoted, " ")
}

// shellWord quotes w for a POSIX shell unless it consists only of
// characters no shell treats specially.
func shellWord(w string) string {
	if w != "" && strings.Trim(w, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-") == "" {
		return w
	}
	return "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
}

// execCommand runs the command and turns its end into the exit status.
func execCommand(c *cli, sb *orkestr.Sandbox, command string, o orkestr.ExecOptions) error {
	var res *orkestr.ExecResult
	var err error
	if c.json {
		res, err = sb.Exec(c.ctx, command, o)
		if res != nil {
			if perr := c.print(res, nil); perr != nil {
				return perr
			}
		}
	} else {
		res, err = sb.ExecStreamTo(c.ctx, command, o, c.stdout, c.stderr)
	}
	var timeout *orkestr.ExecTimeoutError
	var npe *orkestr.NetworkPolicyError
	switch {
	case err == nil:
	case errors.As(err, &npe):
		c.printError(err) // the command's own status follows
	case errors.As(err, &timeout):
		c.printError(err)
		return exitCode(exitExecTimeout)
	default:
		c.printError(err)
		return exitCode(exitExecFailed)
	}
	if res.ExitCode < 0 || res.ExitCode > 255 {
		return exitCode(255)
	}
	return exitCode(res.ExitCode)
}

// oneSandbox is a verb on one sandbox ID.
func oneSandbox(name, summary string, do func(c *cli, sb *orkestr.Sandbox) error) *command {
	return &command{
		name: name, synopsis: "ID", summary: summary, min: 1, max: 1,
		flags: func(*flag.FlagSet) action {
			return func(c *cli, args []string) error { return do(c, c.client.Sandbox(args[0])) }
		},
	}
}

func printSandbox(w io.Writer, sb *orkestr.Sandbox) {
	md := make([]string, 0, len(sb.Metadata))
	for k, v := range sb.Metadata {
		md = append(md, k+"="+v)
	}
	sort.Strings(md)
	rows := [][2]string{
		{"id", sb.ID},
		{"status", string(sb.Status)},
		{"template", sb.Template},
		{"size", fmt.Sprintf("%s (%g vCPU, %d MB)", sb.Size, sb.CPU, sb.MemoryMB)},
		{"network", sb.Network},
		{"region", sb.Region},
		{"timeout", fmt.Sprintf("%ds", sb.TimeoutSeconds)},
		{"expires_at", fmtTime(sb.ExpiresAt)},
		{"env_keys", orDash(strings.Join(sb.EnvKeys, ", "))},
		{"metadata", orDash(strings.Join(md, ", "))},
		{"created_at", fmtTime(&sb.CreatedAt)},
		{"paused_at", fmtTime(sb.PausedAt)},
		{"terminated_at", fmtTime(sb.TerminatedAt)},
	}
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s\n", r[0], r[1])
	}
}

func fmtTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
