package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/netpolicy"
	"github.com/orkestr-eu/orkestr/internal/netpolicy/nettest"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/testenv"
	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

// netProbe connects to each host:port argument and prints "ok ..." or
// "fail ..." per target; it exits 1 if any failed.
const netProbe = `
import socket, sys
bad = 0
for t in sys.argv[1:]:
    h, p = t.rsplit(":", 1)
    try:
        s = socket.create_connection((h, int(p)), timeout=1.5)
        print("ok", s.recv(100).decode().strip()); s.close()
    except Exception as e:
        print("fail", type(e).__name__); bad = 1
sys.exit(bad)
`

type execJSON struct {
	Stdout             string `json:"stdout"`
	Stderr             string `json:"stderr"`
	ExitCode           int    `json:"exit_code"`
	BlockedConnections []struct {
		Host string `json:"host"`
		Port int    `json:"port"`
	} `json:"blocked_connections"`
}

func (s *apiServer) probe(key, id string, targets ...string) (map[string]string, execJSON) {
	s.t.Helper()
	r := s.do("POST", "/v1/sandboxes/"+id+"/exec", key, map[string]any{"command": "python3 -c '" + netProbe + "' " + strings.Join(targets, " ")})
	if r.status != 200 {
		s.t.Fatalf("exec: %d %s", r.status, r.body)
	}
	var res execJSON
	if err := json.Unmarshal(r.body, &res); err != nil {
		s.t.Fatal(err)
	}
	if res.BlockedConnections == nil {
		s.t.Fatalf("blocked_connections missing or null: %s", r.body)
	}
	lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
	if len(lines) != len(targets) {
		s.t.Fatalf("probe printed %q (stderr %q)", res.Stdout, res.Stderr)
	}
	out := map[string]string{}
	for i, tg := range targets {
		out[tg] = lines[i]
	}
	return out, res
}

func blockedSet(res execJSON) map[string]bool {
	m := map[string]bool{}
	for _, b := range res.BlockedConnections {
		m[fmt.Sprintf("%s:%d", b.Host, b.Port)] = true
	}
	return m
}

func netConfig(in *nettest.Internet) string {
	return fmt.Sprintf("network:\n  allow: [allowed.test, \"*.allowed.test\"]\n  upstreams: [%q]\n  pool_size: 1\n", in.DNS)
}

// TestNetworkPolicyOverHTTP creates sandboxes of each network mode through
// the API (the networked ones claimed from a warm pool), and checks what
// they reach, what exec results report, that pause/resume keeps the
// policy, and that nothing is left on the host afterwards.
func TestNetworkPolicyOverHTTP(t *testing.T) {
	in := nettest.Start(t)
	dataDir := t.TempDir()
	metricsAddr := testenv.FreePort(t)
	s := startAPI(t, serverOpts{poolSize: 1, config: netConfig(in), dataDir: dataDir, logLevel: "info", args: []string{"--metrics-listen", metricsAddr}})
	if s.key == "" {
		t.Fatalf("no key; log:\n%s", s.logText())
	}
	inst := node.Instance(dataDir)
	s.waitPools(2 * time.Minute)

	for _, bad := range []any{"bogus", "", 1, "OPEN"} {
		r := s.do("POST", "/v1/sandboxes", s.key, map[string]any{"template": "python-3.11", "network": bad})
		if r.status != 400 || r.errCode() != "invalid_request" {
			t.Errorf("network %v: %d %s", bad, r.status, r.body)
		}
	}

	restr := s.create(s.key, map[string]any{"template": "python-3.11", "network": "restricted"})
	open := s.create(s.key, map[string]any{"template": "python-3.11", "network": "open"})
	off := s.create(s.key, map[string]any{"template": "python-3.11"})
	if got := s.do("GET", "/v1/sandboxes/"+restr, s.key, nil).json(t)["network"]; got != "restricted" {
		t.Errorf("network field: %v", got)
	}

	res, ex := s.probe(s.key, restr, "allowed.test:8080", "forbidden.test:8080", fmt.Sprintf("%s:8080", nettest.Forbidden), fmt.Sprintf("%s:8080", nettest.Metadata))
	if !strings.HasPrefix(res["allowed.test:8080"], "ok hello") {
		t.Errorf("restricted cannot reach an allowed name: %v", res)
	}
	for _, k := range []string{"forbidden.test:8080", fmt.Sprintf("%s:8080", nettest.Forbidden), fmt.Sprintf("%s:8080", nettest.Metadata)} {
		if !strings.HasPrefix(res[k], "fail") {
			t.Errorf("restricted reached %s: %s", k, res[k])
		}
	}
	bl := blockedSet(ex)
	for _, w := range []string{"forbidden.test:0", fmt.Sprintf("%s:8080", nettest.Forbidden), fmt.Sprintf("%s:8080", nettest.Metadata)} {
		if !bl[w] {
			t.Errorf("blocked_connections lacks %s: %+v", w, ex.BlockedConnections)
		}
	}
	if ex.ExitCode == 0 {
		t.Errorf("probe exit code 0 with failures")
	}

	// The streaming exec's exit line carries them too.
	body, _ := json.Marshal(map[string]any{"command": "python3 -c '" + netProbe + "' forbidden.test:8080"})
	req, _ := http.NewRequest("POST", s.url+"/v1/sandboxes/"+restr+"/exec/stream", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+s.key)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var exit map[string]any
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["type"] == "exit" {
			exit = m
		}
	}
	resp.Body.Close()
	if bc, _ := exit["blocked_connections"].([]any); len(bc) != 1 || !strings.Contains(fmt.Sprint(bc[0]), "forbidden.test") {
		t.Errorf("stream exit line: %v", exit)
	}

	// The Go SDK raises NetworkPolicyError for a failed command with
	// blocked connections, and not for a successful one.
	c, err := orkestr.NewClient(orkestr.WithAPIKey(s.key), orkestr.WithBaseURL(s.url))
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = c.Sandbox(restr).Exec(sctx, "python3 -c '"+netProbe+"' forbidden.test:8080", orkestr.ExecOptions{})
	var npe *orkestr.NetworkPolicyError
	if !errors.As(err, &npe) || len(npe.Result.BlockedConnections) == 0 {
		t.Errorf("SDK: want NetworkPolicyError, got %v", err)
	}
	if _, err = c.Sandbox(restr).Exec(sctx, "python3 -c '"+netProbe+"' allowed.test:8080", orkestr.ExecOptions{}); err != nil {
		t.Errorf("SDK: allowed connection: %v", err)
	}

	res, ex = s.probe(s.key, open, "forbidden.test:8080", "allowed.test:8080", "private.test:8080")
	if !strings.HasPrefix(res["forbidden.test:8080"], "ok hello") || !strings.HasPrefix(res["allowed.test:8080"], "ok hello") || !strings.HasPrefix(res["private.test:8080"], "fail") {
		t.Errorf("open: %v", res)
	}
	if !blockedSet(ex)[fmt.Sprintf("%s:8080", nettest.Private)] && !blockedSet(ex)["private.test:8080"] {
		t.Errorf("open: private attempt not reported: %+v", ex.BlockedConnections)
	}

	res, ex = s.probe(s.key, off, "allowed.test:8080", fmt.Sprintf("%s:8080", nettest.Allowed))
	for k, v := range res {
		if !strings.HasPrefix(v, "fail") {
			t.Errorf("off reached %s", k)
		}
	}
	if len(ex.BlockedConnections) != 0 {
		t.Errorf("off sandbox reports blocked connections: %+v", ex.BlockedConnections)
	}

	// The operator sees refusals counted by reason.
	text := scrape(t, metricsAddr)
	for _, r := range []string{"dns", "policy", "never"} {
		if metricValue(t, text, `orkestr_network_blocked_total{reason="`+r+`"}`) < 1 {
			t.Errorf("orkestr_network_blocked_total{reason=%q} not counted:\n%s", r, text)
		}
	}
	// At least the configured 1: a claim that found the pool empty may
	// have doubled it (the pool follows demand).
	if metricValue(t, text, `orkestr_pool_target{network="on",size="small",template="python-3.11"}`) < 1 {
		t.Errorf("networked pool not in the metrics:\n%s", text)
	}

	// Pause and resume keep the policy.
	if r := s.do("POST", "/v1/sandboxes/"+restr+"/pause", s.key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	if r := s.do("POST", "/v1/sandboxes/"+restr+"/resume", s.key, nil); r.status != 200 {
		t.Fatalf("resume: %d %s", r.status, r.body)
	}
	res, _ = s.probe(s.key, restr, "allowed.test:8080", "forbidden.test:8080")
	if !strings.HasPrefix(res["allowed.test:8080"], "ok") || !strings.HasPrefix(res["forbidden.test:8080"], "fail") {
		t.Errorf("after resume: %v", res)
	}

	// A server killed with networked sandboxes running; the next start
	// adopts the claimed ones with their network, and a terminate plus
	// clean stop leaves nothing.
	s.stop(syscall.SIGKILL)
	if left := netpolicy.Leftovers(inst); len(left) == 0 {
		t.Fatalf("a killed server should leave its network state for the next start")
	}
	s2 := startAPI(t, serverOpts{poolSize: 1, config: netConfig(in), dataDir: dataDir, stateDir: s.stateDir, logLevel: "info"})
	s2.key = s.key
	s2.waitPools(2 * time.Minute)
	res, _ = s2.probe(s2.key, restr, "allowed.test:8080", "forbidden.test:8080")
	if !strings.HasPrefix(res["allowed.test:8080"], "ok") || !strings.HasPrefix(res["forbidden.test:8080"], "fail") {
		t.Errorf("after a restart: %v", res)
	}
	for _, id := range []string{restr, open, off} {
		if r := s2.do("DELETE", "/v1/sandboxes/"+id, s2.key, nil); r.status != 200 {
			t.Errorf("delete %s: %d %s", id, r.status, r.body)
		}
	}
	s2.stop(syscall.SIGTERM)
	if left := netpolicy.Leftovers(inst); len(left) > 0 {
		t.Errorf("network state left after a clean stop: %v", left)
		_ = netpolicy.Cleanup(context.Background(), inst)
	}
	if procs := testenv.ProcessesMentioning(s.stateDir); len(procs) > 0 {
		t.Errorf("processes left: %v", procs)
	}
	if t.Failed() {
		b, _ := os.ReadFile(s2.log.Name())
		t.Logf("server log:\n%s", b)
	}
}
