package e2e

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestSandboxLifecycleOverHTTP(t *testing.T) {
	s := startAPI(t, serverOpts{})
	r := s.do("POST", "/v1/sandboxes", s.key, map[string]any{
		"template": "debian-12", "timeout_seconds": 300, "metadata": map[string]string{"agentRun": "r_123", "ünï \"q\"": "v"},
	})
	if r.status != 201 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	sb := r.json(t)
	id := sb["id"].(string)
	if !strings.HasPrefix(id, "sbx_") || len(id) != 30 || sb["status"] != "running" || sb["size"] != "small" || sb["cpu"] != 0.5 ||
		sb["memory_mb"] != 512.0 || sb["network"] != "off" || sb["region"] != "fsn1" || sb["paused_at"] != nil || sb["expires_at"] == nil {
		t.Fatalf("created sandbox: %s", r.body)
	}
	if md := sb["metadata"].(map[string]any); md["agentRun"] != "r_123" || md["ünï \"q\""] != "v" {
		t.Fatalf("metadata keys changed: %v", md)
	}
	if r.header.Get("X-Request-Id") == "" {
		t.Fatal("no request id")
	}

	// Files.
	if r := s.do("PUT", "/v1/sandboxes/"+id+"/files?path=/workspace/dir/main.sh", s.key, "echo $((6*7))"); r.status != 200 || r.json(t)["size"] != 13.0 {
		t.Fatalf("put: %d %s", r.status, r.body)
	}
	if r := s.do("GET", "/v1/sandboxes/"+id+"/files?path=/workspace/dir/main.sh", s.key, nil); string(r.body) != "echo $((6*7))" || r.header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("get: %d %q", r.status, r.body)
	}
	r = s.do("GET", "/v1/sandboxes/"+id+"/files/list?path=/workspace", s.key, nil)
	ents := r.json(t)["entries"].([]any)
	if len(ents) != 1 || ents[0].(map[string]any)["name"] != "dir" || ents[0].(map[string]any)["is_dir"] != true {
		t.Fatalf("list: %s", r.body)
	}

	// Exec.
	r = s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": "sh dir/main.sh; echo err >&2; exit 4", "env": map[string]string{"X": "y"}})
	if m := r.json(t); r.status != 200 || m["stdout"] != "42\n" || m["stderr"] != "err\n" || m["exit_code"] != 4.0 || m["blocked_connections"] == nil {
		t.Fatalf("exec: %d %s", r.status, r.body)
	}
	r = s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": "cat", "stdin": "from stdin"})
	if r.json(t)["stdout"] != "from stdin" {
		t.Fatalf("stdin: %s", r.body)
	}
	r = s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": "echo partial; sleep 30", "timeout_seconds": 1})
	if r.status != 408 || r.errCode() != "exec_timeout" || !strings.Contains(string(r.body), "partial") {
		t.Fatalf("exec timeout: %d %s", r.status, r.body)
	}

	// Stream: chunks arrive before the command ends.
	req, _ := http.NewRequest("POST", s.url+"/v1/sandboxes/"+id+"/exec/stream", strings.NewReader(`{"command":"echo one; sleep 1; echo two >&2; exit 3"}`))
	req.Header.Set("Authorization", "Bearer "+s.key)
	start := time.Now()
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	var lines []map[string]any
	var firstAt time.Duration
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("stream line %q: %v", sc.Text(), err)
		}
		if len(lines) == 0 {
			firstAt = time.Since(start)
		}
		lines = append(lines, m)
	}
	resp.Body.Close()
	if resp.Header.Get("Content-Type") != "application/x-ndjson" || len(lines) != 3 ||
		lines[0]["type"] != "stdout" || lines[0]["data"] != "one\n" || lines[1]["type"] != "stderr" ||
		lines[2]["type"] != "exit" || lines[2]["exit_code"] != 3.0 {
		t.Fatalf("stream: %v", lines)
	}
	if firstAt > 800*time.Millisecond {
		t.Fatalf("first chunk arrived after %v, not while the command ran", firstAt)
	}

	// Metrics while running.
	time.Sleep(2100 * time.Millisecond)
	r = s.do("GET", "/v1/sandboxes/"+id+"/metrics", s.key, nil)
	if m := r.json(t); m["cpu"] == nil || m["memory"] == nil || len(m["samples"].([]any)) == 0 || m["sample_interval_seconds"] != 1.0 {
		t.Fatalf("metrics: %s", r.body)
	}

	// PATCH.
	r = s.do("PATCH", "/v1/sandboxes/"+id, s.key, map[string]any{"timeout_seconds": 120, "metadata": map[string]string{"k": "v"}})
	if m := r.json(t); m["timeout_seconds"] != 120.0 || m["metadata"].(map[string]any)["k"] != "v" {
		t.Fatalf("patch: %s", r.body)
	}

	// Pause: the sandbox stops answering until resumed; the clock stops.
	r = s.do("POST", "/v1/sandboxes/"+id+"/pause", s.key, nil)
	if m := r.json(t); r.status != 200 || m["status"] != "paused" || m["snapshot_bytes"].(float64) <= 0 || m["id"] != id {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	if r := s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": "true"}); r.status != 409 || r.errCode() != "sandbox_not_ready" {
		t.Fatalf("exec while paused: %d %s", r.status, r.body)
	}
	r = s.do("GET", "/v1/sandboxes/"+id+"/metrics", s.key, nil)
	if m := r.json(t); m["cpu"] != nil || m["memory"] != nil || len(m["samples"].([]any)) != 0 || m["lifetime"] == nil {
		t.Fatalf("metrics while paused: %s", r.body)
	}
	if m := s.do("GET", "/v1/sandboxes/"+id, s.key, nil).json(t); m["status"] != "paused" || m["paused_at"] == nil || m["expires_at"] != nil {
		t.Fatalf("paused sandbox: %v", m)
	}
	r = s.do("POST", "/v1/sandboxes/"+id+"/resume", s.key, nil)
	if m := r.json(t); r.status != 200 || m["status"] != "running" {
		t.Fatalf("resume: %d %s", r.status, r.body)
	}
	if r := s.do("GET", "/v1/sandboxes/"+id+"/files?path=/workspace/dir/main.sh", s.key, nil); string(r.body) != "echo $((6*7))" {
		t.Fatalf("file after resume: %q", r.body)
	}

	// Terminate, twice.
	for i := 0; i < 2; i++ {
		r = s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
		if m := r.json(t); r.status != 200 || m["status"] != "terminated" || m["terminated_at"] == nil {
			t.Fatalf("delete %d: %d %s", i, r.status, r.body)
		}
	}
	if r := s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": "true"}); r.status != 409 || !strings.Contains(string(r.body), `"status":"terminated"`) {
		t.Fatalf("exec after terminate: %d %s", r.status, r.body)
	}
	if r := s.do("GET", "/v1/sandboxes?status=terminated", s.key, nil); !strings.Contains(string(r.body), id) {
		t.Fatalf("terminated sandbox not in history: %s", r.body)
	}
}

func TestPlanLimits(t *testing.T) {
	s := startAPI(t, serverOpts{config: "plans:\n  free:\n    allowed_sizes: [small]\n    max_concurrent: 2\n    snapshot_cap: 1\n    rate_limit: {requests_per_second: 100, burst: 100}\n"})
	key := s.newKey("freebie", "free", "sandboxes:write")
	r := s.do("POST", "/v1/sandboxes", key, map[string]any{"template": "debian-12", "size": "medium"})
	if r.status != 402 || r.errCode() != "size_not_allowed" {
		t.Fatalf("medium on free: %d %s", r.status, r.body)
	}
	a := s.create(key, nil)
	b := s.create(key, nil)
	r = s.do("POST", "/v1/sandboxes", key, map[string]any{"template": "debian-12"})
	if r.status != 402 || r.errCode() != "concurrency_limit" {
		t.Fatalf("third sandbox: %d %s", r.status, r.body)
	}
	if r := s.do("POST", "/v1/sandboxes/"+a+"/pause", key, nil); r.status != 200 {
		t.Fatalf("pause a: %d %s", r.status, r.body)
	}
	r = s.do("POST", "/v1/sandboxes/"+b+"/pause", key, nil)
	if r.status != 402 || r.errCode() != "snapshot_cap_reached" || !strings.Contains(string(r.body), `"cap":1`) {
		t.Fatalf("second pause over cap 1: %d %s", r.status, r.body)
	}
	// The refused pause left b running.
	if r := s.do("POST", "/v1/sandboxes/"+b+"/exec", key, map[string]any{"command": "true"}); r.status != 200 {
		t.Fatalf("b after refused pause: %d %s", r.status, r.body)
	}
	// a is paused, b runs; c takes the second slot, so resuming a is over
	// the limit and leaves a paused; once c is gone a resumes.
	c := s.create(key, nil)
	r = s.do("POST", "/v1/sandboxes/"+a+"/resume", key, nil)
	if r.status != 402 || r.errCode() != "concurrency_limit" {
		t.Fatalf("resume over the limit: %d %s", r.status, r.body)
	}
	if m := s.do("GET", "/v1/sandboxes/"+a, key, nil).json(t); m["status"] != "paused" {
		t.Fatalf("a after a refused resume: %v", m)
	}
	s.do("DELETE", "/v1/sandboxes/"+c, key, nil)
	if r := s.do("POST", "/v1/sandboxes/"+a+"/resume", key, nil); r.status != 200 {
		t.Fatalf("resume after a slot freed: %d %s", r.status, r.body)
	}
	r = s.do("GET", "/v1/limits", key, nil)
	if m := r.json(t); m["plan"] != "free" || m["max_concurrent"] != 2.0 || m["snapshot_cap"] != 1.0 || len(m["sizes"].([]any)) != 3 {
		t.Fatalf("limits: %s", r.body)
	}
	s.do("DELETE", "/v1/sandboxes/"+a, key, nil)
	s.do("DELETE", "/v1/sandboxes/"+b, key, nil)
}

func TestTimeoutCountsRunningTimeOnly(t *testing.T) {
	s := startAPI(t, serverOpts{})
	id := s.create(s.key, map[string]any{"timeout_seconds": 3})
	if r := s.do("POST", "/v1/sandboxes/"+id+"/pause", s.key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	time.Sleep(4 * time.Second) // paused: the clock does not run
	if r := s.do("POST", "/v1/sandboxes/"+id+"/resume", s.key, nil); r.status != 200 {
		t.Fatalf("resume after 4 s paused with a 3 s timeout: %d %s", r.status, r.body)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := s.do("GET", "/v1/sandboxes/"+id, s.key, nil).json(t); m["status"] == "terminated" {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatal("sandbox was not terminated at its deadline")
}

func TestListPagesNewestFirst(t *testing.T) {
	s := startAPI(t, serverOpts{poolSize: 0})
	var ids []string
	for i := 0; i < 5; i++ {
		id := s.create(s.key, nil)
		ids = append(ids, id)
		s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
	}
	var got []string
	cursor := ""
	pages := 0
	for {
		path := "/v1/sandboxes?limit=2"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		m := s.do("GET", path, s.key, nil).json(t)
		pages++
		for _, it := range m["data"].([]any) {
			got = append(got, it.(map[string]any)["id"].(string))
		}
		if m["next_cursor"] == nil {
			break
		}
		cursor = m["next_cursor"].(string)
	}
	if pages != 3 || len(got) != 5 {
		t.Fatalf("%d pages, %d items", pages, len(got))
	}
	for i := range got {
		if got[i] != ids[len(ids)-1-i] {
			t.Fatalf("order: got %v, created %v", got, ids)
		}
	}
	if r := s.do("GET", "/v1/sandboxes?limit=201", s.key, nil); r.status != 400 {
		t.Fatalf("limit 201: %d", r.status)
	}
}
