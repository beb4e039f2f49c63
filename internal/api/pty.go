package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// Terminals over WebSocket (docs/api.md "Terminals"). Binary messages are
// terminal bytes, both ways; text messages are JSON control messages:
//
//	client → server: {"type":"start", command, env, cwd, rows, cols, user} first,
//	                 then {"type":"resize","rows":R,"cols":C} at any time
//	server → client: {"type":"started","pid":N}, then output, then
//	                 {"type":"exit","exit_code":N,"duration_ms":D} and a
//	                 normal close; or {"type":"error","error":{...}} and a
//	                 close with 1008 (the request), 1001 (the sandbox
//	                 stopped) or 1011 (the server).
//
// Output is read from the sandbox only as fast as the client takes it, so
// a client that stops reading stalls the program rather than any buffer.

// ptyMaxMessage bounds a client message: typed bytes (the SDKs send at most
// 32 KiB at a time) or a control message.
const ptyMaxMessage = 64 << 10

// ptyStartWait bounds how long the server waits for the start message.
const ptyStartWait = 30 * time.Second

// maxTerminals bounds the open terminals of one sandbox. A terminal whose
// client stops reading holds up to the agent stream's window (1 MiB) on
// this side, so the bound is what one sandbox can pin here.
const maxTerminals = 32

// terminalSlots counts the open terminals of each sandbox in this process
// (sandbox ids are unique, so servers in one process can share it).
type terminalSlots struct {
	mu sync.Mutex
	n  map[string]int
}

func (t *terminalSlots) take(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == nil {
		t.n = map[string]int{}
	}
	if t.n[id] >= maxTerminals {
		return false
	}
	t.n[id]++
	return true
}

func (t *terminalSlots) give(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n[id]--; t.n[id] <= 0 {
		delete(t.n, id)
	}
}

var terminals terminalSlots

type ptyControl struct {
	Type    string            `json:"type"`
	Command *string           `json:"command"`
	Env     map[string]string `json:"env"`
	Cwd     *string           `json:"cwd"`
	Rows    *int              `json:"rows"`
	Cols    *int              `json:"cols"`
	User    *string           `json:"user"`
}

func (s *Server) openPty(w http.ResponseWriter, r *http.Request) error {
	rt, err := s.runningRuntime(r)
	if err != nil {
		return err
	}
	opener, ok := rt.(runtime.TerminalOpener)
	if !ok {
		return fmt.Errorf("runtime sandbox %T has no terminals", rt)
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		return apiErr(http.StatusUpgradeRequired, "websocket_required", "This endpoint speaks WebSocket: send a GET with Upgrade: websocket (see docs/api.md, Terminals).")
	}
	id := r.PathValue("id")
	if !terminals.take(id) {
		return apiErr(http.StatusTooManyRequests, "too_many_terminals", "This sandbox has %d terminals open, the most it may have; close one first.", maxTerminals).with("max", maxTerminals)
	}
	defer terminals.give(id)
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return nil // Accept has answered (e.g. 403 for a foreign Origin)
	}
	conn.SetReadLimit(ptyMaxMessage)
	// The session ends with the client, with the sandbox, or with the
	// server's request context.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	go func() {
		select {
		case <-rt.Done():
			// The agent connection breaks with the sandbox, which ends the
			// session with an error message; a client that does not read
			// is cut off.
			select {
			case <-time.After(2 * time.Second):
				cancel()
			case <-ctx.Done():
			}
		case <-ctx.Done():
		}
	}()
	s.servePty(ctx, conn, opener)
	return nil
}

func (s *Server) servePty(ctx context.Context, conn *websocket.Conn, opener runtime.TerminalOpener) {
	defer conn.CloseNow()
	fail := func(err error) {
		var e *Error
		code := websocket.StatusPolicyViolation
		if !errors.As(err, &e) {
			s.log.Error("terminal failed", "err", err)
			e, code = errInternal, websocket.StatusInternalError
		}
		if e.Code == "sandbox_not_ready" {
			code = websocket.StatusGoingAway
		}
		details := e.Details
		if details == nil {
			details = map[string]any{}
		}
		b, _ := json.Marshal(map[string]any{"type": "error", "error": map[string]any{"code": e.Code, "message": e.Message, "details": details}})
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_ = conn.Write(wctx, websocket.MessageText, b)
		_ = conn.Close(code, e.Code)
	}

	sctx, cancel := context.WithTimeout(ctx, ptyStartWait)
	typ, msg, err := conn.Read(sctx)
	cancel()
	if err != nil {
		if sctx.Err() != nil && ctx.Err() == nil {
			fail(invalid("type", "No start message within %d seconds.", int(ptyStartWait.Seconds())))
		}
		return
	}
	req, err := parsePtyStart(typ, msg)
	if err != nil {
		fail(err)
		return
	}
	term, err := opener.OpenTerminal(ctx, req)
	if err != nil {
		fail(execError(err))
		return
	}
	defer term.Close()
	started, _ := json.Marshal(map[string]any{"type": "started", "pid": term.PID()})
	if conn.Write(ctx, websocket.MessageText, started) != nil {
		return
	}

	// Input: typed bytes and control messages until the client goes.
	inputErr := make(chan error, 1)
	go func() {
		for {
			typ, msg, err := conn.Read(ctx)
			if err != nil {
				inputErr <- nil
				return
			}
			if typ == websocket.MessageBinary {
				if _, err := term.Write(msg); err != nil {
					inputErr <- nil
					return
				}
				continue
			}
			if err := s.ptyControl(term, msg); err != nil {
				inputErr <- err
				return
			}
		}
	}()

	out := make(chan error, 1)
	var res runtime.ExecResult
	go func() {
		var err error
		res, err = term.Output(&wsWriter{ctx: ctx, conn: conn})
		out <- err
	}()
	select {
	case err := <-out:
		if err != nil {
			switch {
			case ctx.Err() != nil:
			case errors.Is(err, runtime.ErrStopped) || errors.Is(err, runtime.ErrOutOfMemory):
				fail(apiErr(http.StatusConflict, "sandbox_not_ready", "The sandbox stopped (paused, terminated or out of memory); the terminal ended with it."))
			default:
				fail(execError(err))
			}
			return
		}
		b, _ := json.Marshal(map[string]any{"type": "exit", "exit_code": res.ExitCode, "duration_ms": res.Duration.Milliseconds()})
		if conn.Write(ctx, websocket.MessageText, b) == nil {
			_ = conn.Close(websocket.StatusNormalClosure, "exited")
		}
	case err := <-inputErr:
		// The client went (or broke the protocol): hang up.
		_ = term.Close()
		if err != nil {
			fail(err)
		}
	}
}

func parsePtyStart(typ websocket.MessageType, msg []byte) (runtime.TerminalRequest, error) {
	var c ptyControl
	if typ != websocket.MessageText {
		return runtime.TerminalRequest{}, invalid("type", "The first message must be a text message {\"type\":\"start\", ...}.")
	}
	dec := json.NewDecoder(bytes.NewReader(msg))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return runtime.TerminalRequest{}, invalid("type", "The start message is not valid JSON of the documented shape: %s.", err.Error())
	}
	if c.Type != "start" {
		return runtime.TerminalRequest{}, invalid("type", "The first message must have type \"start\".")
	}
	var req runtime.TerminalRequest
	if c.Command != nil {
		if *c.Command == "" || strings.ContainsRune(*c.Command, 0) {
			return req, invalid("command", "command must be a non-empty shell command line without NUL bytes, or left out for a login shell.")
		}
		req.Command = *c.Command
	}
	if err := checkEnv("env", c.Env); err != nil {
		return req, err
	}
	req.Env = c.Env
	req.Cwd = "/workspace"
	if c.Cwd != nil {
		if err := checkPath("cwd", *c.Cwd); err != nil {
			return req, err
		}
		req.Cwd = *c.Cwd
	}
	rows, cols, err := ptySize(c.Rows, c.Cols, false)
	if err != nil {
		return req, err
	}
	req.Rows, req.Cols = rows, cols
	if req.User, err = checkUser(c.User); err != nil {
		return req, err
	}
	return req, nil
}

// ptySize checks a size; without required, a missing value is the default.
func ptySize(rows, cols *int, required bool) (int, int, error) {
	r, c := wire.DefaultPtyRows, wire.DefaultPtyCols
	if required && (rows == nil || cols == nil) {
		return 0, 0, invalid("rows", "A resize needs rows and cols.")
	}
	if rows != nil {
		r = *rows
	}
	if cols != nil {
		c = *cols
	}
	if r < 1 || r > wire.MaxPtyDim {
		return 0, 0, invalid("rows", "rows must be between 1 and %d.", wire.MaxPtyDim)
	}
	if c < 1 || c > wire.MaxPtyDim {
		return 0, 0, invalid("cols", "cols must be between 1 and %d.", wire.MaxPtyDim)
	}
	return r, c, nil
}

// ptyControl applies one control message from the client.
func (s *Server) ptyControl(term runtime.Terminal, msg []byte) error {
	var c ptyControl
	dec := json.NewDecoder(bytes.NewReader(msg))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return invalid("type", "A text message must be a JSON control message: %s.", err.Error())
	}
	switch c.Type {
	case "resize":
		rows, cols, err := ptySize(c.Rows, c.Cols, true)
		if err != nil {
			return err
		}
		if err := term.Resize(rows, cols); err != nil {
			return execError(err)
		}
		return nil
	default:
		return invalid("type", "Unknown control message type %q; the client may send \"resize\".", c.Type)
	}
}

// wsWriter sends each write as one binary message; it blocks while the
// client does not read.
type wsWriter struct {
	ctx  context.Context
	conn *websocket.Conn
}

func (w *wsWriter) Write(p []byte) (int, error) {
	if err := w.conn.Write(w.ctx, websocket.MessageBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
