package orkestr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/coder/websocket"
)

// TerminalOptions choose what a terminal runs. The zero value is root's
// login shell, 24×80, in /workspace; User "user" runs it as uid 1000
// (HOME /home/user, that user's login shell).
type TerminalOptions struct {
	Command string            // run by /bin/sh -c; "" for the login shell
	Env     map[string]string // added to the sandbox's environment
	Cwd     string            // "" for /workspace
	Rows    int               // 0 for 24
	Cols    int               // 0 for 80
	User    string            // "root" ("" too) or "user"
}

// TerminalExit is how a terminal's program ended.
type TerminalExit struct {
	ExitCode   int   `json:"exit_code"` // 128+N after signal N
	DurationMS int64 `json:"duration_ms"`
}

// Terminal is an interactive terminal (PTY) in a sandbox, over the API's
// WebSocket endpoint. Write types into it; Read returns what it shows,
// byte for byte, and io.EOF once the program exited (then Exit has its
// status). Read from one goroutine; Write, Resize and Close from any.
// A Terminal that is not read stalls its program: nothing buffers its
// output.
type Terminal struct {
	PID int // the program's pid inside the sandbox

	conn *websocket.Conn
	ctx  context.Context
	stop func() bool // stops hanging up when ctx ends

	rmu  sync.Mutex
	cur  io.Reader // the binary message being read
	exit *TerminalExit
	err  error
}

// Terminal opens a terminal running o's program. It returns once the
// program runs; errors the API answers with before that are the usual
// typed errors (SandboxNotFoundError, SandboxNotReadyError, *Error with
// code invalid_request, …). ctx bounds the whole session: ending it hangs
// up, which kills the program.
func (s *Sandbox) Terminal(ctx context.Context, o TerminalOptions) (*Terminal, error) {
	path, err := sandboxPath(s.ID, "/pty")
	if err != nil {
		return nil, err
	}
	c := s.client
	target := strings.TrimSuffix(c.base.String(), "/") + "/v1" + path
	switch {
	case strings.HasPrefix(target, "https://"):
		target = "wss://" + strings.TrimPrefix(target, "https://")
	case strings.HasPrefix(target, "http://"):
		target = "ws://" + strings.TrimPrefix(target, "http://")
	}
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer "+c.apiKey())
	hdr.Set("User-Agent", c.userAgent)
	conn, resp, err := websocket.Dial(ctx, target, &websocket.DialOptions{HTTPClient: c.http, HTTPHeader: hdr})
	if err != nil {
		if resp != nil && resp.StatusCode >= 300 && resp.Body != nil {
			return nil, readAPIError(resp)
		}
		return nil, &TransportError{Method: "GET", Path: path, Err: scrub(err)}
	}
	conn.SetReadLimit(1 << 20)
	start := map[string]any{"type": "start"}
	if o.Command != "" {
		start["command"] = o.Command
	}
	if len(o.Env) > 0 {
		start["env"] = o.Env
	}
	if o.Cwd != "" {
		start["cwd"] = o.Cwd
	}
	if o.User != "" {
		start["user"] = o.User
	}
	if o.Rows != 0 {
		start["rows"] = o.Rows
	}
	if o.Cols != 0 {
		start["cols"] = o.Cols
	}
	t := &Terminal{conn: conn, ctx: ctx}
	if err := t.control(start); err != nil {
		conn.CloseNow()
		return nil, err
	}
	// The first message is "started" or "error".
	typ, b, err := conn.Read(ctx)
	if err != nil {
		conn.CloseNow()
		return nil, &TransportError{Method: "GET", Path: path, Err: err}
	}
	var m controlMessage
	if typ != websocket.MessageText || json.Unmarshal(b, &m) != nil {
		conn.CloseNow()
		return nil, &TransportError{Method: "GET", Path: path, Err: errors.New("the server did not answer the start message")}
	}
	if m.Type == "error" {
		conn.CloseNow()
		return nil, m.apiError()
	}
	t.PID = m.PID
	t.stop = context.AfterFunc(ctx, func() { _ = conn.CloseNow() })
	return t, nil
}

type controlMessage struct {
	Type       string        `json:"type"`
	PID        int           `json:"pid"`
	ExitCode   int           `json:"exit_code"`
	DurationMS int64         `json:"duration_ms"`
	Error      *errorPayload `json:"error"`
}

func (m *controlMessage) apiError() error {
	e := &Error{Code: "internal", Message: "the terminal failed"}
	if m.Error != nil {
		e.Code, e.Message, e.Details = m.Error.Code, m.Error.Message, m.Error.Details
	}
	e.Status = statusOf[e.Code]
	if e.Details == nil {
		e.Details = map[string]any{}
	}
	return classify(e)
}

func (t *Terminal) control(v any) error {
	b, _ := json.Marshal(v)
	return t.conn.Write(t.ctx, websocket.MessageText, b)
}

// Write types p into the terminal ("\x03" is Ctrl-C).
func (t *Terminal) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), 32<<10)]
		if err := t.conn.Write(t.ctx, websocket.MessageBinary, chunk); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// Resize changes the terminal's size (1 to 1000 rows and columns); the
// program gets SIGWINCH.
func (t *Terminal) Resize(rows, cols int) error {
	if rows < 1 || cols < 1 || rows > 1000 || cols > 1000 {
		return fmt.Errorf("orkestr: terminal size %dx%d is out of range (1 to 1000)", rows, cols)
	}
	return t.control(map[string]any{"type": "resize", "rows": rows, "cols": cols})
}

// Read reads what the terminal shows. It returns io.EOF after the program
// exited and all its output was read.
func (t *Terminal) Read(p []byte) (int, error) {
	t.rmu.Lock()
	defer t.rmu.Unlock()
	for {
		if t.cur != nil {
			n, err := t.cur.Read(p)
			if err == io.EOF {
				t.cur = nil
				err = nil
			}
			if n > 0 || err != nil {
				return n, err
			}
			continue
		}
		if t.exit != nil {
			return 0, io.EOF
		}
		if t.err != nil {
			return 0, t.err
		}
		typ, r, err := t.conn.Reader(t.ctx)
		if err != nil {
			t.err = err
			if websocket.CloseStatus(err) == websocket.StatusNormalClosure {
				t.err = errors.New("orkestr: the terminal closed without an exit status")
			}
			continue
		}
		if typ == websocket.MessageBinary {
			t.cur = r
			continue
		}
		b, err := io.ReadAll(r)
		var m controlMessage
		if err != nil || json.Unmarshal(b, &m) != nil {
			t.err = errors.New("orkestr: malformed control message from the terminal")
			continue
		}
		switch m.Type {
		case "exit":
			t.exit = &TerminalExit{ExitCode: m.ExitCode, DurationMS: m.DurationMS}
			_ = t.conn.Close(websocket.StatusNormalClosure, "")
		case "error":
			t.err = m.apiError()
		}
	}
}

// Wait reads and discards the remaining output until the program exits
// and returns how it ended. Use it instead of reading, or after Read
// returned io.EOF.
func (t *Terminal) Wait() (*TerminalExit, error) {
	_, err := io.Copy(io.Discard, t)
	if err != nil {
		return nil, err
	}
	return t.Exit(), nil
}

// Exit is how the program ended; nil until Read returned io.EOF.
func (t *Terminal) Exit() *TerminalExit {
	t.rmu.Lock()
	defer t.rmu.Unlock()
	return t.exit
}

// Close hangs up: a program still running is killed with everything it
// started.
func (t *Terminal) Close() error {
	t.stop()
	return t.conn.CloseNow()
}
