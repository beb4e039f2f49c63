package wire

// Background processes: started by OpProcStart, they outlive the stream
// that started them and every stream that attaches to them later.
const (
	// OpProcStart starts Request.Exec in the background and replies with
	// its ProcInfo at once.
	OpProcStart = "proc_start"
	// OpProcList replies with a ProcList of the processes started through
	// OpProcStart (running ones and the most recent ended ones).
	OpProcList = "proc_list"
	// OpProcAttach streams a process's output (KindStdout, KindStderr;
	// KindJSON frames are ProcNotices) from now or, with
	// Proc.Replay, from the oldest byte still buffered, and ends with a
	// KindExit frame holding its final ProcInfo. With Proc.NoOutput only
	// the KindExit frame is sent (a wait). The host ends an attach early by
	// closing the stream; the process is not affected.
	OpProcAttach = "proc_attach"
	// OpProcInput writes Proc.Data to the process's stdin and, with
	// Proc.CloseStdin, closes it afterwards. Replies with {}.
	OpProcInput = "proc_input"
	// OpProcSignal sends Proc.Signal to the process's group. Replies {}.
	OpProcSignal = "proc_signal"
)

// CodeNoProcess: no process with that pid was started through the API.
const CodeNoProcess = "no_process"

// CodeNoUser: the sandbox's /etc/passwd has no such user.
const CodeNoUser = "no_user"

// Proc addresses one background process.
type Proc struct {
	PID        int    `json:"pid"`
	Replay     bool   `json:"replay,omitempty"`
	NoOutput   bool   `json:"no_output,omitempty"`
	Data       []byte `json:"data,omitempty"`
	CloseStdin bool   `json:"close_stdin,omitempty"`
	Signal     int    `json:"signal,omitempty"`
}

// ProcInfo describes a background process.
type ProcInfo struct {
	PID       int    `json:"pid"`
	Command   string `json:"command"`
	Cwd       string `json:"cwd"`
	User      string `json:"user"`
	StartedNS int64  `json:"started_ns"`
	Running   bool   `json:"running"`
	// Set once it has ended.
	ExitCode *int  `json:"exit_code,omitempty"`
	Signal   int   `json:"signal,omitempty"`
	EndedNS  int64 `json:"ended_ns,omitempty"`
}

// ProcList is the reply to OpProcList.
type ProcList struct {
	Processes []ProcInfo `json:"processes"`
}

// ProcNotice is a KindJSON frame of an attach. The first of an attach
// with output has Attached set: the attach has its place in the output,
// and what the process writes after it reaches the reader. (An agent
// before it sends none; a host before it reads a notice without Dropped
// as nothing.) Later ones have Dropped: the reader fell behind by more
// than the process's output buffer, and that many bytes were overwritten
// unread.
type ProcNotice struct {
	Dropped  int64 `json:"dropped,omitempty"`
	Attached bool  `json:"attached,omitempty"`
}
