package e2e

import (
	"syscall"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// TestServeOnPostgres runs the server on PostgreSQL instead of SQLite:
// bootstrap, admin commands while it runs, a sandbox's whole life, and a
// restart that keeps a running sandbox.
func TestServeOnPostgres(t *testing.T) {
	db := testenv.FreshPostgres(t)
	s := startAPI(t, serverOpts{dbURL: db})
	if s.key == "" {
		t.Fatalf("no bootstrap key on a fresh PostgreSQL store; log:\n%s", s.logText())
	}
	other := s.newKey("pg-team", "team", "sandboxes:write")
	id := s.create(other, map[string]any{"env": map[string]string{"A": "1"}})
	if r := s.do("GET", "/v1/sandboxes/"+id, s.key, nil); r.status != 404 {
		t.Fatalf("another account sees the sandbox: %d", r.status)
	}
	if r := s.do("POST", "/v1/sandboxes/"+id+"/pause", other, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	if r := s.do("POST", "/v1/sandboxes/"+id+"/resume", other, nil); r.status != 200 {
		t.Fatalf("resume: %d %s", r.status, r.body)
	}
	s.stop(syscall.SIGTERM)
	s2 := startAPI(t, serverOpts{dbURL: db, dataDir: s.dataDir, stateDir: s.stateDir})
	if s2.key != "" {
		t.Fatal("a second bootstrap key was printed on restart")
	}
	r := s2.do("POST", "/v1/sandboxes/"+id+"/exec", other, map[string]any{"command": "echo $A"})
	if r.status != 200 || r.json(t)["stdout"] != "1\n" {
		t.Fatalf("exec after restart on PostgreSQL: %d %s", r.status, r.body)
	}
	if r := s2.do("DELETE", "/v1/sandboxes/"+id, other, nil); r.status != 200 {
		t.Fatalf("delete: %d", r.status)
	}
}
