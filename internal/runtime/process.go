package runtime

import (
	"context"
	"errors"
	"io"
	"time"
)

// Users a command, process or file call may run as. Templates have both;
// the default is root.
const (
	UserRoot = "root"
	UserUser = "user" // uid 1000, home /home/user
)

// ProcessRequest starts a command in the background.
type ProcessRequest struct {
	Command string
	Env     map[string]string
	Cwd     string // default /workspace
	User    string // default root
}

// ProcessInfo describes a background process.
type ProcessInfo struct {
	PID       int // the process's pid inside the sandbox
	Command   string
	Cwd       string
	User      string
	StartedAt time.Time
	Running   bool
	ExitCode  *int // once ended; 128+n for a signal
	Signal    int
	EndedAt   *time.Time
}

// ProcessOutput receives an attached process's output as it is produced.
// Dropped, if set, is told how many bytes the reader missed because the
// process's bounded buffer overwrote them first.
type ProcessOutput struct {
	Stdout  io.Writer
	Stderr  io.Writer
	Dropped func(n int64)
	// Attached, if set, is called once the attach has taken its place in
	// the output, before any of it: what the process writes from then on
	// reaches Stdout and Stderr. A sandbox that cannot say (an agent or
	// node from before it) never calls it.
	Attached func()
}

// Processes is implemented by sandboxes that run background processes:
// commands that outlive the request that started them, whose output is
// kept in a bounded per-process buffer, and which survive a checkpoint.
type Processes interface {
	StartProcess(ctx context.Context, r ProcessRequest) (ProcessInfo, error)
	// ListProcesses lists the processes started through StartProcess,
	// running and recently ended, oldest first.
	ListProcesses(ctx context.Context) ([]ProcessInfo, error)
	// AttachProcess streams output (replay: from the oldest byte kept)
	// until the process ends, and returns its final info. It returns
	// ErrDetached when the sandbox is paused or stops meanwhile, and the
	// context's error when ctx ends; the process is not affected. With no
	// writers it only waits.
	AttachProcess(ctx context.Context, pid int, replay bool, out ProcessOutput) (ProcessInfo, error)
	ProcessInput(ctx context.Context, pid int, data []byte, closeStdin bool) error
	SignalProcess(ctx context.Context, pid, signal int) error
}

// Errors of background processes and users.
var (
	ErrNoProcess = errors.New("no such process")
	ErrNoUser    = errors.New("no such user in the sandbox")
	ErrDetached  = errors.New("the sandbox is being paused or has stopped")
)
