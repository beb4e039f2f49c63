package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// maxExecOutput bounds what a non-streaming exec returns per stream; use
// the stream endpoint for more.
const maxExecOutput = 16 << 20

type execRequest struct {
	Command        string            `json:"command"`
	TimeoutSeconds *int              `json:"timeout_seconds"`
	Env            map[string]string `json:"env"`
	Cwd            *string           `json:"cwd"`
	Stdin          *string           `json:"stdin"`
	User           *string           `json:"user"` // "root" (default) or "user"
}

type blockedConnection struct {
	Host string `json:"host"`
	Port int    `json:"port"`
}

type execResult struct {
	Stdout             string              `json:"stdout"`
	Stderr             string              `json:"stderr"`
	ExitCode           int                 `json:"exit_code"`
	DurationMS         int64               `json:"duration_ms"`
	BlockedConnections []blockedConnection `json:"blocked_connections"`
	// OOMKilled: a process of the command was killed because the sandbox
	// reached its memory limit; the sandbox keeps running.
	OOMKilled bool `json:"oom_killed"`
}

// blockedJSON is the wire form of what the network policy refused during
// an exec: [] when nothing. Port 0 means the sandbox's resolver refused the
// name, so no connection was attempted.
func blockedJSON(bs []runtime.BlockedConnection) []blockedConnection {
	out := make([]blockedConnection, 0, len(bs))
	for _, b := range bs {
		out = append(out, blockedConnection{Host: b.Host, Port: b.Port})
	}
	return out
}

// prepareExec validates an exec request and finds the running sandbox.
func (s *Server) prepareExec(r *http.Request) (runtime.Sandbox, runtime.ExecRequest, error) {
	var req execRequest
	if err := decode(r, &req, false); err != nil {
		return nil, runtime.ExecRequest{}, err
	}
	if req.Command == "" {
		return nil, runtime.ExecRequest{}, invalid("command", "Field command is required.")
	}
	timeout := 60
	if req.TimeoutSeconds != nil {
		timeout = *req.TimeoutSeconds
	}
	if timeout < 1 || timeout > s.cfg.MaxTimeoutSeconds {
		return nil, runtime.ExecRequest{}, invalid("timeout_seconds", "timeout_seconds must be between 1 and %d.", s.cfg.MaxTimeoutSeconds)
	}
	if err := checkEnv("env", req.Env); err != nil {
		return nil, runtime.ExecRequest{}, err
	}
	cwd := "/workspace"
	if req.Cwd != nil {
		cwd = *req.Cwd
		if err := checkPath("cwd", cwd); err != nil {
			return nil, runtime.ExecRequest{}, err
		}
	}
	user, err := checkUser(req.User)
	if err != nil {
		return nil, runtime.ExecRequest{}, err
	}
	rt, err := s.runningRuntime(r)
	if err != nil {
		return nil, runtime.ExecRequest{}, err
	}
	er := runtime.ExecRequest{Command: req.Command, Env: req.Env, Cwd: cwd, Timeout: time.Duration(timeout) * time.Second, User: user}
	if req.Stdin != nil {
		er.Stdin = bytes.NewReader([]byte(*req.Stdin))
	}
	return rt, er, nil
}

// execError maps runtime failures of an exec to API errors.
func execError(err error) error {
	switch {
	case errors.Is(err, runtime.ErrFileNotFound):
		return invalid("cwd", "The working directory does not exist in the sandbox.")
	case errors.Is(err, runtime.ErrPermission):
		return invalid("cwd", "The user cannot enter the working directory; choose another cwd or user root.")
	case errors.Is(err, runtime.ErrNoUser):
		return invalid("user", "The sandbox's template has no unprivileged user; rebuild it (orkestrd admin template build) or run as root.")
	case errors.Is(err, runtime.ErrInvalidRequest):
		return invalid("command", "The sandbox refused the command: %s", err.Error())
	case errors.Is(err, runtime.ErrOutOfMemory):
		return apiErr(http.StatusConflict, "sandbox_not_ready", "The sandbox was killed because it exceeded its memory limit; create a larger one.").with("status", "error")
	case errors.Is(err, runtime.ErrStopped):
		return notReady("error")
	case errors.Is(err, runtime.ErrBusy):
		return apiErr(http.StatusConflict, "sandbox_not_ready", "The sandbox is being paused.").with("status", "paused")
	}
	return err
}

// cappedBuffer keeps the first max bytes written to it.
type cappedBuffer struct {
	bytes.Buffer
	max int
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	if room := c.max - c.Len(); room > 0 {
		c.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) error {
	rt, er, err := s.prepareExec(r)
	if err != nil {
		return err
	}
	stdout, stderr := &cappedBuffer{max: maxExecOutput}, &cappedBuffer{max: maxExecOutput}
	er.Stdout, er.Stderr, er.Buffered = stdout, stderr, true
	ctx, cancel := context.WithTimeout(r.Context(), er.Timeout+30*time.Second)
	defer cancel()
	res, err := rt.Exec(ctx, er)
	if err != nil {
		return s.sandboxEnded(r, rt, err)
	}
	if res.TimedOut {
		return apiErr(http.StatusRequestTimeout, "exec_timeout", "The command did not finish within %d seconds and was killed with its children.", int(er.Timeout.Seconds())).
			with("stdout", stdout.String()).with("stderr", stderr.String()).with("duration_ms", res.Duration.Milliseconds())
	}
	writeJSON(w, http.StatusOK, execResult{
		Stdout: stdout.String(), Stderr: stderr.String(), ExitCode: res.ExitCode,
		DurationMS: res.Duration.Milliseconds(), BlockedConnections: blockedJSON(res.Blocked),
		OOMKilled: res.OOMKilled,
	})
	return nil
}

// ndjson writes one JSON object per line and flushes it at once.
type ndjson struct {
	mu  sync.Mutex
	w   http.ResponseWriter
	rc  *http.ResponseController
	enc *json.Encoder
	// started is set once the status line went out (by start, or by the
	// first line, which sends 200 implicitly).
	started bool
}

// start sends the 200 and the headers set so far, unless a line (or an
// earlier start) already did.
func (n *ndjson) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.started {
		return nil
	}
	n.started = true
	n.w.WriteHeader(http.StatusOK)
	return n.rc.Flush()
}

// eventSink takes the stream's closing event (exit or error).
type eventSink interface{ event(v map[string]any) error }

func (n *ndjson) event(v map[string]any) error { return n.send(v) }

func (n *ndjson) send(v any) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.started = true
	if err := n.enc.Encode(v); err != nil {
		return err
	}
	return n.rc.Flush()
}

// chunkWriter turns a stream's bytes into {"type", "data"} lines, holding
// back an incomplete UTF-8 sequence at the end of a chunk so that no
// character is split across lines.
type chunkWriter struct {
	out     *ndjson
	stream  string
	pending []byte
}

type chunk struct {
	Type string `json:"type"`
	Data string `json:"data"`
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	buf := append(c.pending, p...)
	cut := len(buf)
	// Back up over at most 3 bytes of an unfinished rune.
	for i := 1; i <= 3 && i <= len(buf); i++ {
		b := buf[len(buf)-i]
		if utf8.RuneStart(b) {
			if !utf8.FullRune(buf[len(buf)-i:]) {
				cut = len(buf) - i
			}
			break
		}
	}
	c.pending = append([]byte(nil), buf[cut:]...)
	if cut > 0 {
		if err := c.out.send(chunk{Type: c.stream, Data: string(buf[:cut])}); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (c *chunkWriter) flush() {
	if len(c.pending) > 0 {
		_ = c.out.send(chunk{Type: c.stream, Data: string(c.pending)})
		c.pending = nil
	}
}

func (s *Server) execStream(w http.ResponseWriter, r *http.Request) error {
	rt, er, err := s.prepareExec(r)
	if err != nil {
		return err
	}
	binary := wantsFrames(r)
	if binary {
		w.Header().Set("Content-Type", execFramesType)
	} else {
		w.Header().Set("Content-Type", "application/x-ndjson")
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	var out eventSink
	var flushOut func()
	if binary {
		f := &frameSink{w: w, rc: http.NewResponseController(w)}
		er.Stdout, er.Stderr = f.stream(frameStdout), f.stream(frameStderr)
		out, flushOut = f, func() {}
		_ = f.rc.Flush()
	} else {
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		nd := &ndjson{w: w, rc: http.NewResponseController(w), enc: enc}
		_ = nd.rc.Flush()
		stdout := &chunkWriter{out: nd, stream: "stdout"}
		stderr := &chunkWriter{out: nd, stream: "stderr"}
		er.Stdout, er.Stderr = stdout, stderr
		out, flushOut = nd, func() { stdout.flush(); stderr.flush() }
	}
	ctx, cancel := context.WithTimeout(r.Context(), er.Timeout+30*time.Second)
	defer cancel()
	res, err := rt.Exec(ctx, er)
	flushOut()
	if err == nil && res.TimedOut {
		err = apiErr(http.StatusRequestTimeout, "exec_timeout", "The command did not finish within %d seconds and was killed with its children.", int(er.Timeout.Seconds())).
			with("duration_ms", res.Duration.Milliseconds())
	}
	if err != nil {
		var e *Error
		if !errors.As(s.sandboxEnded(r, rt, err), &e) {
			s.log.Error("exec stream failed", "request_id", requestID(r), "err", err)
			e = errInternal
		}
		details := e.Details
		if details == nil {
			details = map[string]any{}
		}
		_ = out.event(map[string]any{"type": "error", "error": map[string]any{"code": e.Code, "message": e.Message, "details": details}})
		return nil
	}
	_ = out.event(map[string]any{"type": "exit", "exit_code": res.ExitCode, "duration_ms": res.Duration.Milliseconds(), "blocked_connections": blockedJSON(res.Blocked), "oom_killed": res.OOMKilled})
	return nil
}
