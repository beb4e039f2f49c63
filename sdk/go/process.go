package orkestr

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"
)

// Users a command, process or file call can run as.
const (
	UserRoot = "root" // the default
	UserUser = "user" // unprivileged: uid 1000, home /home/user, owner of /workspace
)

// ProcessOptions tune a background process. Zero fields take the API's
// defaults.
type ProcessOptions struct {
	Env  map[string]string // added to the sandbox's env
	Cwd  string            // "": /workspace
	User string            // "": UserRoot
}

// Process is a command started in the background with StartProcess. It
// outlives the call that started it and survives pause/resume. Its fields
// are as of the last call that returned it (StartProcess, Processes,
// GetProcess, Wait, Attach).
type Process struct {
	PID       int        `json:"pid"` // its pid inside the sandbox
	Command   string     `json:"command"`
	Cwd       string     `json:"cwd"`
	User      string     `json:"user"`
	StartedAt time.Time  `json:"started_at"`
	Running   bool       `json:"running"`
	ExitCode  *int       `json:"exit_code"` // once ended; 128+n when killed by signal n
	Signal    *int       `json:"signal"`    // the signal that killed it, if one did
	EndedAt   *time.Time `json:"ended_at"`

	sandbox *Sandbox
}

func (p *Process) path(suffix string) (string, error) {
	return sandboxPath(p.sandbox.ID, "/processes/"+strconv.Itoa(p.PID)+suffix)
}

// StartProcess starts command with /bin/sh -c in the background and
// returns as soon as it runs. It is never retried.
func (s *Sandbox) StartProcess(ctx context.Context, command string, o ProcessOptions) (*Process, error) {
	path, err := sandboxPath(s.ID, "/processes")
	if err != nil {
		return nil, err
	}
	body := map[string]any{"command": command}
	if o.Env != nil {
		body["env"] = o.Env
	}
	if o.Cwd != "" {
		body["cwd"] = o.Cwd
	}
	if o.User != "" {
		body["user"] = o.User
	}
	p := &Process{sandbox: s}
	if err := s.client.call(ctx, &request{method: http.MethodPost, path: path, json: body}, p); err != nil {
		return nil, err
	}
	return p, nil
}

// Processes lists the processes started through the API: the running ones
// and the most recent ended ones, oldest first.
func (s *Sandbox) Processes(ctx context.Context) ([]*Process, error) {
	path, err := sandboxPath(s.ID, "/processes")
	if err != nil {
		return nil, err
	}
	var out struct {
		Processes []*Process `json:"processes"`
	}
	if err := s.client.call(ctx, &request{method: http.MethodGet, path: path}, &out); err != nil {
		return nil, err
	}
	for _, p := range out.Processes {
		p.sandbox = s
	}
	return out.Processes, nil
}

// GetProcess returns the process with this pid; a pid not started through
// the API in this sandbox is an *Error with Code "process_not_found".
func (s *Sandbox) GetProcess(ctx context.Context, pid int) (*Process, error) {
	p := &Process{PID: pid, sandbox: s}
	path, err := p.path("")
	if err != nil {
		return nil, err
	}
	if err := s.client.call(ctx, &request{method: http.MethodGet, path: path}, p); err != nil {
		return nil, err
	}
	return p, nil
}

// IsProcessNotFound reports whether err says no such process was started
// through the API in the sandbox.
func IsProcessNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == "process_not_found"
}

// WriteStdin writes b to the process's stdin (at most 512 KiB a call).
func (p *Process) WriteStdin(ctx context.Context, b []byte) error {
	return p.stdin(ctx, b, false)
}

// CloseStdin closes the process's stdin; closing twice is fine.
func (p *Process) CloseStdin(ctx context.Context) error { return p.stdin(ctx, nil, true) }

// SendStdin copies r to the process's stdin in chunks and closes it at
// r's end.
func (p *Process) SendStdin(ctx context.Context, r io.Reader) error {
	buf := make([]byte, 256<<10)
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if werr := p.stdin(ctx, buf[:n], false); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return p.CloseStdin(ctx)
		}
		if err != nil {
			return fmt.Errorf("orkestr: reading stdin: %w", err)
		}
	}
}

func (p *Process) stdin(ctx context.Context, b []byte, eof bool) error {
	path, err := p.path("/stdin")
	if err != nil {
		return err
	}
	body := map[string]any{"eof": eof}
	if len(b) > 0 || !eof {
		body["data_base64"] = base64.StdEncoding.EncodeToString(b)
	}
	return p.sandbox.client.call(ctx, &request{method: http.MethodPost, path: path, json: body}, nil)
}

// SendSignal sends sig to the process's group. An ended process is not
// signalled.
func (p *Process) SendSignal(ctx context.Context, sig syscall.Signal) error {
	path, err := p.path("/signal")
	if err != nil {
		return err
	}
	return p.sandbox.client.call(ctx, &request{method: http.MethodPost, path: path, json: map[string]any{"signal": int(sig)}}, nil)
}

// Wait waits until the process has ended or ctx is done, and updates p.
func (p *Process) Wait(ctx context.Context) error {
	path, err := p.path("/wait")
	if err != nil {
		return err
	}
	for {
		timeout := 60
		if dl, ok := ctx.Deadline(); ok {
			timeout = max(0, min(timeout, int(time.Until(dl).Seconds())))
		}
		next := &Process{sandbox: p.sandbox}
		if err := p.sandbox.client.call(ctx, &request{method: http.MethodPost, path: path, json: map[string]any{"timeout_seconds": timeout}}, next); err != nil {
			return err
		}
		*p = *next
		if !p.Running {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if timeout == 0 {
			select { // the deadline is less than a second away
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// AttachOptions say where an attached process's output goes.
type AttachOptions struct {
	// Replay starts from the oldest byte still in the process's 1 MiB
	// buffer instead of from now.
	Replay bool
	Stdout io.Writer // nil discards
	Stderr io.Writer // nil discards
	// Dropped, if set, is told how many bytes this reader missed: the
	// buffer overwrote them before they were read.
	Dropped func(n int64)
}

// ErrDetached is returned by Attach when the sandbox was paused or
// stopped while attached; the process goes on after a resume.
var ErrDetached = errors.New("orkestr: detached: the sandbox was paused or stopped")

// Attach copies the process's output to o's writers as it is produced,
// until the process ends (then p holds its exit), ctx ends (detaching; the
// process goes on), or the sandbox pauses (ErrDetached).
func (p *Process) Attach(ctx context.Context, o AttachOptions) error {
	path, err := p.path("/output")
	if err != nil {
		return err
	}
	q := url.Values{}
	if o.Replay {
		q.Set("replay", "true")
	}
	resp, err := p.sandbox.client.do(ctx, &request{method: http.MethodGet, path: path, query: q})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev struct {
			Type    string        `json:"type"`
			Data    string        `json:"data"`
			Bytes   int64         `json:"bytes"`
			Process *Process      `json:"process"`
			Error   *errorPayload `json:"error"`
		}
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("orkestr: process output ended early: %w", err)
		}
		switch ev.Type {
		case StreamStdout, StreamStderr:
			w := o.Stdout
			if ev.Type == StreamStderr {
				w = o.Stderr
			}
			if w != nil {
				if _, err := io.WriteString(w, ev.Data); err != nil {
					return fmt.Errorf("orkestr: writing the process's %s: %w", ev.Type, err)
				}
			}
		case "dropped":
			if o.Dropped != nil {
				o.Dropped(ev.Bytes)
			}
		case "exit":
			if ev.Process != nil {
				s := p.sandbox
				*p = *ev.Process
				p.sandbox = s
			}
			return nil
		case "detached":
			return ErrDetached
		case "error":
			e := &Error{RequestID: resp.Header.Get("X-Request-Id"), Status: http.StatusInternalServerError, Details: map[string]any{}}
			if ev.Error != nil {
				e.Code, e.Message = ev.Error.Code, ev.Error.Message
				if status, ok := statusOf[e.Code]; ok {
					e.Status = status
				}
			}
			return classify(e)
		}
	}
}

// Output returns a reader of the process's stdout (and, with stderr set,
// its stderr interleaved) from the oldest buffered byte, ending at the
// process's end; closing it detaches.
func (p *Process) Output(ctx context.Context, stderr bool) io.ReadCloser {
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		o := AttachOptions{Replay: true, Stdout: pw}
		if stderr {
			o.Stderr = pw
		}
		pw.CloseWithError(p.Attach(ctx, o))
	}()
	return &cancelReader{PipeReader: pr, cancel: cancel}
}

type cancelReader struct {
	*io.PipeReader
	cancel context.CancelFunc
}

func (c *cancelReader) Close() error {
	c.cancel()
	return c.PipeReader.Close()
}
