package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// Background processes: POST …/processes starts a command detached and
// answers at once with its pid; the process outlives the request, is
// listed, attached to, fed stdin, signalled and waited for by pid, and
// survives pause/resume.

type processRequest struct {
	Command string            `json:"command"`
	Env     map[string]string `json:"env"`
	Cwd     *string           `json:"cwd"`
	User    *string           `json:"user"`
}

type processJSON struct {
	PID       int     `json:"pid"`
	Command   string  `json:"command"`
	Cwd       string  `json:"cwd"`
	User      string  `json:"user"`
	StartedAt string  `json:"started_at"`
	Running   bool    `json:"running"`
	ExitCode  *int    `json:"exit_code"`
	Signal    *int    `json:"signal"`
	EndedAt   *string `json:"ended_at"`
}

func processOut(p runtime.ProcessInfo) processJSON {
	out := processJSON{PID: p.PID, Command: p.Command, Cwd: p.Cwd, User: p.User, StartedAt: fmtTime(p.StartedAt),
		Running: p.Running, ExitCode: p.ExitCode, EndedAt: fmtTimePtr(p.EndedAt)}
	if p.Signal != 0 {
		sig := p.Signal
		out.Signal = &sig
	}
	return out
}

// checkUser validates a call's user: root (the default) or user.
func checkUser(u *string) (string, error) {
	if u == nil {
		return runtime.UserRoot, nil
	}
	switch *u {
	case runtime.UserRoot, runtime.UserUser:
		return *u, nil
	}
	return "", invalid("user", "Field user must be %q or %q.", runtime.UserRoot, runtime.UserUser)
}

func processNotFound(pid string) *Error {
	return apiErr(http.StatusNotFound, "process_not_found",
		"No process with pid %s was started through the API in this sandbox (GET …/processes lists them).", truncate(pid, 32))
}

// processError maps runtime failures of the process calls.
func processError(err error, pid string) error {
	switch {
	case errors.Is(err, runtime.ErrNoProcess):
		return processNotFound(pid)
	case errors.Is(err, runtime.ErrNoUser):
		return invalid("user", "The sandbox's template has no unprivileged user; rebuild it (orkestrd admin template build) or run as root.")
	}
	return execError(err)
}

// processSandbox finds the running sandbox of a process call.
func (s *Server) processSandbox(r *http.Request) (runtime.Processes, error) {
	return runningAs[runtime.Processes](s, r, "This server's runtime does not run background processes.")
}

// pathPID parses {pid}: anything that is not a pid cannot name one.
func pathPID(r *http.Request) (int, error) {
	raw := r.PathValue("pid")
	pid, err := strconv.Atoi(raw)
	if err != nil || pid < 1 || pid > 1<<22 || strconv.Itoa(pid) != raw {
		return 0, processNotFound(raw)
	}
	return pid, nil
}

func (s *Server) startProcess(w http.ResponseWriter, r *http.Request) error {
	var req processRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if req.Command == "" {
		return invalid("command", "Field command is required.")
	}
	if strings.IndexByte(req.Command, 0) >= 0 {
		return invalid("command", "The command contains a NUL byte.")
	}
	if err := checkEnv("env", req.Env); err != nil {
		return err
	}
	cwd := "/workspace"
	if req.Cwd != nil {
		cwd = *req.Cwd
		if err := checkPath("cwd", cwd); err != nil {
			return err
		}
	}
	user, err := checkUser(req.User)
	if err != nil {
		return err
	}
	ps, err := s.processSandbox(r)
	if err != nil {
		return err
	}
	p, err := ps.StartProcess(r.Context(), runtime.ProcessRequest{Command: req.Command, Env: req.Env, Cwd: cwd, User: user})
	if err != nil {
		return processError(err, "")
	}
	writeJSON(w, http.StatusCreated, processOut(p))
	return nil
}

func (s *Server) listProcesses(w http.ResponseWriter, r *http.Request) error {
	ps, err := s.processSandbox(r)
	if err != nil {
		return err
	}
	list, err := ps.ListProcesses(r.Context())
	if err != nil {
		return processError(err, "")
	}
	out := make([]processJSON, len(list))
	for i, p := range list {
		out[i] = processOut(p)
	}
	writeJSON(w, http.StatusOK, map[string]any{"processes": out})
	return nil
}

// findProcess looks pid up in the sandbox's process list.
func findProcess(ctx context.Context, ps runtime.Processes, pid int) (runtime.ProcessInfo, error) {
	list, err := ps.ListProcesses(ctx)
	if err != nil {
		return runtime.ProcessInfo{}, processError(err, strconv.Itoa(pid))
	}
	for _, p := range list {
		if p.PID == pid {
			return p, nil
		}
	}
	return runtime.ProcessInfo{}, processNotFound(strconv.Itoa(pid))
}

func (s *Server) getProcess(w http.ResponseWriter, r *http.Request) error {
	pid, err := pathPID(r)
	if err != nil {
		return err
	}
	ps, err := s.processSandbox(r)
	if err != nil {
		return err
	}
	p, err := findProcess(r.Context(), ps, pid)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, processOut(p))
	return nil
}

// maxStdinChunk bounds one stdin request (the agent's request frame holds
// it base64-encoded).
const maxStdinChunk = 512 << 10

type stdinRequest struct {
	Data       *string `json:"data"`
	DataBase64 *string `json:"data_base64"`
	EOF        bool    `json:"eof"`
}

func (s *Server) processStdin(w http.ResponseWriter, r *http.Request) error {
	pid, err := pathPID(r)
	if err != nil {
		return err
	}
	var req stdinRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	var data []byte
	switch {
	case req.Data != nil && req.DataBase64 != nil:
		return invalid("data", "Send data or data_base64, not both.")
	case req.Data != nil:
		data = []byte(*req.Data)
	case req.DataBase64 != nil:
		// Strict RFC 4648 as the document's pattern says: Go's decoder
		// would skip line breaks.
		if strings.ContainsAny(*req.DataBase64, "\r\n") {
			return invalid("data_base64", "Field data_base64 is not valid base64 (RFC 4648, with padding, no line breaks).")
		}
		if data, err = base64.StdEncoding.DecodeString(*req.DataBase64); err != nil {
			return invalid("data_base64", "Field data_base64 is not valid base64 (RFC 4648, with padding).")
		}
	case !req.EOF:
		return invalid("data", "Send data, data_base64 or eof.")
	}
	if len(data) > maxStdinChunk {
		return invalid("data", "At most %d bytes of stdin per request; send more in several.", maxStdinChunk)
	}
	ps, err := s.processSandbox(r)
	if err != nil {
		return err
	}
	if err := ps.ProcessInput(r.Context(), pid, data, req.EOF); err != nil {
		if errors.Is(err, runtime.ErrInvalidRequest) {
			return apiErr(http.StatusConflict, "process_stdin_closed", "%s", strings.TrimPrefix(err.Error(), runtime.ErrInvalidRequest.Error()+": "))
		}
		return processError(err, strconv.Itoa(pid))
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// signals are the names a signal request may use besides numbers.
var signals = map[string]int{
	"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "USR1": 10, "USR2": 12, "TERM": 15, "CONT": 18, "STOP": 19, "WINCH": 28,
}

// asciiUpper upper-cases ASCII letters only, so that a signal name matches
// the document's pattern exactly (strings.ToUpper would also take "ſ" for
// "S"); anything else stays as it is and matches no name.
func asciiUpper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

func (s *Server) signalProcess(w http.ResponseWriter, r *http.Request) error {
	pid, err := pathPID(r)
	if err != nil {
		return err
	}
	var req struct {
		Signal json.RawMessage `json:"signal"`
	}
	if err := decode(r, &req, false); err != nil {
		return err
	}
	sig := 0
	var name string
	if err := json.Unmarshal(req.Signal, &sig); err != nil {
		if json.Unmarshal(req.Signal, &name) == nil {
			sig = signals[strings.TrimPrefix(asciiUpper(name), "SIG")]
		}
	}
	if sig < 1 || sig > 64 {
		return invalid("signal", "Field signal must be a number from 1 to 64 or one of HUP, INT, QUIT, KILL, USR1, USR2, TERM, CONT, STOP, WINCH.")
	}
	ps, err := s.processSandbox(r)
	if err != nil {
		return err
	}
	if err := ps.SignalProcess(r.Context(), pid, sig); err != nil {
		return processError(err, strconv.Itoa(pid))
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) waitProcess(w http.ResponseWriter, r *http.Request) error {
	pid, err := pathPID(r)
	if err != nil {
		return err
	}
	var req struct {
		TimeoutSeconds *int `json:"timeout_seconds"`
	}
	if err := decode(r, &req, true); err != nil {
		return err
	}
	timeout := 60
	if req.TimeoutSeconds != nil {
		timeout = *req.TimeoutSeconds
	}
	if timeout < 0 || timeout > 3600 {
		return invalid("timeout_seconds", "timeout_seconds must be between 0 and 3600.")
	}
	ps, err := s.processSandbox(r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(timeout)*time.Second)
	defer cancel()
	p, err := ps.AttachProcess(ctx, pid, false, runtime.ProcessOutput{})
	switch {
	case err == nil:
	case errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil,
		errors.Is(err, runtime.ErrDetached):
		// Still running when the wait ended: say so.
		if p, err = findProcess(r.Context(), ps, pid); err != nil {
			return err
		}
	default:
		return processError(err, strconv.Itoa(pid))
	}
	writeJSON(w, http.StatusOK, processOut(p))
	return nil
}

// attachAckWait bounds how long an attach's answer waits for the sandbox
// to acknowledge the attach before its headers go out anyway.
const attachAckWait = 2 * time.Second

// processOutput streams a process's output as NDJSON: stdout and stderr
// lines as for exec/stream, "dropped" when the reader fell behind the
// process's buffer, and last "exit" (the process ended) or "detached" (the
// sandbox was paused or stopped; attach again after a resume).
func (s *Server) processOutput(w http.ResponseWriter, r *http.Request) error {
	pid, err := pathPID(r)
	if err != nil {
		return err
	}
	replay, err := queryBool(r, "replay")
	if err != nil {
		return err
	}
	ps, err := s.processSandbox(r)
	if err != nil {
		return err
	}
	// Answer a wrong pid with a 404 before the stream starts.
	if _, err := findProcess(r.Context(), ps, pid); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	out := &ndjson{w: w, rc: http.NewResponseController(w), enc: enc}
	// The answer's headers go out once the attach has its place in the
	// output, so a client that writes to the process's stdin as soon as
	// they arrive sees the echo (from now means from the headers). A
	// sandbox that cannot acknowledge (an agent or node from before the
	// acknowledgment) gets them after attachAckWait, or with the first
	// line.
	ack := time.AfterFunc(attachAckWait, func() { _ = out.start() })
	defer ack.Stop()
	attached := func() {
		ack.Stop()
		_ = out.start()
	}
	stdout := &chunkWriter{out: out, stream: "stdout"}
	stderr := &chunkWriter{out: out, stream: "stderr"}
	dropped := func(n int64) { _ = out.send(map[string]any{"type": "dropped", "bytes": n}) }
	p, err := ps.AttachProcess(r.Context(), pid, replay, runtime.ProcessOutput{Stdout: stdout, Stderr: stderr, Dropped: dropped, Attached: attached})
	stdout.flush()
	stderr.flush()
	switch {
	case err == nil:
		_ = out.send(map[string]any{"type": "exit", "exit_code": p.ExitCode, "signal": processOut(p).Signal, "process": processOut(p)})
	case errors.Is(err, runtime.ErrDetached):
		_ = out.send(map[string]any{"type": "detached", "reason": "The sandbox was paused or stopped; the process goes on after a resume: attach again."})
	case r.Context().Err() != nil:
	default:
		var e *Error
		if !errors.As(processError(err, strconv.Itoa(pid)), &e) {
			s.log.Error("process output failed", "request_id", requestID(r), "err", err)
			e = errInternal
		}
		details := e.Details
		if details == nil {
			details = map[string]any{}
		}
		_ = out.send(map[string]any{"type": "error", "error": map[string]any{"code": e.Code, "message": e.Message, "details": details}})
	}
	return nil
}
