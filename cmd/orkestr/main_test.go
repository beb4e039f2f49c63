package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

const testKey = "ork_CLITESTKEY0123456789abcdefghijklmnop"

// api is a fake of the orkestr API: handlers by "METHOD /path".
type api struct {
	t        *testing.T
	mu       sync.Mutex
	handlers map[string]http.HandlerFunc
	requests []string
}

func newAPI(t *testing.T) (*api, *httptest.Server) {
	a := &api{t: t, handlers: map[string]http.HandlerFunc{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Get("Authorization"); got != "Bearer "+testKey {
			writeErr(w, 401, "unauthenticated", "The API key is missing or unknown.", nil)
			return
		}
		key := r.Method + " " + r.URL.Path
		a.mu.Lock()
		a.requests = append(a.requests, key+"?"+r.URL.RawQuery)
		h := a.handlers[key]
		a.mu.Unlock()
		if h == nil {
			writeErr(w, 404, "not_found", "No such endpoint.", nil)
			return
		}
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Setenv("ORKESTR_API_KEY", testKey)
	t.Setenv("ORKESTR_BASE_URL", srv.URL)
	return a, srv
}

func (a *api) on(key string, h http.HandlerFunc) { a.handlers[key] = h }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Request-Id", "req_CLI")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, code, msg string, details map[string]any) {
	if details == nil {
		details = map[string]any{}
	}
	writeJSON(w, status, map[string]any{"error": map[string]any{"code": code, "message": msg, "details": details}})
}

func sandbox(id, status string) map[string]any {
	return map[string]any{"id": id, "status": status, "template": "python-3.12",
		"size": "small", "cpu": 0.5, "memory_mb": 512, "network": "off", "region": "fsn1",
		"timeout_seconds": 600, "expires_at": "2026-05-01T10:10:00.000Z", "env_keys": []string{"TOKEN"},
		"metadata": map[string]string{"agentRun": "r_1"}, "created_at": "2026-05-01T10:00:00.000Z", "paused_at": nil,
		"terminated_at": nil}
}

type result struct {
	code           int
	stdout, stderr string
}

func runCLI(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

func TestUsageErrors(t *testing.T) {
	newAPI(t)
	for _, args := range [][]string{
		{},
		{"bogus"},
		{"sandbox"},
		{"sandbox", "bogus"},
		{"sandbox", "create"},               // --template is required
		{"sandbox", "get"},                  // ID missing
		{"sandbox", "get", "a", "b"},        // one ID only
		{"sandbox", "create", "--nope"},     // unknown flag
		{"sandbox", "exec", "sbx_1"},        // no command
		{"files", "put", "x", "sbx_1/path"}, // not ID:/path
		{"sandbox", "create", "--env", "novalue", "--template", "x"},
	} {
		if r := runCLI(t, "", args...); r.code != exitUsage || r.stderr == "" {
			t.Errorf("%q: exit %d, stderr %q; want %d with a message", args, r.code, r.stderr, exitUsage)
		}
	}
	if r := runCLI(t, "", "--help"); r.code != 0 || !strings.Contains(r.stdout, "sandbox create") {
		t.Errorf("--help: %+v", r)
	}
	if r := runCLI(t, "", "sandbox", "ls", "-h"); r.code != 0 {
		t.Errorf("sandbox ls -h: %+v", r)
	}
	t.Setenv("ORKESTR_API_KEY", "")
	if r := runCLI(t, "", "limits"); r.code != exitUsage || !strings.Contains(r.stderr, "ORKESTR_API_KEY") {
		t.Errorf("no key: %+v", r)
	}
}

func TestSandboxCreate(t *testing.T) {
	a, _ := newAPI(t)
	a.on("POST /v1/sandboxes", func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		want := map[string]any{"template": "python-3.12", "size": "medium", "network": "open", "timeout_seconds": 90.0,
			"env": map[string]any{"TOKEN": "s3cret", "B": "x=y"}, "metadata": map[string]any{"agentRun": "r_1"}, "region": "hel1"}
		if !reflect.DeepEqual(body, want) {
			t.Errorf("body = %v", body)
		}
		writeJSON(w, 201, sandbox("sbx_1", "running"))
	})
	args := []string{"sandbox", "create", "--template", "python-3.12", "--size", "medium", "--network", "open",
		"--timeout", "90", "--env", "TOKEN=s3cret", "--env", "B=x=y", "--metadata", "agentRun=r_1", "--region", "hel1"}
	r := runCLI(t, "", append(args, "--json")...)
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("--json output %q: %v", r.stdout, err)
	}
	if got["id"] != "sbx_1" || got["memory_mb"] != 512.0 || got["metadata"].(map[string]any)["agentRun"] != "r_1" ||
		got["expires_at"] != "2026-05-01T10:10:00Z" || got["paused_at"] != nil {
		t.Errorf("--json output = %v", got)
	}
	r = runCLI(t, "", args...)
	if r.code != 0 || !strings.Contains(r.stdout, "sbx_1") || !strings.Contains(r.stdout, "agentRun=r_1") {
		t.Errorf("human output: %+v", r)
	}
}

func TestSandboxLsAcrossPages(t *testing.T) {
	a, _ := newAPI(t)
	a.on("GET /v1/sandboxes", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("status") != "running" {
			t.Errorf("query %v", r.URL.Query())
		}
		if r.URL.Query().Get("cursor") == "" {
			writeJSON(w, 200, map[string]any{"data": []any{sandbox("sbx_3", "running"), sandbox("sbx_2", "running")}, "next_cursor": "p2"})
			return
		}
		writeJSON(w, 200, map[string]any{"data": []any{sandbox("sbx_1", "running")}, "next_cursor": nil})
	})
	r := runCLI(t, "", "sandbox", "ls", "--status", "running")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "ID ") || strings.Count(r.stdout, "\n") != 4 || !strings.Contains(r.stdout, "sbx_1") {
		t.Errorf("ls: %+v", r)
	}
	r = runCLI(t, "", "sandbox", "ls", "--json", "--status", "running", "--limit", "2")
	var list []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 2 || list[1]["id"] != "sbx_2" {
		t.Errorf("ls --json --limit 2: %v %+v", err, r)
	}
}

func TestAPIErrorsReported(t *testing.T) {
	a, _ := newAPI(t)
	a.on("GET /v1/sandboxes/sbx_gone", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, 404, "sandbox_not_found", "No sandbox with this id exists in your account.", nil)
	})
	r := runCLI(t, "", "sandbox", "get", "sbx_gone")
	if r.code != exitError || r.stdout != "" {
		t.Fatalf("%+v", r)
	}
	for _, part := range []string{"sandbox_not_found", "No sandbox with this id", "req_CLI"} {
		if !strings.Contains(r.stderr, part) {
			t.Errorf("stderr %q lacks %q", r.stderr, part)
		}
	}
	// Global flags go anywhere, also after the arguments.
	r = runCLI(t, "", "sandbox", "get", "sbx_gone", "--json")
	var body struct {
		Error struct {
			Status    int    `json:"status"`
			Code      string `json:"code"`
			RequestID string `json:"request_id"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(r.stderr), &body); err != nil || body.Error.Code != "sandbox_not_found" ||
		body.Error.Status != 404 || body.Error.RequestID != "req_CLI" || r.code != exitError {
		t.Errorf("--json error: %v %+v", err, r)
	}
	// A wrong key is an AuthError; the key never shows.
	r = runCLI(t, "", "--api-key", "ork_WRONGKEY123", "limits")
	if r.code != exitError || !strings.Contains(r.stderr, "unauthenticated") || strings.Contains(r.stderr, "WRONGKEY") {
		t.Errorf("wrong key: %+v", r)
	}
}

func TestExecStreamsLiveAndExitsWithTheCommandsStatus(t *testing.T) {
	a, _ := newAPI(t)
	firstSeen := make(chan struct{})
	a.on("POST /v1/sandboxes/sbx_1/exec/stream", func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		want := map[string]any{"command": `python -c 'import sys; sys.exit(3)' --flag 'it'\''s'`, "timeout_seconds": 5.0,
			"env": map[string]any{"A": "1"}, "cwd": "/tmp", "stdin": "input\n"}
		if !reflect.DeepEqual(body, want) {
			t.Errorf("body = %v", body)
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(200)
		_, _ = io.WriteString(w, `{"type":"stdout","data":"first\n"}`+"\n")
		w.(http.Flusher).Flush()
		select { // the CLI must print the first chunk before the command ends
		case <-firstSeen:
		case <-time.After(5 * time.Second):
			t.Error("the first chunk was not printed while the command ran")
		}
		_, _ = io.WriteString(w, `{"type":"stderr","data":"warn\n"}`+"\n"+`{"type":"stdout","data":"last\n"}`+"\n")
		_, _ = io.WriteString(w, `{"type":"exit","exit_code":3,"duration_ms":12,"blocked_connections":[]}`+"\n")
	})
	out := &signalWriter{first: firstSeen}
	var errOut bytes.Buffer
	code := run(context.Background(), []string{"sandbox", "exec", "--timeout", "5", "--env", "A=1", "--cwd", "/tmp", "--stdin",
		"sbx_1", "--", "python", "-c", "import sys; sys.exit(3)", "--flag", "it's"}, strings.NewReader("input\n"), out, &errOut)
	if code != 3 {
		t.Errorf("exit %d, want the command's 3 (stderr %q)", code, errOut.String())
	}
	if out.buf.String() != "first\nlast\n" || errOut.String() != "warn\n" {
		t.Errorf("stdout %q, stderr %q", out.buf.String(), errOut.String())
	}
}

// signalWriter closes first at its first write.
type signalWriter struct {
	buf   bytes.Buffer
	first chan struct{}
}

func (s *signalWriter) Write(p []byte) (int, error) {
	if s.buf.Len() == 0 {
		close(s.first)
	}
	return s.buf.Write(p)
}

func TestExecJSONAndFailures(t *testing.T) {
	a, _ := newAPI(t)
	a.on("POST /v1/sandboxes/sbx_1/exec", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"stdout": "hi\n", "stderr": "", "exit_code": 42, "duration_ms": 7, "blocked_connections": []any{}})
	})
	a.on("POST /v1/sandboxes/sbx_slow/exec/stream", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		_, _ = io.WriteString(w, `{"type":"stdout","data":"partial"}`+"\n"+
			`{"type":"error","error":{"code":"exec_timeout","message":"The command did not finish within 1 seconds.","details":{"duration_ms":1001}}}`+"\n")
	})
	a.on("POST /v1/sandboxes/sbx_paused/exec/stream", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, 409, "sandbox_not_ready", "The sandbox is paused.", map[string]any{"status": "paused"})
	})
	a.on("POST /v1/sandboxes/sbx_blocked/exec/stream", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		_, _ = io.WriteString(w, `{"type":"exit","exit_code":7,"duration_ms":3,"blocked_connections":[{"host":"evil.example","port":443}]}`+"\n")
	})

	r := runCLI(t, "", "sandbox", "exec", "--json", "sbx_1", "echo hi; exit 42")
	var res map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res["stdout"] != "hi\n" || res["exit_code"] != 42.0 || r.code != 42 {
		t.Errorf("exec --json: %v %+v", err, r)
	}
	r = runCLI(t, "", "sandbox", "exec", "sbx_slow", "sleep 9")
	if r.code != exitExecTimeout || r.stdout != "partial" || !strings.Contains(r.stderr, "exec_timeout") {
		t.Errorf("timeout: %+v", r)
	}
	r = runCLI(t, "", "sandbox", "exec", "sbx_paused", "true")
	if r.code != exitExecFailed || !strings.Contains(r.stderr, "sandbox_not_ready") || !strings.Contains(r.stderr, "req_CLI") {
		t.Errorf("not ready: %+v", r)
	}
	r = runCLI(t, "", "sandbox", "exec", "sbx_blocked", "curl https://evil.example")
	if r.code != 7 || !strings.Contains(r.stderr, "evil.example:443") {
		t.Errorf("blocked: %+v", r)
	}
}

func TestLifecycleVerbs(t *testing.T) {
	a, _ := newAPI(t)
	a.on("POST /v1/sandboxes/sbx_1/pause", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"id": "sbx_1", "status": "paused", "snapshot_bytes": 3 << 20})
	})
	a.on("POST /v1/sandboxes/sbx_1/resume", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, sandbox("sbx_1", "running"))
	})
	a.on("DELETE /v1/sandboxes/sbx_1", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, sandbox("sbx_1", "terminated"))
	})
	a.on("POST /v1/sandboxes/sbx_2/pause", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, 402, "snapshot_cap_reached", "Your free plan keeps at most 1 paused sandbox.", map[string]any{"cap": 1})
	})
	if r := runCLI(t, "", "sandbox", "pause", "sbx_1"); r.code != 0 || r.stdout != "paused sbx_1 (snapshot of 3.0 MiB)\n" {
		t.Errorf("pause: %+v", r)
	}
	if r := runCLI(t, "", "sandbox", "pause", "--json", "sbx_1"); r.code != 0 || !strings.Contains(r.stdout, `"snapshot_bytes": 3145728`) {
		t.Errorf("pause --json: %+v", r)
	}
	if r := runCLI(t, "", "sandbox", "pause", "sbx_2"); r.code != exitError || !strings.Contains(r.stderr, "snapshot_cap_reached") {
		t.Errorf("pause over the cap: %+v", r)
	}
	if r := runCLI(t, "", "sandbox", "resume", "sbx_1"); r.code != 0 || !strings.Contains(r.stdout, "running") {
		t.Errorf("resume: %+v", r)
	}
	if r := runCLI(t, "", "sandbox", "rm", "sbx_1"); r.code != 0 || r.stdout != "terminated sbx_1\n" {
		t.Errorf("rm: %+v", r)
	}
}

func TestFiles(t *testing.T) {
	a, _ := newAPI(t)
	stored := map[string][]byte{}
	var mu sync.Mutex
	a.on("PUT /v1/sandboxes/sbx_1/files", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		stored[r.URL.Query().Get("path")] = b
		mu.Unlock()
		writeJSON(w, 200, map[string]any{"path": r.URL.Query().Get("path"), "size": len(b)})
	})
	a.on("GET /v1/sandboxes/sbx_1/files", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		b, ok := stored[r.URL.Query().Get("path")]
		mu.Unlock()
		if !ok {
			writeErr(w, 404, "file_not_found", "No such file or directory in the sandbox.", nil)
			return
		}
		_, _ = w.Write(b)
	})
	a.on("GET /v1/sandboxes/sbx_1/files/list", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"entries": []any{
			map[string]any{"name": "data", "path": "/workspace/data", "is_dir": true, "size": 4096, "mode": 0o755, "modified_at": "2026-05-01T10:00:00.000Z"},
			map[string]any{"name": "main.py", "path": "/workspace/main.py", "is_dir": false, "size": 12, "mode": 0o644, "modified_at": "2026-05-01T10:00:00.000Z"},
		}})
	})
	a.on("DELETE /v1/sandboxes/sbx_1/files", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })

	dir := t.TempDir()
	local := filepath.Join(dir, "in.bin")
	content := []byte("binary\x00\xff content")
	if err := os.WriteFile(local, content, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := runCLI(t, "", "files", "put", local, "sbx_1:/workspace/in.bin"); r.code != 0 || !bytes.Equal(stored["/workspace/in.bin"], content) {
		t.Fatalf("put: %+v", r)
	}
	if r := runCLI(t, "from stdin", "files", "put", "--json", "-", "sbx_1:/workspace/s.txt"); r.code != 0 ||
		string(stored["/workspace/s.txt"]) != "from stdin" || !strings.Contains(r.stdout, `"size": 10`) {
		t.Fatalf("put -: %+v", r)
	}
	if r := runCLI(t, "", "files", "get", "sbx_1:/workspace/in.bin"); r.code != 0 || r.stdout != string(content) {
		t.Errorf("get to stdout: %+v", r)
	}
	out := filepath.Join(dir, "out.bin")
	if r := runCLI(t, "", "files", "get", "sbx_1:/workspace/in.bin", out); r.code != 0 {
		t.Errorf("get to a file: %+v", r)
	}
	if b, _ := os.ReadFile(out); !bytes.Equal(b, content) {
		t.Errorf("downloaded %q", b)
	}
	missing := filepath.Join(dir, "missing")
	if r := runCLI(t, "", "files", "get", "sbx_1:/nope", missing); r.code != exitError || !strings.Contains(r.stderr, "file_not_found") {
		t.Errorf("get missing: %+v", r)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Error("a failed download left a file behind")
	}
	r := runCLI(t, "", "files", "ls", "sbx_1:/workspace")
	if r.code != 0 || !strings.Contains(r.stdout, "drwxr-xr-x") || !strings.Contains(r.stdout, "data/") || !strings.Contains(r.stdout, "-rw-r--r--") {
		t.Errorf("ls: %+v", r)
	}
	r = runCLI(t, "", "files", "ls", "--json", "sbx_1:/workspace")
	var ents []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &ents); err != nil || len(ents) != 2 || ents[0]["is_dir"] != true || ents[1]["mode"] != 420.0 {
		t.Errorf("ls --json: %v %+v", err, r)
	}
	if r := runCLI(t, "", "files", "rm", "sbx_1:/workspace/in.bin"); r.code != 0 {
		t.Errorf("rm: %+v", r)
	}
}

func TestLimitsAndTemplates(t *testing.T) {
	a, _ := newAPI(t)
	a.on("GET /v1/limits", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"plan": "free", "allowed_sizes": []string{"small"}, "max_concurrent": 1, "snapshot_cap": 1,
			"usage_gb_hours_used": 2.5, "usage_gb_hours_included": 10.0, "usage_cpu_hours_used": 0.42, "usage_cpu_hours_included": 2.0,
			"usage_resets_at": "2026-12-01T00:00:00.000Z",
			"sizes": []any{map[string]any{"size": "small", "cpu": 0.5, "memory_mb": 512, "allowed": true},
				map[string]any{"size": "large", "cpu": 4, "memory_mb": 8192, "allowed": false}}})
	})
	a.on("GET /v1/templates", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"data": []any{map[string]any{"name": "python-3.12", "description": "CPython 3.12", "default": true}}})
	})
	r := runCLI(t, "", "limits")
	for _, part := range []string{"free", "2.5 of 10", "0.42 of 2", "2026-12-01", "large", "8192 MB"} {
		if !strings.Contains(r.stdout, part) {
			t.Errorf("limits output lacks %q:\n%s", part, r.stdout)
		}
	}
	r = runCLI(t, "", "--json", "limits")
	var l map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &l); err != nil || l["usage_cpu_hours_used"] != 0.42 || len(l["sizes"].([]any)) != 2 {
		t.Errorf("limits --json: %v %+v", err, r)
	}
	r = runCLI(t, "", "templates")
	if r.code != 0 || !strings.Contains(r.stdout, "python-3.12") || !strings.Contains(r.stdout, "yes") {
		t.Errorf("templates: %+v", r)
	}
	r = runCLI(t, "", "templates", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"name": "python-3.12"`) {
		t.Errorf("templates --json: %+v", r)
	}
	if r := runCLI(t, "", "version"); r.code != 0 || !strings.HasPrefix(r.stdout, "orkestr dev") {
		t.Errorf("version: %+v", r)
	}
}

func TestUsage(t *testing.T) {
	a, _ := newAPI(t)
	a.on("GET /v1/usage", func(w http.ResponseWriter, r *http.Request) {
		u := map[string]any{"mem_mb_seconds": 7372800, "cpu_ms": 360000, "running_seconds": 14400, "gb_hours": 2.0, "cpu_hours": 0.1}
		sb := map[string]any{"sandbox_id": "sbx_A"}
		for k, v := range u {
			sb[k] = v
		}
		per := map[string]any{"start": "2026-11-03T00:00:00.000Z", "end": "2026-11-04T00:00:00.000Z", "sandboxes": []any{sb}}
		for k, v := range u {
			per[k] = v
		}
		writeJSON(w, 200, map[string]any{"account_id": "acc_1", "from": "2026-11-01T00:00:00.000Z", "to": "2026-12-01T00:00:00.000Z",
			"granularity": r.URL.Query().Get("granularity"), "total": u, "sandboxes": []any{sb}, "periods": []any{per}})
	})
	r := runCLI(t, "", "usage", "--from", "2026-11-01", "--hourly")
	for _, part := range []string{"sbx_A", "2 ", "0.1", "14400 s", "7372800 MB·s"} {
		if r.code != 0 || !strings.Contains(r.stdout, part) {
			t.Errorf("usage output lacks %q: %+v", part, r)
		}
	}
	if got := a.requests[len(a.requests)-1]; got != "GET /v1/usage?from=2026-11-01T00%3A00%3A00Z&granularity=hour" {
		t.Errorf("request %s", got)
	}
	r = runCLI(t, "", "usage", "--csv")
	if r.code != 0 || r.stdout != "period_start,period_end,sandbox_id,mem_mb_seconds,cpu_ms,running_seconds\n2026-11-03T00:00:00Z,2026-11-04T00:00:00Z,sbx_A,7372800,360000,14400\n" {
		t.Errorf("usage --csv: %+v", r)
	}
	if r := runCLI(t, "", "usage", "--from", "last week"); r.code != exitUsage {
		t.Errorf("usage --from 'last week': %+v", r)
	}
}

// TestCommandLineKeepsEveryArgument runs the quoted command line through a
// real /bin/sh and checks that each word arrives as one argument, unchanged.
func TestCommandLineKeepsEveryArgument(t *testing.T) {
	for _, words := range [][]string{
		{"$HOME", "a b"},
		{"print(2**100)"},
		{"it's", `"double"`, `back\slash`, "", "*", "~", "a;b", "$(id)", "`id`", "tab\there", "new\nline", "-n", "ünï"},
	} {
		argv := append([]string{"printf", `[%s]\n`}, words...)
		out, err := exec.Command("/bin/sh", "-c", commandLine(argv)).Output()
		if err != nil {
			t.Fatalf("%q: %v", commandLine(argv), err)
		}
		var want strings.Builder
		for _, w := range words {
			want.WriteString("[" + w + "]\n")
		}
		if string(out) != want.String() {
			t.Errorf("%q printed %q, want %q", commandLine(argv), out, want.String())
		}
	}
	// One word is a command line, for the shell to read.
	if got := commandLine([]string{"echo $HOME | wc -c"}); got != "echo $HOME | wc -c" {
		t.Errorf("single word changed: %q", got)
	}
	if got := commandLine([]string{"python3", "-c", "print(2**100)"}); got != `python3 -c 'print(2**100)'` {
		t.Errorf("argv quoted as %q", got)
	}
}

func TestFork(t *testing.T) {
	a, _ := newAPI(t)
	a.on("POST /v1/sandboxes/sbx_1/fork", func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		if body["count"] != 3.0 {
			writeErr(w, 400, "invalid_request", "bad count", nil)
			return
		}
		writeJSON(w, 201, map[string]any{"data": []any{sandbox("sbx_a", "running"), sandbox("sbx_b", "running"), sandbox("sbx_c", "running")}})
	})
	a.on("POST /v1/sandboxes/sbx_2/fork", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, 402, "concurrency_limit", "Your free plan allows 1 sandbox at once.", map[string]any{"max_concurrent": 1})
	})
	if r := runCLI(t, "", "sandbox", "fork", "-n", "3", "sbx_1"); r.code != 0 || r.stdout != "sbx_a\nsbx_b\nsbx_c\n" {
		t.Errorf("fork: %+v", r)
	}
	if r := runCLI(t, "", "sandbox", "fork", "--json", "-n", "3", "sbx_1"); r.code != 0 || strings.Count(r.stdout, `"status": "running"`) != 3 {
		t.Errorf("fork --json: %+v", r)
	}
	if r := runCLI(t, "", "sandbox", "fork", "sbx_2"); r.code != exitError || !strings.Contains(r.stderr, "concurrency_limit") {
		t.Errorf("fork over the limit: %+v", r)
	}
	if r := runCLI(t, "", "sandbox", "fork", "-n", "0", "sbx_1"); r.code == 0 {
		t.Errorf("fork -n 0: %+v", r)
	}
}
