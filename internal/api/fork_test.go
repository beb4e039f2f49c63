package api

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// stateLoop keeps a value that exists only in the shell's memory (drawn
// inside the sandbox) and a counter, written to /workspace/state ten
// times a second.
// stateLoop writes the first state before it returns (a read right after
// the exec must find it) and then counts in the background.
const stateLoop = `v=$(od -An -N4 -tu4 /dev/urandom | tr -d ' '); i=0; echo "$v 0" > /workspace/state; while true; do i=$((i+1)); echo "$v $i" > /workspace/state.tmp; mv /workspace/state.tmp /workspace/state; sleep 0.1; done >/dev/null 2>&1 &`

func readState(t *testing.T, h *harness, key, id string) (string, int) {
	t.Helper()
	f := strings.Fields(h.exec(key, id, "cat /workspace/state"))
	if len(f) != 2 {
		t.Fatalf("%s: state %q", id, f)
	}
	n, err := strconv.Atoi(f[1])
	if err != nil {
		t.Fatal(err)
	}
	return f[0], n
}

func waitState(t *testing.T, h *harness, key, id string, above int) (string, int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		v, n := readState(t, h, key, id)
		if n > above {
			return v, n
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: counter stuck at %d, want > %d", id, n, above)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestForkRunning(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("forker", "team")
	r := h.do("POST", "/v1/sandboxes", key, map[string]any{"template": "debian-12", "env": map[string]string{"FOO": "bar"}, "metadata": map[string]string{"team": "x"}})
	if r.status != 201 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	parent := r.json(t)["id"].(string)
	h.exec(key, parent, stateLoop)
	pv, before := waitState(t, h, key, parent, 5)

	start := time.Now()
	r = h.do("POST", "/v1/sandboxes/"+parent+"/fork", key, map[string]any{"count": 5})
	if r.status != 201 {
		t.Fatalf("fork: %d %s", r.status, r.body)
	}
	t.Logf("fork of 5 took %v", time.Since(start))
	data := r.json(t)["data"].([]any)
	if len(data) != 5 {
		t.Fatalf("fork made %d sandboxes", len(data))
	}
	ids := map[string]bool{parent: true}
	var clones []string
	for _, d := range data {
		c := d.(map[string]any)
		id := c["id"].(string)
		if ids[id] {
			t.Fatalf("id %s twice", id)
		}
		ids[id] = true
		clones = append(clones, id)
		if c["status"] != "running" || c["template"] != "debian-12" || c["metadata"].(map[string]any)["team"] != "x" || fmt.Sprint(c["env_keys"]) != "[FOO]" {
			t.Fatalf("clone: %v", c)
		}
	}
	// Each clone runs the parent's process with its in-memory value and
	// counter, and the parent's env.
	for _, id := range clones {
		v, n := readState(t, h, key, id)
		if v != pv || n < before {
			t.Fatalf("clone %s state %s %d, parent's was %s %d", id, v, n, pv, before)
		}
		waitState(t, h, key, id, n)
		if got := h.exec(key, id, `echo "$FOO"`); got != "bar\n" {
			t.Fatalf("clone env: %q", got)
		}
		h.exec(key, id, "echo "+id+" > /workspace/mine")
	}
	// They diverge: each sees only its own write; the parent none.
	for _, id := range clones {
		if got := h.exec(key, id, "cat /workspace/mine"); got != id+"\n" {
			t.Fatalf("clone %s sees %q", id, got)
		}
	}
	if got := h.exec(key, parent, "test -e /workspace/mine && echo leak || echo none"); got != "none\n" {
		t.Fatalf("parent: %q", got)
	}
	// The parent kept running throughout, with the same process.
	if v, _ := waitState(t, h, key, parent, before); v != pv {
		t.Fatalf("parent's value changed: %s -> %s", pv, v)
	}
	// Stopping the counter in one clone leaves the others counting.
	h.exec(key, clones[0], `for d in /proc/[0-9]*; do read -r l < $d/stat; case "$l" in *"(sh)"*) [ "${d#/proc/}" != "$$" ] && kill ${d#/proc/};; esac; done; :`)
	_, n1 := readState(t, h, key, clones[1])
	waitState(t, h, key, clones[1], n1)

	// Each clone is metered on its own.
	acct := accountOf(t, h, key)
	for _, id := range clones {
		deadline := time.Now().Add(15 * time.Second)
		for {
			u, err := h.store.SandboxUsage(context.Background(), acct, id)
			if err == nil && u.RunningSeconds > 0 && u.MemMBSeconds > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("clone %s is not metered: %+v %v", id, u, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	// Plan concurrency counts each clone; the fork's snapshot is gone.
	if l := h.do("GET", "/v1/limits", key, nil).json(t); l["max_fork"] != 10.0 {
		t.Fatalf("limits: %v", l)
	}
	if n := len(h.do("GET", "/v1/sandboxes?status=running", key, nil).json(t)["data"].([]any)); n != 6 {
		t.Fatalf("%d running, want 6", n)
	}
	if ents, _ := os.ReadDir(filepath.Join(h.dataDir, "snapshots")); len(ents) != 0 {
		t.Fatalf("the fork left %d snapshots on the node", len(ents))
	}

	// A paused sandbox forks too, and stays paused.
	if r := h.do("POST", "/v1/sandboxes/"+clones[1]+"/pause", key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	r = h.do("POST", "/v1/sandboxes/"+clones[1]+"/fork", key, map[string]any{})
	if r.status != 201 {
		t.Fatalf("fork of a paused sandbox: %d %s", r.status, r.body)
	}
	fromPaused := r.json(t)["data"].([]any)[0].(map[string]any)["id"].(string)
	if got := h.exec(key, fromPaused, "cat /workspace/mine"); got != clones[1]+"\n" {
		t.Fatalf("clone of a paused sandbox sees %q", got)
	}
	if st := h.do("GET", "/v1/sandboxes/"+clones[1], key, nil).json(t)["status"]; st != "paused" {
		t.Fatalf("forked paused sandbox is %v", st)
	}
	if r := h.do("POST", "/v1/sandboxes/"+clones[1]+"/resume", key, nil); r.status != 200 {
		t.Fatalf("resume after fork: %d %s", r.status, r.body)
	}
	waitState(t, h, key, clones[1], n1)
}

func TestForkHostile(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("forker", "team")
	_, other := h.account("other", "team")
	id := h.create(key)
	for _, tc := range []struct {
		body   string
		status int
		code   string
	}{
		{`{"count": 0}`, 400, "invalid_request"},
		{`{"count": -1}`, 400, "invalid_request"},
		{`{"count": 1.5}`, 400, "invalid_request"},
		{`{"count": "3"}`, 400, "invalid_request"},
		{`{"count": 1e12}`, 402, "fork_limit"},
		{`{"count": 99999999999999999999999}`, 400, "invalid_request"},
		{`{"count": 11}`, 402, "fork_limit"},
		{`{"count": 1000000}`, 402, "fork_limit"},
		{`{"count": 1, "extra": true}`, 400, "invalid_request"},
		{`[1]`, 400, "invalid_request"},
	} {
		r := h.rawDo("POST", "/v1/sandboxes/"+id+"/fork", key, []byte(tc.body), false)
		if r.status != tc.status || r.code() != tc.code {
			t.Errorf("%s: %d %s", tc.body, r.status, r.body)
		}
	}
	// Another account's sandbox does not exist for the caller.
	if r := h.do("POST", "/v1/sandboxes/"+id+"/fork", other, map[string]any{"count": 1}); r.status != 404 {
		t.Fatalf("fork of another account's sandbox: %d %s", r.status, r.body)
	}
	if r := h.do("POST", "/v1/sandboxes/sbx_nope/fork", key, map[string]any{"count": 1}); r.status != 404 {
		t.Fatalf("fork of a missing sandbox: %d %s", r.status, r.body)
	}
	// A malformed id is not found whatever the count (the plan's fork limit
	// is not an answer about a sandbox that does not exist).
	for _, path := range []string{"/v1/sandboxes/0/fork", "/v1/sandboxes/sbx_nope/fork", "/v1/sandboxes/" + id + "x/fork"} {
		if r := h.do("POST", path, key, map[string]any{"count": 209}); r.status != 404 {
			t.Fatalf("%s with count 209: %d %s", path, r.status, r.body)
		}
	}
	if r := h.do("POST", "/v1/sandboxes/"+id+"/fork", other, map[string]any{"count": 209}); r.status != 404 {
		t.Fatalf("fork of another account's sandbox with count 209: %d %s", r.status, r.body)
	}
	// A free plan's single slot is taken by the source: all or nothing.
	_, free := h.account("free", "free")
	fid := h.create(free)
	if r := h.do("POST", "/v1/sandboxes/"+fid+"/fork", free, map[string]any{"count": 1}); r.status != 402 || r.code() != "concurrency_limit" {
		t.Fatalf("fork over the concurrency limit: %d %s", r.status, r.body)
	}
	if n := len(h.do("GET", "/v1/sandboxes", free, nil).json(t)["data"].([]any)); n != 1 {
		t.Fatalf("a refused fork left %d sandboxes", n)
	}
	// A terminated sandbox cannot be forked.
	if r := h.do("DELETE", "/v1/sandboxes/"+id, key, nil); r.status != 200 {
		t.Fatal(r.status)
	}
	if r := h.do("POST", "/v1/sandboxes/"+id+"/fork", key, map[string]any{"count": 1}); r.status != 409 || r.code() != "sandbox_not_ready" {
		t.Fatalf("fork of a terminated sandbox: %d %s", r.status, r.body)
	}
	// Nothing was made for the other account or by the refusals.
	if n := len(h.do("GET", "/v1/sandboxes", other, nil).json(t)["data"].([]any)); n != 0 {
		t.Fatalf("the other account has %d sandboxes", n)
	}
	if n := len(h.do("GET", "/v1/sandboxes", key, nil).json(t)["data"].([]any)); n != 1 {
		t.Fatalf("refused forks left %d sandboxes", n)
	}
}
