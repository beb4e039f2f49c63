package fleet_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"gopkg.in/yaml.v3"

	openapi "github.com/orkestr-eu/orkestr/api"
	"github.com/orkestr-eu/orkestr/internal/api"
	"github.com/orkestr-eu/orkestr/internal/auth"
	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/fleet"
	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
)

// TestNodeUnavailableAnswersAreDocumented: once a sandbox's node stops
// answering (and before its heartbeat lapses), every call that needs the
// sandbox's runtime answers 503 node_unavailable, and api/openapi.yaml
// lists that answer for each of those operations.
func TestNodeUnavailableAnswersAreDocumented(t *testing.T) {
	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "orkestr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := config.Default()
	cfg.PoolSize = 0
	// Long enough that the sandbox stays running in the store throughout.
	cfg.Fleet = config.Fleet{Enabled: true, NodeToken: token, HeartbeatTimeoutSeconds: 300}
	nd := startNode(t, st, cfg, "a", "fsn1", 4)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	srv := api.New(api.Options{Store: st, Nodes: fleet.NewNodes(fleet.Options{Store: st, Config: cfg, Log: log}), Config: cfg, Log: log})
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	if err := srv.Start(lctx); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	// A second replica, which has not seen the sandbox run: it finds the
	// node through the store, where the first calls it cached.
	srv2 := api.New(api.Options{Store: st, Nodes: fleet.NewNodes(fleet.Options{Store: st, Config: cfg, Log: log}), Config: cfg, Log: log})
	if err := srv2.Start(lctx); err != nil {
		t.Fatal(err)
	}
	hs2 := httptest.NewServer(srv2.Handler())
	defer hs2.Close()
	acct := store.Account{ID: "acc_" + ulid.Make().String(), Name: "gone", Plan: "team", CreatedAt: time.Now().UTC()}
	if err := st.CreateAccount(ctx, acct); err != nil {
		t.Fatal(err)
	}
	key, hash, prefix, _ := auth.NewKey()
	if err := st.CreateKey(ctx, store.APIKey{ID: "key_" + ulid.Make().String(), AccountID: acct.ID, Prefix: prefix, Hash: hash,
		Scopes: []string{store.ScopeSandboxesWrite}, CreatedAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	p := &plane{t: t, url: hs.URL, key: key, st: st}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if list, _ := st.ListNodes(ctx); len(list) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the node never registered")
		}
	}
	s, m := p.do("POST", "/v1/sandboxes", map[string]any{"template": "debian-12"})
	if s != 201 {
		t.Fatalf("create: %d %v", s, m)
	}
	id := m["id"].(string)
	s, m = p.do("POST", "/v1/sandboxes/"+id+"/processes", map[string]any{"command": "sleep 600"})
	if s != 201 && s != 200 {
		t.Fatalf("start a process: %d %v", s, m)
	}
	pid := fmt.Sprint(m["pid"])

	nd.stopOnce() // the node dies; its heartbeat has not lapsed yet

	var arch bytes.Buffer
	tw := tar.NewWriter(&arch)
	_ = tw.WriteHeader(&tar.Header{Name: "a.txt", Mode: 0o644, Size: 1})
	_, _ = tw.Write([]byte("a"))
	_ = tw.Close()
	base := "/v1/sandboxes/" + id
	calls := []struct {
		method, path, spec string // spec: the operation's path in the document
		body               any
	}{
		{"POST", base + "/exec", "/v1/sandboxes/{id}/exec", map[string]any{"command": "true"}},
		{"POST", base + "/exec/stream", "/v1/sandboxes/{id}/exec/stream", map[string]any{"command": "true"}},
		{"GET", base + "/files?path=/workspace/a.txt", "/v1/sandboxes/{id}/files", nil},
		{"PUT", base + "/files?path=/workspace/a.txt", "/v1/sandboxes/{id}/files", []byte("x")},
		{"DELETE", base + "/files?path=/workspace/a.txt", "/v1/sandboxes/{id}/files", nil},
		{"GET", base + "/files/list?path=/workspace", "/v1/sandboxes/{id}/files/list", nil},
		{"GET", base + "/files/stat?path=/workspace", "/v1/sandboxes/{id}/files/stat", nil},
		{"GET", base + "/files/exists?path=/workspace", "/v1/sandboxes/{id}/files/exists", nil},
		{"POST", base + "/files/mkdir", "/v1/sandboxes/{id}/files/mkdir", map[string]any{"path": "/workspace/d"}},
		{"POST", base + "/files/rename", "/v1/sandboxes/{id}/files/rename", map[string]any{"from": "/workspace/a.txt", "to": "/workspace/b.txt"}},
		{"GET", base + "/files/watch?path=/workspace", "/v1/sandboxes/{id}/files/watch", nil},
		{"PUT", base + "/files/archive?path=/workspace", "/v1/sandboxes/{id}/files/archive", arch.Bytes()},
		{"GET", base + "/files/archive?path=/workspace", "/v1/sandboxes/{id}/files/archive", nil},
		{"GET", base + "/metrics", "/v1/sandboxes/{id}/metrics", nil},
		{"POST", base + "/processes", "/v1/sandboxes/{id}/processes", map[string]any{"command": "true"}},
		{"GET", base + "/processes", "/v1/sandboxes/{id}/processes", nil},
		{"GET", base + "/processes/" + pid, "/v1/sandboxes/{id}/processes/{pid}", nil},
		{"GET", base + "/processes/" + pid + "/output", "/v1/sandboxes/{id}/processes/{pid}/output", nil},
		{"POST", base + "/processes/" + pid + "/stdin", "/v1/sandboxes/{id}/processes/{pid}/stdin", map[string]any{"data": "x"}},
		{"POST", base + "/processes/" + pid + "/signal", "/v1/sandboxes/{id}/processes/{pid}/signal", map[string]any{"signal": "SIGTERM"}},
		{"POST", base + "/processes/" + pid + "/wait", "/v1/sandboxes/{id}/processes/{pid}/wait", map[string]any{}},
		{"GET", base + "/pty", "/v1/sandboxes/{id}/pty", nil},
		{"POST", base + "/pause", "/v1/sandboxes/{id}/pause", nil},
	}
	var doc struct {
		Paths      map[string]map[string]any
		Components struct{ Responses map[string]any }
	}
	if err := yaml.Unmarshal(openapi.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	for _, c := range calls {
		for _, replica := range []string{"cached", "fresh"} {
			url := hs.URL
			if replica == "fresh" {
				url = hs2.URL
			}
			call(t, replica, url, key, c.method, c.path, c.body)
		}
		op, ok := doc.Paths[c.spec][strings.ToLower(c.method)].(map[string]any)
		if !ok {
			t.Errorf("%s %s: not in api/openapi.yaml", c.method, c.spec)
			continue
		}
		responses, _ := op["responses"].(map[string]any)
		r503, ok := responses["503"].(map[string]any)
		if !ok {
			t.Errorf("%s %s: api/openapi.yaml lists no 503 answer (node_unavailable)", c.method, c.spec)
			continue
		}
		ref, _ := r503["$ref"].(string)
		resp, _ := doc.Components.Responses[strings.TrimPrefix(ref, "#/components/responses/")].(map[string]any)
		if !strings.Contains(mustJSON(resp), `"node_unavailable"`) {
			t.Errorf("%s %s: its 503 answer (%s) does not list node_unavailable", c.method, c.spec, ref)
		}
	}
}

// call makes one call whose sandbox's node is gone and checks the answer:
// 503 node_unavailable, or, where a replica had the sandbox's runtime and
// the failure comes once an answer has begun, that code in the answer.
func call(t *testing.T, replica, url, key, method, path string, body any) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		bs, _ := json.Marshal(b)
		rd = bytes.NewReader(bs)
	}
	req, _ := http.NewRequest(method, url+path, rd)
	req.Header.Set("Authorization", "Bearer "+key)
	pty := strings.HasSuffix(path, "/pty")
	if pty {
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var answer []byte
	if res.StatusCode != 101 {
		answer, _ = io.ReadAll(res.Body)
	}
	res.Body.Close()
	var e map[string]any
	_ = json.Unmarshal(answer, &e)
	switch {
	case res.StatusCode == 503 && code(e) == "node_unavailable":
	case replica == "cached" && res.StatusCode == 200 && strings.Contains(string(answer), "node_unavailable"):
		// A stream (exec/stream) already answering when its node's
		// failure showed: the code comes in band.
	case replica == "cached" && pty && res.StatusCode == 101:
		// The terminal's session ends with an error message once its
		// node's failure shows.
	default:
		t.Errorf("%s replica: %s %s with its node gone: %d %s, want 503 node_unavailable", replica, method, path, res.StatusCode, strings.TrimSpace(string(answer)))
	}
}
