package wire

// Terminals. A stream opened with Request{Op: OpPty} carries one terminal
// session and is closed after it:
//
//	host → agent: a KindJSON Pty (what to run), then any number of
//	              KindStdin (bytes typed), KindJSON PtyResize and
//	              KindSignal frames; closing the stream hangs up.
//	agent → host: a KindJSON PtyStarted (or a KindError if nothing was
//	              started), KindStdout frames (the terminal's output,
//	              byte-exact), then one KindExit with the ExitStatus.
//
// A terminal merges stdout and stderr, as a real one does, so there are no
// KindStderr frames.
const OpPty = "pty"

// Terminal size bounds. A zero size means the default, 24 rows by 80
// columns.
const (
	DefaultPtyRows = 24
	DefaultPtyCols = 80
	MaxPtyDim      = 1000
)

// Pty describes the program a terminal runs.
type Pty struct {
	// Command is run by /bin/sh -c like an exec's; empty starts the login
	// shell of the user (from /etc/passwd, /bin/sh if none) with -l.
	Command string            `json:"command,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	Cwd     string            `json:"cwd,omitempty"`
	Rows    int               `json:"rows,omitempty"`
	Cols    int               `json:"cols,omitempty"`
	// User runs the program as this user of the sandbox's /etc/passwd
	// ("" is root).
	User string `json:"user,omitempty"`
}

// PtyStarted is the agent's reply once the program runs.
type PtyStarted struct {
	PID int `json:"pid"`
}

// PtyResize changes the terminal's size; the program gets SIGWINCH.
type PtyResize struct {
	Rows int `json:"rows"`
	Cols int `json:"cols"`
}
