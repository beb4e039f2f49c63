package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
	"testing"
)

// TestOOMKillAPI: a command over the sandbox's memory is killed (exit 137,
// oom_killed in /exec and in the stream's exit line), the sandbox stays
// running, and the operator metrics count it.
func TestOOMKillAPI(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("oom", "team")
	id := h.create(key)
	bomb := "head -c 800M /dev/zero | tail -n 1 > /dev/null"

	r := h.do("POST", "/v1/sandboxes/"+id+"/exec", key, map[string]any{"command": bomb})
	m := r.json(t)
	if r.status != 200 || m["exit_code"] != 137.0 || m["oom_killed"] != true {
		t.Fatalf("exec of a memory bomb: %d %s", r.status, r.body)
	}
	if st := h.do("GET", "/v1/sandboxes/"+id, key, nil).json(t); st["status"] != "running" || st["error_reason"] != nil {
		t.Fatalf("after the OOM kill the sandbox is %v (%v)", st["status"], st["error_reason"])
	}
	if out := h.exec(key, id, "echo alive"); out != "alive\n" {
		t.Fatalf("after the OOM kill: %q", out)
	}

	r = h.do("POST", "/v1/sandboxes/"+id+"/exec/stream", key, map[string]any{"command": bomb})
	if r.status != 200 {
		t.Fatalf("stream: %d %s", r.status, r.body)
	}
	var exit map[string]any
	sc := bufio.NewScanner(bytes.NewReader(r.body))
	for sc.Scan() {
		var ev map[string]any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("stream line %q: %v", sc.Text(), err)
		}
		if ev["type"] == "exit" || ev["type"] == "error" {
			exit = ev
		}
	}
	if exit == nil || exit["type"] != "exit" || exit["exit_code"] != 137.0 || exit["oom_killed"] != true {
		t.Fatalf("stream's last line: %v (body %q)", exit, r.body)
	}
	// At least the two commands' victims (a bomb may need a second kill).
	metrics := scrape(t, h)
	if m := regexp.MustCompile(`(?m)^orkestr_process_oom_kills_total (\d+)$`).FindStringSubmatch(metrics); m == nil {
		t.Errorf("operator metrics lack orkestr_process_oom_kills_total")
	} else if n, _ := strconv.Atoi(m[1]); n < 2 {
		t.Errorf("operator metrics count %d OOM kills, want at least 2", n)
	} else {
		t.Logf("operator metrics count %d OOM kills", n)
	}
	if out := h.exec(key, id, "echo still"); out != "still\n" {
		t.Fatalf("after the second OOM kill: %q", out)
	}
}
