package orkestr

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestExecWire(t *testing.T) {
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "POST" || r.URL.Path != "/v1/sandboxes/sbx_1/exec" {
			t.Errorf("%s %s", r.Method, r.URL.Path)
		}
		got := bodyMap(t, r)
		want := map[string]any{"command": "python main.py", "timeout_seconds": 5.0, "env": map[string]any{"A": "1"},
			"cwd": "/tmp", "stdin": "input ü\n"}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("body = %v, want %v", got, want)
		}
		writeJSON(w, 200, map[string]any{"stdout": "out", "stderr": "err", "exit_code": 3, "duration_ms": 120, "blocked_connections": []any{}})
	})
	res, err := c.Sandbox("sbx_1").Exec(context.Background(), "python main.py", ExecOptions{
		TimeoutSeconds: 5, Env: map[string]string{"A": "1"}, Cwd: "/tmp", Stdin: strings.NewReader("input ü\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := ExecResult{Stdout: "out", Stderr: "err", ExitCode: 3, DurationMS: 120, BlockedConnections: []BlockedConnection{}}
	if !reflect.DeepEqual(*res, want) {
		t.Errorf("result = %+v", res)
	}
}

func TestExecMinimalBodyAndStdinChecks(t *testing.T) {
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Command string `json:"command"`
		}
		decodeStrict(t, r, &req)
		writeJSON(w, 200, map[string]any{"stdout": "", "stderr": "", "exit_code": 0, "duration_ms": 1, "blocked_connections": []any{}})
	})
	sb := c.Sandbox("sbx_1")
	if _, err := sb.Exec(context.Background(), "true", ExecOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Exec(context.Background(), "cat", ExecOptions{Stdin: strings.NewReader("\xff\xfe")}); err == nil {
		t.Error("binary stdin: no error")
	}
	if _, err := sb.Exec(context.Background(), "cat", ExecOptions{Stdin: strings.NewReader(strings.Repeat("x", maxStdin+1))}); err == nil {
		t.Error("stdin over 1 MiB: no error")
	}
}

func TestNetworkPolicyError(t *testing.T) {
	exit, blocked := 0, []any{}
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"stdout": "", "stderr": "curl: (7) failed", "exit_code": exit, "duration_ms": 5, "blocked_connections": blocked})
	})
	sb := c.Sandbox("sbx_1")
	ctx := context.Background()

	exit, blocked = 7, []any{map[string]any{"host": "evil.example", "port": 443}}
	res, err := sb.Exec(ctx, "curl https://evil.example", ExecOptions{})
	var npe *NetworkPolicyError
	if !errors.As(err, &npe) {
		t.Fatalf("err = %v, want *NetworkPolicyError", err)
	}
	if npe.Result != res || res.ExitCode != 7 || res.BlockedConnections[0] != (BlockedConnection{"evil.example", 443}) {
		t.Errorf("result = %+v", res)
	}
	if !strings.Contains(err.Error(), "evil.example:443") {
		t.Errorf("Error() = %q", err.Error())
	}
	var apiErr *Error
	if errors.As(err, &apiErr) {
		t.Error("a NetworkPolicyError is not an API error")
	}

	// Blocked but succeeded, or failed without blocks: no error.
	exit, blocked = 0, []any{map[string]any{"host": "evil.example", "port": 443}}
	if _, err := sb.Exec(ctx, "true", ExecOptions{}); err != nil {
		t.Errorf("exit 0 with blocks: %v", err)
	}
	exit, blocked = 1, []any{}
	if res, err := sb.Exec(ctx, "false", ExecOptions{}); err != nil || res.ExitCode != 1 {
		t.Errorf("exit 1 without blocks: %v", err)
	}
}

// TestExecStreamDeliversChunksAsTheyArrive holds the stream open after
// each chunk until the client has seen it.
func TestExecStreamDeliversChunksAsTheyArrive(t *testing.T) {
	seen := make(chan string)
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/sandboxes/sbx_1/exec/stream" {
			t.Errorf("path %s", r.URL.Path)
		}
		if got := bodyMap(t, r); got["command"] != "long" {
			t.Errorf("body %v", got)
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Set("X-Request-Id", "req_s")
		w.WriteHeader(200)
		lines := []string{`{"type":"stdout","data":"one\n"}`, `{"type":"stderr","data":"two ü\n"}`, `{"type":"stdout","data":"three"}`}
		for _, l := range lines {
			_, _ = w.Write([]byte(l + "\n"))
			w.(http.Flusher).Flush()
			select {
			case <-seen:
			case <-time.After(5 * time.Second):
				t.Error("the client did not see a chunk before the stream went on")
				return
			}
		}
		_, _ = w.Write([]byte(`{"type":"future_event","x":1}` + "\n"))
		_, _ = w.Write([]byte(`{"type":"exit","exit_code":2,"duration_ms":77,"blocked_connections":[]}` + "\n"))
	})
	st, err := c.Sandbox("sbx_1").ExecStream(context.Background(), "long", ExecOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var got []ExecChunk
	for ch := range st.Chunks() {
		got = append(got, ch)
		select {
		case seen <- ch.Data:
		case <-time.After(6 * time.Second):
			t.Fatal("the server went on without waiting: chunks arrived late")
		}
	}
	want := []ExecChunk{{StreamStdout, "one\n"}, {StreamStderr, "two ü\n"}, {StreamStdout, "three"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("chunks = %+v", got)
	}
	res, err := st.Wait()
	if err != nil || res.ExitCode != 2 || res.DurationMS != 77 {
		t.Errorf("Wait = %+v, %v", res, err)
	}
}

func TestExecStreamErrors(t *testing.T) {
	var body string
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "req_s")
		w.WriteHeader(200)
		_, _ = w.Write([]byte(body))
	})
	sb := c.Sandbox("sbx_1")
	ctx := context.Background()

	// A timeout arrives as an error event.
	body = `{"type":"stdout","data":"partial"}` + "\n" +
		`{"type":"error","error":{"code":"exec_timeout","message":"Killed.","details":{"duration_ms":1000}}}` + "\n"
	var out, errOut strings.Builder
	_, err := sb.ExecStreamTo(ctx, "sleep 9", ExecOptions{TimeoutSeconds: 1}, &out, &errOut)
	var et *ExecTimeoutError
	if !errors.As(err, &et) || et.DurationMS != 1000 || et.Status != 408 || et.RequestID != "req_s" {
		t.Errorf("err = %#v, want *ExecTimeoutError", err)
	}
	if out.String() != "partial" {
		t.Errorf("stdout = %q", out.String())
	}

	// The stream ends without an exit event.
	body = `{"type":"stdout","data":"x"}` + "\n"
	st, err := sb.ExecStream(ctx, "x", ExecOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Wait(); err == nil || !strings.Contains(err.Error(), "ended before") {
		t.Errorf("truncated stream: err = %v", err)
	}

	// Blocked connections and a failed command.
	body = `{"type":"exit","exit_code":6,"duration_ms":3,"blocked_connections":[{"host":"1.2.3.4","port":80}]}` + "\n"
	res, err := sb.ExecStreamTo(ctx, "x", ExecOptions{}, nil, nil)
	var npe *NetworkPolicyError
	if !errors.As(err, &npe) || res == nil || res.ExitCode != 6 {
		t.Errorf("err = %v, res = %+v", err, res)
	}

	// An API error before the stream starts.
	c2, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		writeAPIError(w, 409, "sandbox_not_ready", "Paused.", map[string]any{"status": "paused"})
	})
	var nr *SandboxNotReadyError
	if _, err := c2.Sandbox("sbx_1").ExecStream(ctx, "x", ExecOptions{}); !errors.As(err, &nr) {
		t.Errorf("err = %v", err)
	}
}
