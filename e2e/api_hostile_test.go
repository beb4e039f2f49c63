package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestAuthIsRefusedForBadKeys(t *testing.T) {
	s := startAPI(t, serverOpts{})
	if s.key == "" {
		t.Fatalf("no bootstrap key printed at first start; log:\n%s", s.logText())
	}
	readOnly := s.newKey("default", "", "sandboxes:read")
	expiring := s.newKey("default", "", "sandboxes:write", "--expires", "1s")
	revoked := s.newKey("default", "", "sandboxes:write")
	if r := s.do("GET", "/v1/limits", revoked, nil); r.status != 200 {
		t.Fatalf("fresh key refused: %d %s", r.status, r.body)
	}
	s.admin("key", "revoke", "--account", "default", revoked[:12])
	time.Sleep(1100 * time.Millisecond)

	forged := "ork_" + strings.Repeat("A", 43)
	for name, key := range map[string]string{
		"missing": "", "not a key": "hello", "forged": forged, "revoked": revoked, "expired": expiring,
		"key with suffix": s.key + "x", "truncated": s.key[:20],
	} {
		r := s.do("GET", "/v1/sandboxes", key, nil)
		if r.status != 401 || r.errCode() != "unauthenticated" {
			t.Errorf("%s key: %d %s", name, r.status, r.body)
		}
		if r.header.Get("X-Request-Id") == "" {
			t.Errorf("%s key: no X-Request-Id", name)
		}
		if key != "" && bytes.Contains(r.body, []byte(key)) {
			t.Errorf("%s key: the key is echoed in the error", name)
		}
	}
	r := s.do("POST", "/v1/sandboxes", readOnly, map[string]any{"template": "debian-12"})
	if r.status != 403 || r.errCode() != "insufficient_scope" || r.json(t)["error"].(map[string]any)["details"].(map[string]any)["required_scope"] != "sandboxes:write" {
		t.Fatalf("read-only key creating: %d %s", r.status, r.body)
	}
	if r := s.do("GET", "/v1/sandboxes", readOnly, nil); r.status != 200 {
		t.Fatalf("read-only key listing: %d %s", r.status, r.body)
	}
	for _, k := range []string{s.key, readOnly, expiring, revoked, forged} {
		if strings.Contains(s.logText(), k[12:]) {
			t.Fatal("an API key appears in the server log")
		}
	}
}

// TestKeyGuessingIsSlowedDown: a client that keeps failing to authenticate
// gets 429 with Retry-After, without a store lookup per attempt; it may try
// again after the wait, and a valid key then works.
func TestKeyGuessingIsSlowedDown(t *testing.T) {
	s := startAPI(t, serverOpts{})
	var limited response
	n := 0
	for ; n < 200; n++ {
		guess := fmt.Sprintf("ork_%043d", n)
		r := s.do("GET", "/v1/sandboxes", guess, nil)
		if r.status == 429 {
			limited = r
			break
		}
		if r.status != 401 {
			t.Fatalf("guess %d: %d %s", n, r.status, r.body)
		}
	}
	if limited.status != 429 || limited.errCode() != "rate_limited" {
		t.Fatalf("200 wrong keys in a row were never limited")
	}
	if n < 10 || n > 60 {
		t.Errorf("limited after %d failures; the burst is 20 (plus what refilled meanwhile)", n)
	}
	retry, err := strconv.Atoi(limited.header.Get("Retry-After"))
	if err != nil || retry < 1 {
		t.Fatalf("429 without a usable Retry-After: %q", limited.header.Get("Retry-After"))
	}
	details := limited.json(t)["error"].(map[string]any)["details"].(map[string]any)
	if ms, _ := details["retry_after_ms"].(float64); ms <= 0 {
		t.Fatalf("429 details: %v", details)
	}
	// Missing and malformed keys count the same.
	if r := s.do("GET", "/v1/sandboxes", "", nil); r.status != 429 {
		t.Fatalf("no key while limited: %d %s", r.status, r.body)
	}
	time.Sleep(time.Duration(retry) * time.Second)
	if r := s.do("GET", "/v1/sandboxes", s.key, nil); r.status != 200 {
		t.Fatalf("valid key after the wait: %d %s", r.status, r.body)
	}
}

func TestMalformedRequestsAreRefused(t *testing.T) {
	s := startAPI(t, serverOpts{config: "max_file_bytes: 1048576\n"})
	huge := `{"template":"debian-12","metadata":{"a":"` + strings.Repeat("x", 1<<20) + `"}}`
	cases := []struct {
		name, body string
		status     int
		code       string
	}{
		{"not json", `{"template":`, 400, "invalid_request"},
		{"empty", ``, 400, "invalid_request"},
		{"array", `[]`, 400, "invalid_request"},
		{"unknown field", `{"template":"debian-12","tempalte":"x"}`, 400, "invalid_request"},
		{"wrong type", `{"template":"debian-12","timeout_seconds":"10"}`, 400, "invalid_request"},
		{"two objects", `{"template":"debian-12"}{"template":"debian-12"}`, 400, "invalid_request"},
		{"too large", huge, 413, "payload_too_large"},
		{"unknown template", `{"template":"no-such"}`, 400, "unknown_template"},
		{"template path", `{"template":"../../etc"}`, 400, "unknown_template"},
		{"unknown size", `{"template":"debian-12","size":"huge"}`, 400, "invalid_request"},
		{"unknown region", `{"template":"debian-12","region":"mars1"}`, 400, "unknown_region"},
		{"bad network", `{"template":"debian-12","network":"everything"}`, 400, "invalid_request"},
		{"timeout zero", `{"template":"debian-12","timeout_seconds":0}`, 400, "invalid_request"},
		{"env key", `{"template":"debian-12","env":{"A=B":"x"}}`, 400, "invalid_request"},
		{"env NUL", `{"template":"debian-12","env":{"A":"x\u0000y"}}`, 400, "invalid_request"},
	}
	for _, c := range cases {
		r := s.do("POST", "/v1/sandboxes", s.key, c.body)
		if r.status != c.status || r.errCode() != c.code {
			t.Errorf("%s: got %d %s, want %d %s", c.name, r.status, truncate(string(r.body), 200), c.status, c.code)
		}
	}
	id := s.create(s.key, nil)
	defer s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
	for _, c := range []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"relative path", "GET", "/files?path=etc/passwd", nil, 400, "invalid_path"},
		{"dotdot", "GET", "/files?path=/workspace/../../etc/passwd", nil, 400, "invalid_path"},
		{"NUL", "GET", "/files?path=/etc/pass%00wd", nil, 400, "invalid_path"},
		{"no path", "GET", "/files", nil, 400, "invalid_path"},
		{"two paths", "GET", "/files?path=/a&path=/b", nil, 400, "invalid_path"},
		{"long path", "GET", "/files?path=/" + strings.Repeat("a", 5000), nil, 400, "invalid_path"},
		{"missing file", "GET", "/files?path=/nope", nil, 404, "file_not_found"},
		{"file too large", "PUT", "/files?path=/workspace/big", bytes.Repeat([]byte("x"), 1<<20+1), 413, "payload_too_large"},
		{"exec without command", "POST", "/exec", `{}`, 400, "invalid_request"},
		{"exec bad cwd", "POST", "/exec", `{"command":"pwd","cwd":"relative"}`, 400, "invalid_path"},
		{"exec missing cwd", "POST", "/exec", `{"command":"pwd","cwd":"/nope"}`, 400, "invalid_request"},
		{"exec unknown field", "POST", "/exec", `{"command":"pwd","shell":"bash"}`, 400, "invalid_request"},
		{"patch bad timeout", "PATCH", "", `{"timeout_seconds":-5}`, 400, "invalid_request"},
		{"bad cursor", "GET", "?cursor=garbage", nil, 400, "invalid_request"},
	} {
		path := "/v1/sandboxes/" + id + c.path
		if c.name == "bad cursor" {
			path = "/v1/sandboxes" + c.path
		}
		r := s.do(c.method, path, s.key, c.body)
		if r.status != c.status || r.errCode() != c.code {
			t.Errorf("%s: got %d %s, want %d %s", c.name, r.status, truncate(string(r.body), 200), c.status, c.code)
		}
	}
	// The sandbox survived all of it.
	r := s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": "echo alive"})
	if r.status != 200 || r.json(t)["stdout"] != "alive\n" {
		t.Fatalf("sandbox after hostile requests: %d %s", r.status, r.body)
	}
	if r := s.do("GET", "/v1/nope", s.key, nil); r.status != 404 {
		t.Fatalf("unknown route: %d", r.status)
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// TestOtherAccountsSandboxesAreInvisible tries every route with another
// account's sandbox id: all answer 404 sandbox_not_found and change nothing.
func TestOtherAccountsSandboxesAreInvisible(t *testing.T) {
	s := startAPI(t, serverOpts{})
	mallory := s.newKey("mallory", "team", "sandboxes:write")
	id := s.create(s.key, map[string]any{"metadata": map[string]string{"owner": "alice"}})
	defer s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
	if r := s.do("PUT", "/v1/sandboxes/"+id+"/files?path=/workspace/f", s.key, "alice's"); r.status != 200 {
		t.Fatalf("write: %d %s", r.status, r.body)
	}
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"GET", "", nil}, {"PATCH", "", `{"metadata":{"owner":"mallory"}}`}, {"DELETE", "", nil},
		{"POST", "/pause", nil}, {"POST", "/resume", nil}, {"POST", "/exec", `{"command":"id"}`},
		{"POST", "/exec/stream", `{"command":"id"}`}, {"GET", "/files?path=/workspace/f", nil},
		{"PUT", "/files?path=/workspace/f", "mallory's"}, {"DELETE", "/files?path=/workspace/f", nil},
		{"GET", "/files/list?path=/workspace", nil}, {"GET", "/metrics", nil},
	} {
		r := s.do(c.method, "/v1/sandboxes/"+id+c.path, mallory, c.body)
		if r.status != 404 || r.errCode() != "sandbox_not_found" {
			t.Errorf("mallory %s %s: %d %s", c.method, c.path, r.status, r.body)
		}
		// Indistinguishable from an id that does not exist.
		r2 := s.do(c.method, "/v1/sandboxes/sbx_01HZZZZZZZZZZZZZZZZZZZZZZZ"+c.path, mallory, c.body)
		if r2.status != r.status || r2.errCode() != r.errCode() {
			t.Errorf("mallory %s %s: foreign id %d vs missing id %d", c.method, c.path, r.status, r2.status)
		}
	}
	if r := s.do("GET", "/v1/sandboxes", mallory, nil); !strings.Contains(string(r.body), `"data":[]`) {
		t.Fatalf("mallory's list shows others' sandboxes: %s", r.body)
	}
	r := s.do("GET", "/v1/sandboxes/"+id, s.key, nil)
	if m := r.json(t); m["status"] != "running" || m["metadata"].(map[string]any)["owner"] != "alice" {
		t.Fatalf("alice's sandbox changed: %s", r.body)
	}
	if r := s.do("GET", "/v1/sandboxes/"+id+"/files?path=/workspace/f", s.key, nil); string(r.body) != "alice's" {
		t.Fatalf("alice's file changed: %q", r.body)
	}
}

func TestRateLimitHeadersAnd429(t *testing.T) {
	s := startAPI(t, serverOpts{config: "plans:\n  tiny:\n    allowed_sizes: [small]\n    max_concurrent: 1\n    snapshot_cap: 1\n    rate_limit: {requests_per_second: 1, burst: 3}\n"})
	key := s.newKey("tiny", "tiny", "sandboxes:write")
	var last response
	for i := 0; i < 4; i++ {
		last = s.do("GET", "/v1/limits", key, nil)
		if i < 3 && last.status != 200 {
			t.Fatalf("request %d: %d", i, last.status)
		}
		if last.header.Get("RateLimit-Limit") != "3" || last.header.Get("RateLimit-Remaining") == "" || last.header.Get("RateLimit-Reset") == "" {
			t.Fatalf("rate limit headers missing: %v", last.header)
		}
	}
	if last.status != 429 || last.errCode() != "rate_limited" || last.header.Get("Retry-After") == "" {
		t.Fatalf("4th request: %d %s %v", last.status, last.body, last.header)
	}
	if ms, _ := last.json(t)["error"].(map[string]any)["details"].(map[string]any)["retry_after_ms"].(float64); ms <= 0 || ms > 1000 {
		t.Fatalf("retry_after_ms = %v", ms)
	}
	time.Sleep(1100 * time.Millisecond)
	if r := s.do("GET", "/v1/limits", key, nil); r.status != 200 {
		t.Fatalf("after waiting: %d", r.status)
	}
	// Another key has its own bucket.
	if r := s.do("GET", "/v1/limits", s.key, nil); r.status != 200 {
		t.Fatalf("other key limited: %d", r.status)
	}
}

func TestThousandConcurrentRequests(t *testing.T) {
	s := startAPI(t, serverOpts{config: "plans:\n  team:\n    allowed_sizes: [small, medium, large]\n    max_concurrent: 50\n    snapshot_cap: 10\n    rate_limit: {requests_per_second: 100000, burst: 100000}\n"})
	id := s.create(s.key, nil)
	defer s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
	var wg sync.WaitGroup
	var ok, bad atomic.Int64
	var firstBad atomic.Value
	for i := 0; i < 1000; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			path := []string{"/v1/sandboxes/" + id, "/v1/sandboxes", "/v1/limits", "/v1/templates"}[i%4]
			req, _ := http.NewRequest("GET", s.url+path, nil)
			req.Header.Set("Authorization", "Bearer "+s.key)
			resp, err := httpClient.Do(req)
			if err != nil {
				bad.Add(1)
				firstBad.CompareAndSwap(nil, err.Error())
				return
			}
			resp.Body.Close()
			if resp.StatusCode == 200 {
				ok.Add(1)
			} else {
				bad.Add(1)
				firstBad.CompareAndSwap(nil, fmt.Sprint(path, " ", resp.StatusCode))
			}
		}(i)
	}
	wg.Wait()
	if ok.Load() != 1000 {
		t.Fatalf("%d of 1000 concurrent requests failed (first: %v)", bad.Load(), firstBad.Load())
	}
	if r := s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": "true"}); r.status != 200 {
		t.Fatalf("server after the burst: %d", r.status)
	}
}

func TestEnvValuesNeverLeave(t *testing.T) {
	s := startAPI(t, serverOpts{logLevel: "debug"})
	const secret = "sk-live-very-secret-value-42"
	r := s.do("POST", "/v1/sandboxes", s.key, map[string]any{"template": "debian-12", "env": map[string]string{"OPENAI_API_KEY": secret}})
	if r.status != 201 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	m := r.json(t)
	id := m["id"].(string)
	defer s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
	var seen [][]byte
	seen = append(seen, r.body)
	if keys := m["env_keys"].([]any); len(keys) != 1 || keys[0] != "OPENAI_API_KEY" {
		t.Fatalf("env_keys = %v", keys)
	}
	// The command sees it...
	r = s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": `test "$OPENAI_API_KEY" = ` + secret + ` && echo same`})
	if r.json(t)["stdout"] != "same\n" {
		t.Fatalf("env not in the sandbox: %s", r.body)
	}
	// ...but no API response, error or log line does.
	for _, req := range []struct{ method, path, body string }{
		{"GET", "/v1/sandboxes/" + id, ""}, {"GET", "/v1/sandboxes", ""},
		{"PATCH", "/v1/sandboxes/" + id, `{"metadata":{"a":"b"}}`},
		{"POST", "/v1/sandboxes", `{"template":"debian-12","env":{"BAD-NAME":"` + secret + `"}}`},
		{"POST", "/v1/sandboxes", `{"template":"nope","env":{"K":"` + secret + `"}}`},
		{"POST", "/v1/sandboxes/" + id + "/exec", `{"command":"true","env":{"1BAD":"` + secret + `"}}`},
		{"POST", "/v1/sandboxes/" + id + "/exec", `{"command":"exit 3","env":{"X":"` + secret + `"}}`},
		{"POST", "/v1/sandboxes/" + id + "/pause", ""},
		{"GET", "/v1/sandboxes/" + id, ""},
		{"POST", "/v1/sandboxes/" + id + "/resume", ""},
		{"GET", "/v1/sandboxes/" + id, ""},
	} {
		var body any
		if req.body != "" {
			body = req.body
		}
		seen = append(seen, s.do(req.method, req.path, s.key, body).body)
	}
	for _, b := range seen {
		if bytes.Contains(b, []byte(secret)) {
			t.Fatalf("a response contains the env value: %s", b)
		}
	}
	// After pause and resume the sandbox still has it.
	r = s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": `test "$OPENAI_API_KEY" = ` + secret + ` && echo same`})
	if r.json(t)["stdout"] != "same\n" {
		t.Fatalf("env lost across pause/resume: %s", r.body)
	}
	if strings.Contains(s.logText(), secret) {
		t.Fatal("the server log contains the env value")
	}
}

// TestKilledMidCreate kills the server while creates are in flight; after a
// restart every sandbox is either fully there (running, answering) or
// recorded as failed with no runtime left.
func TestKilledMidCreate(t *testing.T) {
	s := startAPI(t, serverOpts{poolSize: 0})
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", s.url+"/v1/sandboxes", strings.NewReader(`{"template":"debian-12"}`))
			req.Header.Set("Authorization", "Bearer "+s.key)
			if resp, err := httpClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	time.Sleep(120 * time.Millisecond)
	s.stop(syscall.SIGKILL)
	wg.Wait()

	s2 := startAPI(t, serverOpts{poolSize: 0, dataDir: s.dataDir, stateDir: s.stateDir})
	s2.key = s.key
	r := s2.do("GET", "/v1/sandboxes", s2.key, nil)
	page := r.json(t)["data"].([]any)
	if len(page) == 0 {
		t.Fatal("no sandbox rows: the creates never reached the store")
	}
	running := 0
	for _, it := range page {
		sb := it.(map[string]any)
		id := sb["id"].(string)
		switch sb["status"] {
		case "running":
			running++
			if r := s2.do("POST", "/v1/sandboxes/"+id+"/exec", s2.key, map[string]any{"command": "echo ok"}); r.status != 200 {
				t.Errorf("running sandbox %s does not answer: %d %s", id, r.status, r.body)
			}
			s2.do("DELETE", "/v1/sandboxes/"+id, s2.key, nil)
		case "error", "terminated":
		default:
			t.Errorf("sandbox %s left in status %v", id, sb["status"])
		}
	}
	time.Sleep(200 * time.Millisecond)
	if dirs := sandboxIDs(s2.stateDir); len(dirs) != 0 {
		t.Errorf("runtime sandboxes left with no running row: %v", dirs)
	}
	t.Logf("%d rows, %d running after the restart", len(page), running)
}

// TestKilledMidResume kills the server while a resume restores the
// snapshot; after a restart the sandbox is running or paused again (and
// then resumes), never lost, and its files are there.
func TestKilledMidResume(t *testing.T) {
	s := startAPI(t, serverOpts{poolSize: 0})
	id := s.create(s.key, nil)
	s.do("PUT", "/v1/sandboxes/"+id+"/files?path=/workspace/keep", s.key, "kept")
	if r := s.do("POST", "/v1/sandboxes/"+id+"/pause", s.key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequest("POST", s.url+"/v1/sandboxes/"+id+"/resume", nil)
		req.Header.Set("Authorization", "Bearer "+s.key)
		if resp, err := httpClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	time.Sleep(60 * time.Millisecond) // a restore takes well over 100 ms here
	s.stop(syscall.SIGKILL)
	<-done

	s2 := startAPI(t, serverOpts{poolSize: 0, dataDir: s.dataDir, stateDir: s.stateDir})
	st := s2.do("GET", "/v1/sandboxes/"+id, s.key, nil).json(t)["status"]
	t.Logf("after the restart the sandbox is %v", st)
	switch st {
	case "running":
	case "paused":
		if r := s2.do("POST", "/v1/sandboxes/"+id+"/resume", s.key, nil); r.status != 200 {
			t.Fatalf("resume after the restart: %d %s", r.status, r.body)
		}
	default:
		t.Fatalf("sandbox %s is %v after a crash mid-resume, want running or paused", id, st)
	}
	if r := s2.do("GET", "/v1/sandboxes/"+id+"/files?path=/workspace/keep", s.key, nil); string(r.body) != "kept" {
		t.Fatalf("file after the resume: %d %q", r.status, r.body)
	}
	s2.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
	time.Sleep(200 * time.Millisecond)
	if dirs := sandboxIDs(s2.stateDir); len(dirs) != 0 {
		t.Errorf("runtime sandboxes left after the terminate: %v", dirs)
	}
}

func TestRestartKeepsRunningSandboxes(t *testing.T) {
	s := startAPI(t, serverOpts{})
	id := s.create(s.key, map[string]any{"env": map[string]string{"K": "v"}})
	s.do("PUT", "/v1/sandboxes/"+id+"/files?path=/workspace/keep", s.key, "kept")
	s.stop(syscall.SIGTERM)
	s2 := startAPI(t, serverOpts{dataDir: s.dataDir, stateDir: s.stateDir})
	r := s2.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": `cat /workspace/keep; echo " $K"`})
	if r.status != 200 || r.json(t)["stdout"] != "kept v\n" {
		t.Fatalf("sandbox after restart: %d %s", r.status, r.body)
	}
	s2.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
}
