// Command orkestr is the orkestr command-line client: a thin shell over the
// Go SDK (github.com/orkestr-eu/orkestr/sdk/go) with one file per group of
// verbs.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

var version = "dev"

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1 // the API or a local file operation failed
	exitUsage = 2 // bad command line or configuration
	// sandbox exec exits with the command's own status, or these:
	exitExecTimeout = 124 // the command timed out (as timeout(1))
	exitExecFailed  = 125 // orkestr itself failed (as docker run)
)

const usageText = `orkestr — command-line client of the orkestr API

Usage:
  orkestr [global flags] <command> [flags] [arguments]

Sandboxes:
  sandbox create --template NAME [--size S] [--network off|restricted|open]
                 [--timeout SECONDS] [--env K=V]... [--metadata K=V]... [--region R]
  sandbox ls     [--status S] [--limit N]
  sandbox get    ID
  sandbox exec   [--timeout SECONDS] [--env K=V]... [--cwd DIR] [--user root|user] [--stdin] ID [--] COMMAND [ARG]...
                 (COMMAND alone: a shell command line; with ARGs: an argv, each word as written)
  sandbox exec   -it [--env K=V]... [--cwd DIR] ID [--] COMMAND [ARG]...
                 on an interactive terminal, as docker exec -it (exit status: the command's)
  sandbox shell  [--cwd DIR] [--env K=V]... ID      an interactive login shell
  sandbox exec --detach [--env K=V]... [--cwd DIR] [--user U] ID [--] COMMAND [ARG]...
                 start COMMAND in the background and print its pid
  sandbox ps     ID                    its background processes
  sandbox logs   ID PID                a background process's output until it ends
  sandbox kill   [--signal N] ID PID   signal a background process (default 15, TERM)
  sandbox pause  ID
  sandbox resume ID
  sandbox fork   [-n N] ID             N running clones of a running or paused sandbox
  sandbox rm     ID

Files (REMOTE is SANDBOX_ID:/absolute/path):
  files put LOCAL|- REMOTE      upload a file (- reads standard input), streamed
  files get REMOTE [LOCAL|-]    download a file (to standard output without LOCAL or with -)
  files put -r DIR REMOTE       upload a directory (sent as a tar, extracted in the sandbox)
  files get -r [-z gzip|zstd] REMOTE [DIR|-]
                                download a directory into DIR, or as a tar to standard output
  files ls  REMOTE              list a directory
  files rm  REMOTE              delete a file or directory

Account:
  limits                        plan, sizes and usage of the API key
  usage [--from D] [--to D] [--hourly] [--csv]
                                metered usage per sandbox (this month by default)
  templates                     the template catalog
  version                       the version of this client

Global flags, accepted before or after the command:
  --api-key KEY    API key (default $ORKESTR_API_KEY; prefer the variable)
  --base-url URL   API base URL (default $ORKESTR_BASE_URL, else https://api.orkestr.eu)
  --ca-bundle FILE PEM CA certificates to trust besides the system's, for a server
                   with a private CA's certificate (default $ORKESTR_CA_BUNDLE)
  --json           machine-readable JSON on standard output (and errors as JSON on
                   standard error)

Exit status: 0 on success, 1 when the API or a local file operation fails, 2 for
usage or configuration errors. sandbox exec exits with the command's exit status,
124 if the command timed out, 125 if orkestr itself failed.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// globals are the flags every command accepts.
type globals struct {
	apiKey, baseURL, caBundle string
	json                      bool
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.apiKey, "api-key", g.apiKey, "API key (default $ORKESTR_API_KEY)")
	fs.StringVar(&g.baseURL, "base-url", g.baseURL, "API base URL (default $ORKESTR_BASE_URL, else "+orkestr.DefaultBaseURL+")")
	fs.StringVar(&g.caBundle, "ca-bundle", g.caBundle, "PEM CA certificates to trust besides the system's (default $ORKESTR_CA_BUNDLE)")
	fs.BoolVar(&g.json, "json", g.json, "machine-readable JSON output")
}

// cli is what a command runs with.
type cli struct {
	ctx            context.Context
	stdin          io.Reader
	stdout, stderr io.Writer
	globals
	client *orkestr.Client
}

// action runs a command with its positional arguments.
type action func(c *cli, args []string) error

// command is one verb. flags registers its flags and returns its action,
// which reads them.
type command struct {
	name, synopsis, summary string
	min, max                int // positional arguments; max < 0: no limit
	stopAt                  int // after this many positional arguments, the rest are positional verbatim
	flags                   func(fs *flag.FlagSet) action
}

// usageError is a bad command line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// exitCode ends the command with a status, its message already printed.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// run is the whole CLI: it returns the exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cli{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr}
	top := flag.NewFlagSet("orkestr", flag.ContinueOnError)
	top.SetOutput(io.Discard)
	c.globals.register(top)
	help := top.Bool("help", false, "")
	top.BoolVar(help, "h", false, "")
	if err := top.Parse(args); err != nil {
		fmt.Fprintf(stderr, "orkestr: %v\n\n%s", err, usageText)
		return exitUsage
	}
	args = top.Args()
	if *help || (len(args) > 0 && args[0] == "help") {
		fmt.Fprint(stdout, usageText)
		return exitOK
	}
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return exitUsage
	}
	groups := map[string][]*command{"sandbox": append(sandboxCommands(), processCommands()...), "files": filesCommands()}
	if cmds, ok := groups[args[0]]; ok {
		if len(args) < 2 {
			fmt.Fprintf(stderr, "orkestr %s: missing verb\n\n%s", args[0], usageText)
			return exitUsage
		}
		for _, cmd := range cmds {
			if cmd.name == args[1] {
				return c.runCommand(args[0]+" "+cmd.name, cmd, args[2:])
			}
		}
		fmt.Fprintf(stderr, "orkestr %s: unknown verb %q\n\n%s", args[0], args[1], usageText)
		return exitUsage
	}
	for _, cmd := range topCommands() {
		if cmd.name == args[0] {
			return c.runCommand(cmd.name, cmd, args[1:])
		}
	}
	fmt.Fprintf(stderr, "orkestr: unknown command %q\n\n%s", args[0], usageText)
	return exitUsage
}

func topCommands() []*command {
	return []*command{limitsCommand(), usageCommand(), templatesCommand(), {
		name: "version", summary: "print the version of this client",
		flags: func(*flag.FlagSet) action {
			return func(c *cli, _ []string) error {
				return c.print(map[string]string{"version": version, "sdk_version": orkestr.Version}, func(w io.Writer) {
					fmt.Fprintf(w, "orkestr %s (orkestr-go/%s)\n", version, orkestr.Version)
				})
			}
		},
	}}
}

// runCommand parses the command's flags, makes the client and runs it.
func (c *cli) runCommand(name string, cmd *command, args []string) int {
	fs := flag.NewFlagSet("orkestr "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	act := cmd.flags(fs)
	c.globals.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: orkestr %s %s\n\n%s\n\nFlags:\n", name, cmd.synopsis, cmd.summary)
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args, cmd.stopAt)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return exitUsage // the flag package printed the error and usage
	}
	if len(pos) < cmd.min || (cmd.max >= 0 && len(pos) > cmd.max) {
		fmt.Fprintf(c.stderr, "orkestr %s: wrong number of arguments\n", name)
		fs.Usage()
		return exitUsage
	}
	if name != "version" {
		var opts []orkestr.Option
		if c.apiKey != "" {
			opts = append(opts, orkestr.WithAPIKey(c.apiKey))
		}
		if c.baseURL != "" {
			opts = append(opts, orkestr.WithBaseURL(c.baseURL))
		}
		if c.caBundle != "" {
			opts = append(opts, orkestr.WithCABundle(c.caBundle))
		}
		if c.client, err = orkestr.NewClient(opts...); err != nil {
			if errors.Is(err, orkestr.ErrNoAPIKey) {
				err = errors.New("orkestr: no API key: set ORKESTR_API_KEY or pass --api-key")
			}
			c.printError(err)
			return exitUsage
		}
	}
	err = act(c, pos)
	var ue *usageError
	var ec exitCode
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ec):
		return int(ec)
	case errors.As(err, &ue):
		fmt.Fprintf(c.stderr, "orkestr %s: %s\n", name, ue.msg)
		fs.Usage()
		return exitUsage
	}
	c.printError(err)
	return exitError
}

// parseInterspersed parses flags anywhere among the positional arguments.
// After "--", or once stopAt (> 0) positional arguments were seen, the
// rest is positional as it is.
func parseInterspersed(fs *flag.FlagSet, args []string, stopAt int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
		if stopAt > 0 && len(pos) >= stopAt {
			if len(args) > 0 && args[0] == "--" {
				args = args[1:]
			}
			return append(pos, args...), nil
		}
	}
}

// print writes v as JSON with --json, else calls human.
func (c *cli) print(v any, human func(w io.Writer)) error {
	if c.json {
		enc := json.NewEncoder(c.stdout)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	human(tw)
	return tw.Flush()
}

// printError reports err on stderr: the API's code, message and request
// id, as text or, with --json, as {"error": {...}}.
func (c *cli) printError(err error) {
	var e *orkestr.Error
	if c.json {
		body := map[string]any{"message": err.Error()}
		if errors.As(err, &e) {
			body = map[string]any{"status": e.Status, "code": e.Code, "message": e.Message, "request_id": e.RequestID, "details": e.Details}
		}
		var npe *orkestr.NetworkPolicyError
		if errors.As(err, &npe) {
			body["code"] = "network_policy"
			body["blocked_connections"] = npe.Result.BlockedConnections
		}
		enc := json.NewEncoder(c.stderr)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(map[string]any{"error": body})
		return
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "orkestr") {
		msg = "orkestr: " + msg
	}
	fmt.Fprintln(c.stderr, msg)
}

// kvFlag is a repeatable K=V flag.
type kvFlag map[string]string

func (kv kvFlag) String() string { return "" }

func (kv kvFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", s)
	}
	kv[k] = v
	return nil
}

// orNil is m, or nil when empty (so that the API's defaults apply).
func (kv kvFlag) orNil() map[string]string {
	if len(kv) == 0 {
		return nil
	}
	return kv
}
