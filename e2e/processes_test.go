package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// outputStream is an attached GET …/processes/{pid}/output, read line by
// line in the background.
type outputStream struct {
	mu     sync.Mutex
	lines  []map[string]any
	stdout strings.Builder
	stderr strings.Builder
	done   chan struct{}
	cancel context.CancelFunc
}

func (s *apiServer) attach(id string, pid int, replay bool) *outputStream {
	s.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s/v1/sandboxes/%s/processes/%d/output?replay=%t", s.url, id, pid, replay), nil)
	req.Header.Set("Authorization", "Bearer "+s.key)
	resp, err := httpClient.Do(req)
	if err != nil {
		cancel()
		s.t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		cancel()
		s.t.Fatalf("attach: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	o := &outputStream{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(o.done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 4<<20)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				continue
			}
			o.mu.Lock()
			o.lines = append(o.lines, m)
			switch m["type"] {
			case "stdout":
				o.stdout.WriteString(m["data"].(string))
			case "stderr":
				o.stderr.WriteString(m["data"].(string))
			}
			o.mu.Unlock()
		}
	}()
	return o
}

func (o *outputStream) output() (string, string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.stdout.String(), o.stderr.String()
}

// last waits for the stream to end and returns its last line.
func (o *outputStream) last(t *testing.T) map[string]any {
	t.Helper()
	select {
	case <-o.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the output stream did not end")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.lines) == 0 {
		return nil
	}
	return o.lines[len(o.lines)-1]
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (s *apiServer) execOut(id string, body map[string]any) (string, float64) {
	s.t.Helper()
	r := s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, body)
	if r.status != 200 {
		s.t.Fatalf("exec %v: %d %s", body, r.status, r.body)
	}
	m := r.json(s.t)
	return m["stdout"].(string) + m["stderr"].(string), m["exit_code"].(float64)
}

func pidOf(t *testing.T, r response) int {
	t.Helper()
	m := r.json(t)
	if r.status != 201 || m["running"] != true {
		t.Fatalf("start: %d %s", r.status, r.body)
	}
	return int(m["pid"].(float64))
}

// TestBackgroundHTTPServer: a python3 http.server started in the
// background answers a second exec, its request log shows on an attached
// stream, and a signal ends it, which ends the stream with its status.
func TestBackgroundHTTPServer(t *testing.T) {
	s := startAPI(t, serverOpts{})
	id := s.create(s.key, map[string]any{"template": "python-3.11"})
	defer s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
	base := "/v1/sandboxes/" + id + "/processes"
	s.execOut(id, map[string]any{"command": "echo hello from the sandbox > /workspace/hello.txt"})

	start := time.Now()
	r := s.do("POST", base, s.key, map[string]any{"command": "python3 -u -m http.server 8000 --bind 127.0.0.1"})
	pid := pidOf(t, r)
	if m := r.json(t); m["command"] != "python3 -u -m http.server 8000 --bind 127.0.0.1" || m["cwd"] != "/workspace" || m["user"] != "root" || m["exit_code"] != nil {
		t.Fatalf("start: %s", r.body)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("start took %s: it must not wait for the process", d)
	}
	// The pid is the server's own, inside the sandbox.
	if out, _ := s.execOut(id, map[string]any{"command": fmt.Sprintf("cat /proc/%d/comm", pid)}); out != "python3\n" {
		t.Fatalf("pid %d is %q", pid, out)
	}
	att := s.attach(id, pid, true)
	defer att.cancel()
	fetch := `python3 -c "import urllib.request as u, time
for i in range(200):
    try:
        print(u.urlopen('http://127.0.0.1:8000/hello.txt').read().decode(), end=''); break
    except OSError: time.sleep(0.05)"`
	if out, code := s.execOut(id, map[string]any{"command": fetch}); code != 0 || out != "hello from the sandbox\n" {
		t.Fatalf("second exec: %v %q", code, out)
	}
	eventually(t, "the request log on the attached stream", func() bool {
		_, errOut := att.output()
		return strings.Contains(errOut, `"GET /hello.txt HTTP/1.1" 200`)
	})
	r = s.do("GET", base, s.key, nil)
	var list struct{ Processes []map[string]any }
	_ = json.Unmarshal(r.body, &list)
	if r.status != 200 || len(list.Processes) != 1 || int(list.Processes[0]["pid"].(float64)) != pid || list.Processes[0]["running"] != true {
		t.Fatalf("list: %d %s", r.status, r.body)
	}
	if r := s.do("GET", fmt.Sprintf("%s/%d", base, pid), s.key, nil); r.status != 200 || r.json(t)["running"] != true {
		t.Fatalf("get: %d %s", r.status, r.body)
	}
	if r := s.do("POST", fmt.Sprintf("%s/%d/signal", base, pid), s.key, map[string]any{"signal": "TERM"}); r.status != 204 {
		t.Fatalf("signal: %d %s", r.status, r.body)
	}
	last := att.last(t)
	if last["type"] != "exit" || last["exit_code"] != 143.0 || last["signal"] != 15.0 {
		t.Fatalf("stream ended with %v", last)
	}
	r = s.do("POST", fmt.Sprintf("%s/%d/wait", base, pid), s.key, map[string]any{"timeout_seconds": 30})
	if m := r.json(t); r.status != 200 || m["running"] != false || m["exit_code"] != 143.0 || m["ended_at"] == nil {
		t.Fatalf("wait: %d %s", r.status, r.body)
	}
}

// TestAttachFromNowSeesWhatFollows: an attach without replay answers once
// it has its place in the output, so stdin sent the moment its headers
// arrive has its echo in the stream, every time (before the agent
// acknowledged an attach, the echo could come before the attach took hold
// inside the sandbox, and was missed).
func TestAttachFromNowSeesWhatFollows(t *testing.T) {
	s := startAPI(t, serverOpts{})
	id := s.create(s.key, nil)
	defer s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
	base := "/v1/sandboxes/" + id + "/processes"
	pid := pidOf(t, s.do("POST", base, s.key, map[string]any{"command": "cat"}))
	for i := range 20 {
		att := s.attach(id, pid, false)
		line := fmt.Sprintf("line %d\n", i)
		if r := s.do("POST", fmt.Sprintf("%s/%d/stdin", base, pid), s.key, map[string]any{"data": line}); r.status != 204 {
			att.cancel()
			t.Fatalf("stdin: %d %s", r.status, r.body)
		}
		ok := false
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if out, _ := att.output(); out == line {
				ok = true
				break
			}
		}
		out, _ := att.output()
		att.cancel()
		<-att.done
		if !ok {
			t.Fatalf("attach %d from now: the stream has %q, not the echo %q of what was sent after its headers", i, out, line)
		}
	}
}

// TestBackgroundStdinAndPauseResume: stdin reaches a background cat; a
// process survives pause/resume with its pid, an attached stream ends as
// "detached" at the pause, and stdin still reaches it after the resume.
func TestBackgroundStdinAndPauseResume(t *testing.T) {
	s := startAPI(t, serverOpts{})
	id := s.create(s.key, nil)
	defer s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
	base := "/v1/sandboxes/" + id + "/processes"
	pid := pidOf(t, s.do("POST", base, s.key, map[string]any{"command": "cat"}))
	if r := s.do("POST", fmt.Sprintf("%s/%d/stdin", base, pid), s.key, map[string]any{"data": "before pause\n"}); r.status != 204 {
		t.Fatalf("stdin: %d %s", r.status, r.body)
	}
	att := s.attach(id, pid, true)
	defer att.cancel()
	eventually(t, "cat's echo", func() bool { out, _ := att.output(); return out == "before pause\n" })

	if r := s.do("POST", "/v1/sandboxes/"+id+"/pause", s.key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	if last := att.last(t); last["type"] != "detached" {
		t.Fatalf("a pause ended the stream with %v", last)
	}
	if r := s.do("GET", base, s.key, nil); r.status != 409 || r.errCode() != "sandbox_not_ready" {
		t.Fatalf("list while paused: %d %s", r.status, r.body)
	}
	if r := s.do("POST", "/v1/sandboxes/"+id+"/resume", s.key, nil); r.status != 200 {
		t.Fatalf("resume: %d %s", r.status, r.body)
	}
	r := s.do("GET", fmt.Sprintf("%s/%d", base, pid), s.key, nil)
	if m := r.json(t); r.status != 200 || m["running"] != true {
		t.Fatalf("after resume: %d %s", r.status, r.body)
	}
	if out, _ := s.execOut(id, map[string]any{"command": fmt.Sprintf("cat /proc/%d/comm", pid)}); out != "cat\n" {
		t.Fatalf("pid %d after resume is %q", pid, out)
	}
	// From now: the answer's headers come once the attach has its place
	// in the output, so the echo of what is sent next is in the stream.
	att = s.attach(id, pid, false)
	defer att.cancel()
	if r := s.do("POST", fmt.Sprintf("%s/%d/stdin", base, pid), s.key, map[string]any{"data_base64": "YWZ0ZXIgcmVzdW1lCg==", "eof": true}); r.status != 204 {
		t.Fatalf("stdin after resume: %d %s", r.status, r.body)
	}
	if last := att.last(t); last["type"] != "exit" || last["exit_code"] != 0.0 {
		t.Fatalf("cat ended with %v", last)
	}
	if out, _ := att.output(); out != "after resume\n" {
		t.Fatalf("after resume cat echoed %q", out)
	}
	if r := s.do("POST", fmt.Sprintf("%s/%d/stdin", base, pid), s.key, map[string]any{"data": "x"}); r.status != 409 || r.errCode() != "process_stdin_closed" {
		t.Fatalf("stdin after the end: %d %s", r.status, r.body)
	}
}

// TestBackgroundProcessHostileInput: pids that were not started through
// the API here (another sandbox's, PID 1, garbage) are 404
// process_not_found; bad fields are 400; a process flooding its output
// while nobody reads leaves the agent's memory bounded.
func TestBackgroundProcessHostileInput(t *testing.T) {
	s := startAPI(t, serverOpts{})
	a := s.create(s.key, nil)
	defer s.do("DELETE", "/v1/sandboxes/"+a, s.key, nil)
	b := s.create(s.key, nil)
	defer s.do("DELETE", "/v1/sandboxes/"+b, s.key, nil)
	pid := pidOf(t, s.do("POST", "/v1/sandboxes/"+a+"/processes", s.key, map[string]any{"command": "sleep 600"}))
	for _, p := range []string{fmt.Sprint(pid), "1", "0", "-1", "abc", "99999999", "1e3", "%20" + fmt.Sprint(pid), "0" + fmt.Sprint(pid)} {
		for _, call := range []struct{ method, suffix string }{{"GET", ""}, {"GET", "/output"}, {"POST", "/signal"}, {"POST", "/stdin"}, {"POST", "/wait"}} {
			var body any
			switch call.suffix {
			case "/signal":
				body = map[string]any{"signal": 9}
			case "/stdin":
				body = map[string]any{"data": "x"}
			}
			r := s.do(call.method, "/v1/sandboxes/"+b+"/processes/"+p+call.suffix, s.key, body)
			if r.status != 404 || r.errCode() != "process_not_found" {
				t.Errorf("%s %s%s in the other sandbox: %d %s", call.method, p, call.suffix, r.status, r.body)
			}
		}
	}
	// Sandbox a's process is untouched by all that.
	if r := s.do("GET", fmt.Sprintf("/v1/sandboxes/%s/processes/%d", a, pid), s.key, nil); r.json(t)["running"] != true {
		t.Fatalf("process in a: %s", r.body)
	}
	base := "/v1/sandboxes/" + a + "/processes"
	for _, c := range []struct {
		path  string
		body  string
		field string
	}{
		{base, `{}`, "command"},
		{base, `{"command":"true","user":"admin"}`, "user"},
		{base, `{"command":"true","cwd":"relative"}`, "cwd"},
		{base, `{"command":"true","env":{"1A":"x"}}`, "env"},
		{base, `{"command":"true","extra":1}`, "extra"},
		{fmt.Sprintf("%s/%d/signal", base, pid), `{"signal":"NOPE"}`, "signal"},
		{fmt.Sprintf("%s/%d/signal", base, pid), `{"signal":0}`, "signal"},
		{fmt.Sprintf("%s/%d/signal", base, pid), `{"signal":65}`, "signal"},
		{fmt.Sprintf("%s/%d/stdin", base, pid), `{}`, "data"},
		{fmt.Sprintf("%s/%d/stdin", base, pid), `{"data_base64":"!!"}`, "data_base64"},
		{fmt.Sprintf("%s/%d/wait", base, pid), `{"timeout_seconds":-1}`, "timeout_seconds"},
	} {
		r := s.do("POST", c.path, s.key, c.body)
		if r.status != 400 || r.json(t)["error"].(map[string]any)["details"].(map[string]any)["field"] != c.field {
			t.Errorf("POST %s %s: %d %s", c.path, c.body, r.status, r.body)
		}
	}
	if r := s.do("POST", base, s.key, map[string]any{"command": "true", "cwd": "/nonexistent"}); r.status != 400 {
		t.Errorf("missing cwd: %d %s", r.status, r.body)
	}
	// A wait that times out says the process still runs.
	if r := s.do("POST", fmt.Sprintf("%s/%d/wait", base, pid), s.key, map[string]any{"timeout_seconds": 0}); r.status != 200 || r.json(t)["running"] != true {
		t.Errorf("wait 0: %d %s", r.status, r.body)
	}

	// 256 MiB of output that nobody reads: the agent keeps 1 MiB.
	rss := func() int {
		out, _ := s.execOut(a, map[string]any{"command": "awk '/^VmRSS/ {print $2}' /proc/1/status"})
		var kb int
		fmt.Sscan(out, &kb)
		return kb
	}
	before := rss()
	flood := pidOf(t, s.do("POST", base, s.key, map[string]any{"command": "head -c 268435456 /dev/zero"}))
	r := s.do("POST", fmt.Sprintf("%s/%d/wait", base, flood), s.key, map[string]any{"timeout_seconds": 600})
	if r.status != 200 || r.json(t)["exit_code"] != 0.0 {
		t.Fatalf("flood: %d %s", r.status, r.body)
	}
	if after := rss(); after-before > 32<<10 {
		t.Errorf("the agent grew from %d to %d KiB while a process wrote 256 MiB nobody read", before, after)
	}
	att := s.attach(a, flood, true)
	att.last(t)
	if out, _ := att.output(); len(out) != 1<<20 {
		t.Errorf("replay after a flood: %d bytes, want the buffer's 1 MiB", len(out))
	}
	if r := s.do("POST", fmt.Sprintf("%s/%d/signal", base, pid), s.key, map[string]any{"signal": "SIGKILL"}); r.status != 204 {
		t.Errorf("kill: %d %s", r.status, r.body)
	}
}
