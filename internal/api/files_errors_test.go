package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestFileErrorsAreTheCallers: every file error a caller can cause is a
// 4xx with a code of its own (issue 16: they were 500 "internal"), and the
// sandbox is whole afterwards.
func TestFileErrorsAreTheCallers(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("files", "team")
	id := h.create(key)
	h.exec(key, id, "ln -s / /workspace/rootlink && echo x > /workspace/file")
	base := "/v1/sandboxes/" + id + "/files"
	cases := []struct {
		method, path string
		status       int
		code         string
	}{
		{"DELETE", "?path=/proc", 409, "busy"},
		{"DELETE", "?path=/proc/1/root", 403, "permission_denied"},
		{"DELETE", "?path=/proc/self/cwd", 403, "permission_denied"},
		{"DELETE", "?path=/workspace/rootlink/proc", 409, "busy"},
		{"DELETE", "?path=/tmp", 409, "busy"},
		{"DELETE", "?path=/dev/shm", 409, "busy"},
		{"DELETE", "?path=/sys/kernel", 409, "read_only"},
		{"DELETE", "?path=/run", 403, "permission_denied"},
		{"PUT", "?path=/sys/kernel/x", 409, "read_only"},
		{"PUT", "?path=/run/agent/token", 403, "permission_denied"},
		{"PUT", "?path=/workspace/file/below", 400, "not_a_directory"},
		{"GET", "?path=/proc/self/mem", 403, "permission_denied"},
		{"GET", "?path=/run/agent/token", 403, "permission_denied"},
		{"GET", "/list?path=/workspace/file", 400, "not_a_directory"},
		{"GET", "/list?path=/run/agent", 403, "permission_denied"},
	}
	for _, c := range cases {
		var body any
		if c.method == "PUT" {
			body = "pwned"
		}
		r := h.do(c.method, base+c.path, key, body)
		if r.status != c.status || r.code() != c.code {
			t.Errorf("%s files%s: %d %s, want %d %s", c.method, c.path, r.status, r.body, c.status, c.code)
			continue
		}
		m := r.json(t)["error"].(map[string]any)
		if d, _ := m["details"].(map[string]any); d["field"] != "path" {
			t.Errorf("%s files%s: details %v, want field path", c.method, c.path, d)
		}
		if msg, _ := m["message"].(string); !strings.Contains(msg, "/") {
			t.Errorf("%s files%s: the message names no path: %q", c.method, c.path, msg)
		}
	}
	if out := h.exec(key, id, "ls -d /bin /etc /workspace/file /run/agent/token && cat /workspace/file"); out != "/bin\n/etc\n/run/agent/token\n/workspace/file\nx\n" {
		t.Fatalf("after the refused requests: %q", out)
	}
	// A link to / is deleted as a link.
	if r := h.do("DELETE", base+"?path=/workspace/rootlink", key, nil); r.status != 204 {
		t.Fatalf("delete the link: %d %s", r.status, r.body)
	}
	if out := h.exec(key, id, "ls /workspace; ls -d /bin"); out != "file\n/bin\n" {
		t.Fatalf("after deleting the link: %q", out)
	}
}

// TestExecNamesTheSandboxEnd: a sandbox terminated under an exec makes the
// exec (and the stream) say so, not "The sandbox is error".
func TestExecNamesTheSandboxEnd(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("ending", "team")
	id := h.create(key)
	id2 := h.create(key)

	type result struct {
		status int
		body   []byte
	}
	var wg sync.WaitGroup
	var plain result
	var stream []map[string]any
	started := make(chan struct{}, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		started <- struct{}{}
		r := h.do("POST", "/v1/sandboxes/"+id+"/exec", key, map[string]any{"command": "sleep 60"})
		plain = result{r.status, r.body}
	}()
	go func() {
		defer wg.Done()
		b, _ := json.Marshal(map[string]any{"command": "echo started; sleep 60"})
		req, _ := http.NewRequest("POST", h.http.URL+"/v1/sandboxes/"+id2+"/exec/stream", bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+key)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return
		}
		defer res.Body.Close()
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			var m map[string]any
			_ = json.Unmarshal(sc.Bytes(), &m)
			stream = append(stream, m)
			if m["type"] == "stdout" {
				started <- struct{}{}
			}
		}
	}()
	<-started
	<-started
	// Both commands run once the stream printed and a process sleeps.
	h.exec(key, id, "for i in $(seq 1 100); do grep -qx sleep /proc/[0-9]*/comm 2>/dev/null && exit 0; sleep 0.1; done; exit 1")
	for _, sb := range []string{id, id2} {
		if r := h.do("DELETE", "/v1/sandboxes/"+sb, key, nil); r.status != 200 {
			t.Fatalf("terminate: %d %s", r.status, r.body)
		}
	}
	wg.Wait()
	var e errorBody
	if err := json.Unmarshal(plain.body, &e); err != nil || plain.status != 409 || e.Error.Code != "sandbox_not_ready" ||
		e.Error.Details["status"] != "terminated" || e.Error.Details["reason"] != "terminated" {
		t.Errorf("exec under a terminate: %d %s", plain.status, plain.body)
	}
	if len(stream) == 0 {
		t.Fatal("the stream said nothing")
	}
	last := stream[len(stream)-1]
	errObj, _ := last["error"].(map[string]any)
	details, _ := errObj["details"].(map[string]any)
	if last["type"] != "error" || errObj["code"] != "sandbox_not_ready" || details["status"] != "terminated" || details["reason"] != "terminated" {
		t.Errorf("stream under a terminate ended with %v", last)
	}
}

// TestExecNamesTheExpiry: a sandbox that reaches its timeout under an exec
// makes the exec say it expired.
func TestExecNamesTheExpiry(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("expiring", "team")
	id := h.create(key)
	done := make(chan resp, 1)
	go func() {
		done <- h.do("POST", "/v1/sandboxes/"+id+"/exec", key, map[string]any{"command": "sleep 60"})
	}()
	h.exec(key, id, "for i in $(seq 1 100); do grep -qx sleep /proc/[0-9]*/comm 2>/dev/null && exit 0; sleep 0.1; done; exit 1")
	h.clock.Advance(48 * time.Hour) // past any timeout_seconds
	r := <-done
	var e errorBody
	if err := json.Unmarshal(r.body, &e); err != nil || r.status != 409 || e.Error.Code != "sandbox_not_ready" ||
		e.Error.Details["status"] != "terminated" || e.Error.Details["reason"] != "expired" {
		t.Errorf("exec under an expiry: %d %s", r.status, r.body)
	}
}
