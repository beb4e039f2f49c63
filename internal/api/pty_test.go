package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wsTerm is a test client of the terminal endpoint.
type wsTerm struct {
	t    *testing.T
	conn *websocket.Conn
	out  strings.Builder
	ctrl []map[string]any
}

func (h *harness) dialPty(key, id string, header ...string) (*websocket.Conn, *http.Response, error) {
	hdr := http.Header{}
	if key != "" {
		hdr.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(header); i += 2 {
		hdr.Set(header[i], header[i+1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return websocket.Dial(ctx, "ws"+strings.TrimPrefix(h.http.URL, "http")+"/v1/sandboxes/"+id+"/pty", &websocket.DialOptions{HTTPHeader: hdr})
}

func (h *harness) openTerm(key, id string, start map[string]any) *wsTerm {
	h.t.Helper()
	conn, res, err := h.dialPty(key, id)
	if err != nil {
		status := 0
		if res != nil {
			status = res.StatusCode
		}
		h.t.Fatalf("dial: %v (status %d)", err, status)
	}
	h.t.Cleanup(func() { conn.CloseNow() })
	conn.SetReadLimit(1 << 20)
	wt := &wsTerm{t: h.t, conn: conn}
	start["type"] = "start"
	wt.text(start)
	return wt
}

func (w *wsTerm) text(v any) {
	w.t.Helper()
	b, _ := json.Marshal(v)
	if err := w.conn.Write(context.Background(), websocket.MessageText, b); err != nil {
		w.t.Fatal(err)
	}
}

func (w *wsTerm) typeIn(s string) {
	w.t.Helper()
	if err := w.conn.Write(context.Background(), websocket.MessageBinary, []byte(s)); err != nil {
		w.t.Fatal(err)
	}
}

// until reads messages until cond holds for the output and control
// messages so far; it fails after 30 s or when the connection ends first.
func (w *wsTerm) until(what string, cond func() bool) error {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for !cond() {
		typ, b, err := w.conn.Read(ctx)
		if err != nil {
			w.t.Fatalf("waiting for %s: %v; output %q, control %v", what, err, w.out.String(), w.ctrl)
			return err
		}
		if typ == websocket.MessageBinary {
			w.out.Write(b)
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			w.t.Fatalf("control message not JSON: %q", b)
		}
		w.ctrl = append(w.ctrl, m)
	}
	return nil
}

func (w *wsTerm) shows(s string) {
	w.t.Helper()
	_ = w.until(s, func() bool { return strings.Contains(w.out.String(), s) })
}

func (w *wsTerm) control(typ string) map[string]any {
	w.t.Helper()
	var got map[string]any
	_ = w.until(typ+" message", func() bool {
		for _, m := range w.ctrl {
			if m["type"] == typ {
				got = m
				return true
			}
		}
		return false
	})
	return got
}

// closeStatus reads until the connection ends and returns its close code.
func (w *wsTerm) closeStatus() websocket.StatusCode {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if _, _, err := w.conn.Read(ctx); err != nil {
			return websocket.CloseStatus(err)
		}
	}
}

func TestPtyWebSocketSession(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("a", "team")
	id := h.create(key)

	w := h.openTerm(key, id, map[string]any{"command": "stty size; echo \"$FOO\"; pwd; read l; stty size; echo got-$l; exit 4", "rows": 33, "cols": 90, "env": map[string]string{"FOO": "bar"}, "cwd": "/tmp"})
	if pid, _ := w.control("started")["pid"].(float64); pid <= 1 {
		t.Errorf("started without a pid: %v", w.ctrl)
	}
	w.shows("33 90\r\nbar\r\n/tmp\r\n")
	w.text(map[string]any{"type": "resize", "rows": 50, "cols": 132})
	w.typeIn("xyz\r")
	w.shows("50 132\r\ngot-xyz")
	exit := w.control("exit")
	if exit["exit_code"] != 4.0 {
		t.Errorf("exit message %v", exit)
	}
	if st := w.closeStatus(); st != websocket.StatusNormalClosure {
		t.Errorf("close status %v", st)
	}

	// The default is a login shell in /workspace; Ctrl-C reaches it.
	w = h.openTerm(key, id, map[string]any{})
	w.typeIn("pwd; sleep 100\r")
	w.shows("/workspace\r\n")
	time.Sleep(200 * time.Millisecond)
	w.typeIn("\x03echo rc-$?\r")
	w.shows("rc-130")
	w.typeIn("exit\r")
	if exit := w.control("exit"); exit["exit_code"] != 130.0 && exit["exit_code"] != 0.0 {
		t.Errorf("exit message %v", exit)
	}
}

func TestPtyRefusals(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("a", "team")
	_, other := h.account("b", "team")
	id := h.create(key)

	// Before any upgrade: authentication, tenancy, the WebSocket itself.
	for _, c := range []struct {
		name, key, id string
		header        []string
		status        int
	}{
		{"no key", "", id, nil, 401},
		{"wrong key", "ork_nope", id, nil, 401},
		{"another account's sandbox", other, id, nil, 404},
		{"unknown sandbox", key, "sbx_01JZZZZZZZZZZZZZZZZZZZZZZZ", nil, 404},
		{"foreign origin", key, id, []string{"Origin", "https://evil.example"}, 403},
	} {
		_, res, err := h.dialPty(c.key, c.id, c.header...)
		if err == nil || res == nil || res.StatusCode != c.status {
			st := 0
			if res != nil {
				st = res.StatusCode
			}
			t.Errorf("%s: err %v, status %d, want %d", c.name, err, st, c.status)
		}
	}
	if r := h.do("GET", "/v1/sandboxes/"+id+"/pty", key, nil); r.status != 426 || r.code() != "websocket_required" {
		t.Errorf("plain GET: %d %s", r.status, r.body)
	}

	// After the upgrade: a bad start message is an error message and a
	// policy-violation close, and the sandbox serves on.
	for _, start := range []map[string]any{
		{"rows": 0}, {"rows": 5000}, {"cols": -1}, {"cwd": "relative"}, {"cwd": "/nope"},
		{"env": map[string]string{"1BAD": "x"}}, {"command": ""}, {"command": "a\x00b"}, {"surprise": true},
	} {
		w := h.openTerm(key, id, start)
		e := w.control("error")
		if code := e["error"].(map[string]any)["code"]; code != "invalid_request" && code != "invalid_path" {
			t.Errorf("%v: error %v", start, e)
		}
		if st := w.closeStatus(); st != websocket.StatusPolicyViolation {
			t.Errorf("%v: close status %v", start, st)
		}
	}
	// Binary first, or not JSON.
	for _, first := range []struct {
		typ websocket.MessageType
		b   string
	}{{websocket.MessageBinary, "ls\r"}, {websocket.MessageText, "{"}, {websocket.MessageText, `{"type":"resize","rows":5,"cols":5}`}} {
		conn, _, err := h.dialPty(key, id)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.Write(context.Background(), first.typ, []byte(first.b))
		w := &wsTerm{t: t, conn: conn}
		if e := w.control("error"); e["error"].(map[string]any)["code"] != "invalid_request" {
			t.Errorf("%q: %v", first.b, e)
		}
		conn.CloseNow()
	}
	// A bad control message mid-session ends it, and kills the program.
	w := h.openTerm(key, id, map[string]any{"command": "echo up; sleep 4242"})
	w.shows("up")
	w.text(map[string]any{"type": "resize", "rows": 0, "cols": 10})
	if e := w.control("error"); e["error"].(map[string]any)["field"] == nil && e["error"].(map[string]any)["details"].(map[string]any)["field"] != "rows" {
		t.Errorf("bad resize: %v", e)
	}
	if st := w.closeStatus(); st != websocket.StatusPolicyViolation {
		t.Errorf("bad resize: close status %v", st)
	}
	waitNoProcess(t, h, key, id, "sleep 4242")
	// A message over the limit closes the connection.
	w = h.openTerm(key, id, map[string]any{"command": "echo up; sleep 4343"})
	w.shows("up")
	_ = w.conn.Write(context.Background(), websocket.MessageBinary, make([]byte, ptyMaxMessage+1))
	if st := w.closeStatus(); st != websocket.StatusMessageTooBig {
		t.Errorf("oversized message: close status %v", st)
	}
	waitNoProcess(t, h, key, id, "sleep 4343")
	if got := h.exec(key, id, "echo fine"); got != "fine\n" {
		t.Errorf("sandbox after refusals: %q", got)
	}
}

// waitNoProcess waits until no process in the sandbox has cmdline
// containing s.
func waitNoProcess(t *testing.T, h *harness, key, id, s string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		out := h.exec(key, id, "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done")
		if !strings.Contains(out, s) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q still runs: %s", s, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPtyPeerThatNeverReads: a client that stops reading stalls the
// program; nothing on the server grows, and hanging up ends it.
func TestPtyPeerThatNeverReads(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("a", "team")
	id := h.create(key)
	w := h.openTerm(key, id, map[string]any{"command": "yes 0123456789abcdef"})
	w.control("started")
	time.Sleep(time.Second)
	var before, after goruntime.MemStats
	goruntime.GC()
	goruntime.ReadMemStats(&before)
	time.Sleep(3 * time.Second)
	goruntime.GC()
	goruntime.ReadMemStats(&after)
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 8<<20 {
		t.Errorf("server heap grew by %d bytes while the client did not read", grew)
	}
	// Reading resumes the flow.
	_ = w.until("1 MiB of output", func() bool { return w.out.Len() > 1<<20 })
	w.conn.CloseNow()
	waitNoProcess(t, h, key, id, "yes 0123456789abcdef")
}

// TestPtySandboxGoneEndsSession: deleting the sandbox ends an open
// terminal with an error message.
func TestPtySandboxGoneEndsSession(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("a", "team")
	id := h.create(key)
	w := h.openTerm(key, id, map[string]any{"command": "echo up; sleep 1000"})
	w.shows("up")
	if r := h.do("DELETE", "/v1/sandboxes/"+id, key, nil); r.status != 204 && r.status != 200 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		_, _, err := w.conn.Read(ctx)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatal("the session outlived its sandbox")
			}
			return
		}
	}
}

// TestPtyPauseEndsSession: pausing the sandbox ends its terminals, and the
// program is gone after the resume.
func TestPtyPauseEndsSession(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("a", "team")
	id := h.create(key)
	w := h.openTerm(key, id, map[string]any{"command": "echo up; sleep 4545"})
	w.shows("up")
	if r := h.do("POST", "/v1/sandboxes/"+id+"/pause", key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	// The session ends with an error message saying why.
	if e := w.control("error"); e["error"].(map[string]any)["code"] != "sandbox_not_ready" {
		t.Errorf("after the pause: %v", e)
	}
	if st := w.closeStatus(); st != websocket.StatusGoingAway {
		t.Errorf("close status after the pause: %v", st)
	}
	if r := h.do("POST", "/v1/sandboxes/"+id+"/resume", key, nil); r.status != 200 {
		t.Fatalf("resume: %d %s", r.status, r.body)
	}
	waitNoProcess(t, h, key, id, "sleep 4545")
	// A new terminal works after the resume.
	w = h.openTerm(key, id, map[string]any{"command": "echo again; exit 2"})
	if exit := w.control("exit"); exit["exit_code"] != 2.0 || !strings.Contains(w.out.String(), "again") {
		t.Errorf("after resume: %v %q", exit, w.out.String())
	}
}

// TestPtyManySessionsLeaveNoGoroutines opens and closes 300 terminals over
// the API, half ended by their program and half hung up on, and counts the
// server's goroutines before and after.
func TestPtyManySessionsLeaveNoGoroutines(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("a", "team")
	id := h.create(key)
	h.exec(key, id, "true")
	http.DefaultClient.CloseIdleConnections()
	before := goruntime.NumGoroutine()
	for i := 0; i < 300; i++ {
		conn, _, err := h.dialPty(key, id)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		w := &wsTerm{t: t, conn: conn}
		if i%2 == 0 {
			w.text(map[string]any{"type": "start", "command": "exit 0"})
			if exit := w.control("exit"); exit["exit_code"] != 0.0 {
				t.Fatalf("session %d: %v", i, exit)
			}
			_ = w.closeStatus()
		} else {
			w.text(map[string]any{"type": "start", "command": "sleep 60"})
			w.control("started")
		}
		conn.CloseNow()
	}
	var after int
	deadline := time.Now().Add(20 * time.Second)
	for {
		http.DefaultClient.CloseIdleConnections()
		after = goruntime.NumGoroutine()
		if after <= before+2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("goroutines %d → %d", before, after)
	if after > before+2 {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines grew from %d to %d:\n%s", before, after, buf[:goruntime.Stack(buf, true)])
	}
	waitNoProcess(t, h, key, id, "sleep 60")
}

// TestPtyTerminalsPerSandboxAreCapped: the 33rd open terminal of a sandbox
// is refused before the upgrade; closing one frees its slot.
func TestPtyTerminalsPerSandboxAreCapped(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("a", "team")
	id := h.create(key)
	var open []*wsTerm
	for i := 0; i < maxTerminals; i++ {
		w := h.openTerm(key, id, map[string]any{"command": "sleep 300"})
		w.control("started")
		open = append(open, w)
	}
	_, res, err := h.dialPty(key, id)
	if err == nil || res == nil || res.StatusCode != 429 {
		t.Fatalf("terminal %d: %v %v", maxTerminals+1, res, err)
	}
	if b, _ := io.ReadAll(res.Body); !strings.Contains(string(b), "too_many_terminals") {
		t.Errorf("at the cap: %s", b)
	}
	open[0].conn.CloseNow()
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, _, err := h.dialPty(key, id)
		if err == nil {
			conn.CloseNow()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot after closing a terminal: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, w := range open[1:] {
		w.conn.CloseNow()
	}
	waitNoProcess(t, h, key, id, "sleep 300")
}
