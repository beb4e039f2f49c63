package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/netpolicy"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// server is one orkestrd serve process.
type server struct {
	t        *testing.T
	cmd      *exec.Cmd
	url      string
	dataDir  string
	stateDir string
	log      *os.File
}

func startServer(t *testing.T, dataDir, stateDir string, poolSize int) *server {
	t.Helper()
	testenv.RequireRoot(t)
	addr := testenv.FreePort(t)
	log, err := os.CreateTemp(t.TempDir(), "orkestrd-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "orkestrd"), "serve",
		"--listen", addr, "--data-dir", dataDir, "--state-dir", stateDir,
		"--runsc", testenv.Runsc(t), "--agent", filepath.Join(binDir, "orkestr-agent"),
		"--template-dir", testenv.TemplateDir(), fmt.Sprintf("--pool-size=%d", poolSize))
	cmd.Stdout = log
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, cmd: cmd, url: "http://" + addr, dataDir: dataDir, stateDir: stateDir, log: log}
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			_ = s.cmd.Process.Kill()
			_ = s.cmd.Wait()
		}
	})
	return s
}

type health struct {
	Status    string `json:"status"`
	Sandboxes int    `json:"sandboxes"`
	Pools     []struct {
		Template  string `json:"template"`
		Networked bool   `json:"networked"`
		Ready     int    `json:"ready"`
		Target    int    `json:"target"`
	} `json:"pools"`
}

// waitPools waits until every pool is full.
func (s *server) waitPools(timeout time.Duration) health {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	var h health
	for time.Now().Before(deadline) {
		resp, err := http.Get(s.url + "/healthz")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
			full := err == nil && len(h.Pools) > 0
			for _, p := range h.Pools {
				full = full && p.Ready == p.Target
			}
			if full {
				return h
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := os.ReadFile(s.log.Name())
	s.t.Fatalf("pools did not fill in %v (last health %+v); server log:\n%s", timeout, h, b)
	return h
}

func (s *server) stop(sig syscall.Signal) {
	s.t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		_ = s.cmd.Process.Kill()
		s.t.Fatalf("orkestrd did not stop on %v", sig)
	}
}

// sandboxIDs lists the sandbox directories in the server's runtime state.
func sandboxIDs(stateDir string) []string {
	ents, _ := os.ReadDir(filepath.Join(stateDir, "sandboxes"))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// serverCgroups lists the sandbox cgroups of the server on dataDir
// ("/orkestr/<instance>/<sandbox>"); other servers on the host (other
// tests) have their own instance.
func serverCgroups(dataDir string) []string {
	var out []string
	for _, g := range cgroupv1.Group("/orkestr/" + node.Instance(dataDir)).Children() {
		out = append(out, string(g))
	}
	return out
}

// TestServeKill9Restart kills the server with SIGKILL while it holds a warm
// pool, restarts it on the same data directory, and checks that the restart
// destroyed every leftover and that a clean stop leaves nothing behind.
func TestServeKill9Restart(t *testing.T) {
	dataDir := t.TempDir()
	stateDir, err := os.MkdirTemp("/run", "orke2e-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(stateDir)

	s1 := startServer(t, dataDir, stateDir, 2)
	s1.waitPools(2 * time.Minute)
	first := sandboxIDs(stateDir)
	if len(first) < 2 {
		t.Fatalf("expected the pool's sandboxes in the state dir, got %v", first)
	}
	if left := netpolicy.Leftovers(node.Instance(dataDir)); len(left) == 0 {
		t.Errorf("the warm pool holds no networked sandbox")
	}
	s1.stop(syscall.SIGKILL)
	if len(testenv.ProcessesMentioning(stateDir)) == 0 {
		t.Fatal("sandboxes should outlive a killed server")
	}

	s2 := startServer(t, dataDir, stateDir, 2)
	s2.waitPools(2 * time.Minute)
	for _, id := range first {
		if procs := testenv.ProcessesMentioning(id); len(procs) > 0 {
			t.Errorf("sandbox %s of the killed server still runs: %v", id, procs)
		}
		if _, err := os.Stat(filepath.Join(stateDir, "sandboxes", id)); err == nil {
			t.Errorf("sandbox %s of the killed server still has its directory", id)
		}
	}
	s2.stop(syscall.SIGTERM)

	if procs := testenv.ProcessesMentioning(stateDir); len(procs) > 0 {
		t.Errorf("processes left after a clean stop: %v", procs)
	}
	if ids := sandboxIDs(stateDir); len(ids) > 0 {
		t.Errorf("sandbox directories left after a clean stop: %v", ids)
	}
	if m := testenv.MountsUnder(stateDir); len(m) > 0 {
		t.Errorf("mounts left after a clean stop: %v", m)
	}
	if left := serverCgroups(dataDir); len(left) > 0 {
		t.Errorf("cgroups left after a clean stop: %v", left)
	}
	// The pools held networked sandboxes too: their namespaces, veths and
	// the server's nftables table are gone as well.
	if left := netpolicy.Leftovers(node.Instance(dataDir)); len(left) > 0 {
		t.Errorf("network state left after a clean stop: %v", left)
	}
	if t.Failed() {
		b, _ := os.ReadFile(s2.log.Name())
		t.Logf("server log:\n%s", strings.TrimSpace(string(b)))
	}
}
