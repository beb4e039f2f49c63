package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/testenv"
	"github.com/orkestr-eu/orkestr/internal/tlsutil/tlstest"
)

// tlsClient trusts only roots' CA and counts the connections it dials.
func tlsClient(ca *tlstest.CA, dials *int) *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}
	if dials != nil {
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			*dials++
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
	}
	return &http.Client{Transport: tr, Timeout: 2 * time.Minute}
}

func waitLog(t *testing.T, s *apiServer, text string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(s.logText(), text) {
		if time.Now().After(deadline) {
			t.Fatalf("the log never said %q:\n%s", text, s.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServeTLS: orkestrd serves the API and the console over TLS from the
// configured files, re-reads them on SIGHUP while a request is in flight
// (it completes on its connection), refuses TLS < 1.2 and plain HTTP, sets
// the console's cookies Secure, and the CLI reaches it with --ca-bundle.
func TestServeTLS(t *testing.T) {
	dir := t.TempDir()
	ca1, ca2 := tlstest.NewCA(t, "first CA"), tlstest.NewCA(t, "second CA")
	crt, key := ca1.WriteFiles(t, dir, "server", "first", "127.0.0.1")
	s := startAPI(t, serverOpts{tlsRoots: ca1.Pool(),
		config: fmt.Sprintf("tls:\n  cert_file: %s\n  key_file: %s\n", crt, key)})
	if s.key == "" {
		t.Fatalf("server did not start:\n%s", s.logText())
	}
	waitLog(t, s, `"scheme":"https"`, 10*time.Second)
	id := s.create(s.key, nil)
	defer s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)

	// Plain HTTP and TLS 1.1 are not served.
	if resp, err := http.Get(strings.Replace(s.url, "https://", "http://", 1) + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP to the TLS port: %d", resp.StatusCode)
		}
	}
	old := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca1.Pool(), MaxVersion: tls.VersionTLS11}}}
	if _, err := old.Get(s.url + "/healthz"); err == nil {
		t.Error("a TLS 1.1 client was served")
	}

	// An exec in flight on a connection made before the reload.
	dials := 0
	c1 := tlsClient(ca1, &dials)
	execDone := make(chan string, 1)
	go func() {
		body := `{"command":"sleep 3; echo survived"}`
		req, _ := http.NewRequest("POST", s.url+"/v1/sandboxes/"+id+"/exec", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+s.key)
		resp, err := c1.Do(req)
		if err != nil {
			execDone <- "error: " + err.Error()
			return
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		execDone <- fmt.Sprint(resp.StatusCode, " ", m["stdout"])
	}()
	time.Sleep(500 * time.Millisecond)

	crt2, key2 := ca2.WriteFiles(t, dir, "renewed", "second", "127.0.0.1")
	for from, to := range map[string]string{crt2: crt, key2: key} {
		if err := os.Rename(from, to); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, s, "TLS certificate reloaded", 10*time.Second)
	if got := <-execDone; got != "200 survived\n" {
		t.Fatalf("the exec in flight across the reload: %q", got)
	}
	if dials != 1 {
		t.Errorf("the exec's client dialed %d connections, want 1", dials)
	}
	// New connections get the new certificate.
	resp, err := tlsClient(ca2, nil).Get(s.url + "/healthz")
	if err != nil {
		t.Fatalf("a new connection after the reload: %v", err)
	}
	resp.Body.Close()
	if cn := resp.TLS.PeerCertificates[0].Subject.CommonName; cn != "second" {
		t.Errorf("certificate after the reload: %q", cn)
	}
	if _, err := tlsClient(ca1, nil).Get(s.url + "/healthz"); err == nil {
		t.Error("a new connection still got the old certificate")
	}
	s.client = tlsClient(ca2, nil)

	// The console's cookies are Secure when served over TLS.
	resp, err = s.client.Get(s.url + "/console/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(resp.Cookies()) == 0 {
		t.Fatal("the sign-in page set no cookie")
	}
	for _, ck := range resp.Cookies() {
		if !ck.Secure || !ck.HttpOnly {
			t.Errorf("console cookie %s: Secure=%v HttpOnly=%v", ck.Name, ck.Secure, ck.HttpOnly)
		}
	}

	// The CLI, with and without the CA bundle.
	caFile := ca2.WriteCA(t, dir, "ca2.pem")
	cli := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "orkestr"), args...)
		cmd.Env = append(os.Environ(), "ORKESTR_API_KEY="+s.key, "ORKESTR_BASE_URL="+s.url, "ORKESTR_CA_BUNDLE=")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	if out, err := cli("limits"); err == nil || !strings.Contains(out, "certificate") {
		t.Errorf("the CLI without the CA: %v %s", err, out)
	}
	if out, err := cli("--ca-bundle", caFile, "sandbox", "get", id); err != nil || !strings.Contains(out, id) {
		t.Errorf("the CLI with --ca-bundle: %v %s", err, out)
	}
	if r := s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil); r.status != 204 && r.status != 200 {
		t.Errorf("terminate: %d %s", r.status, r.body)
	}
}

// TestServeGracefulStop: on SIGTERM orkestrd stops accepting connections at
// once, lets a request in flight finish, cuts one that outlives the grace
// period, exits 0 and leaves the sandbox running; the next start adopts it.
func TestServeGracefulStop(t *testing.T) {
	dataDir := t.TempDir()
	stateDir, err := os.MkdirTemp("/run", "orke2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(stateDir) })
	s := startAPI(t, serverOpts{dataDir: dataDir, stateDir: stateDir, args: []string{"--shutdown-grace", "8s"}})
	id := s.create(s.key, nil)

	type result struct {
		out string
		err error
	}
	execAsync := func(command string) chan result {
		ch := make(chan result, 1)
		go func() {
			j, _ := json.Marshal(map[string]any{"command": command})
			req, _ := http.NewRequest("POST", s.url+"/v1/sandboxes/"+id+"/exec", bytes.NewReader(j))
			req.Header.Set("Authorization", "Bearer "+s.key)
			resp, err := (&http.Client{Timeout: 5 * time.Minute}).Do(req)
			if err != nil {
				ch <- result{err: err}
				return
			}
			defer resp.Body.Close()
			var m map[string]any
			err = json.NewDecoder(resp.Body).Decode(&m)
			ch <- result{out: fmt.Sprint(resp.StatusCode, " ", m["stdout"]), err: err}
		}()
		return ch
	}
	short := execAsync("sleep 3; echo finished")
	long := execAsync("sleep 600")
	time.Sleep(time.Second)

	stopped := make(chan error, 1)
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	go func() { stopped <- s.cmd.Wait() }()
	waitLog(t, s, "shutting down", 10*time.Second)
	if c, err := net.DialTimeout("tcp", strings.TrimPrefix(s.url, "http://"), time.Second); err == nil {
		c.Close()
		t.Error("the server still accepts connections while stopping")
	}
	if r := <-short; r.err != nil || r.out != "200 finished\n" {
		t.Fatalf("the request in flight: %q %v", r.out, r.err)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("orkestrd exited with %v:\n%s", err, s.logText())
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("orkestrd did not stop within the grace period (+ slack):\n%s", s.logText())
	}
	if r := <-long; r.err == nil {
		t.Errorf("the request that outlived the grace period was answered: %q", r.out)
	}
	if !strings.Contains(s.logText(), "requests still running at the end of the grace period") {
		t.Errorf("no log line about the cut request:\n%s", s.logText())
	}
	// The sandbox process is still there...
	out, err := exec.Command(testenv.Runsc(t), "--root", filepath.Join(stateDir, "runsc"), "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "running") {
		t.Fatalf("no running sandbox after the stop: %v\n%s", err, out)
	}
	// ...and the next start adopts it.
	s2 := startAPI(t, serverOpts{dataDir: dataDir, stateDir: stateDir})
	r := s2.do("GET", "/v1/sandboxes/"+id, s.key, nil)
	if r.status != 200 || r.json(t)["status"] != "running" {
		t.Fatalf("after the restart: %d %s", r.status, r.body)
	}
	r = s2.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": "echo adopted"})
	if r.status != 200 || r.json(t)["stdout"] != "adopted\n" {
		t.Fatalf("exec after the restart: %d %s", r.status, r.body)
	}
	s2.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
}

// TestConfigCheckAndVersion runs the binary's `config check` (secrets from
// a file and the environment, redacted in what it prints; an unknown key
// refused with its line) and `version`.
func TestConfigCheckAndVersion(t *testing.T) {
	dir := t.TempDir()
	urlFile := filepath.Join(dir, "db-url")
	if err := os.WriteFile(urlFile, []byte("postgres://orkestr:db-secret-pw@db.example/orkestr\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("database: {url_file: "+urlFile+"}\nregistries:\n  ghcr.io: {username: bot, token_env: TEST_GHCR_TOKEN}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(path string, env ...string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "orkestrd"), "config", "check", "--config", path)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := check(cfg, "TEST_GHCR_TOKEN=ghcr-secret-token", "ORKESTR_LISTEN=0.0.0.0:8443")
	if err != nil {
		t.Fatalf("config check: %v\n%s", err, out)
	}
	for _, want := range []string{"listen: 0.0.0.0:8443", "url: postgres://orkestr:xxxxx@db.example/orkestr", "token: <redacted>", "config ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("config check does not print %q:\n%s", want, out)
		}
	}
	for _, secret := range []string{"db-secret-pw", "ghcr-secret-token"} {
		if strings.Contains(out, secret) {
			t.Errorf("config check printed the secret %q", secret)
		}
	}
	if out, err := check(cfg); err == nil || !strings.Contains(out, "TEST_GHCR_TOKEN, which is not set") {
		t.Errorf("an unset token_env: %v\n%s", err, out)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("region: fsn1\ntsl:\n  cert_file: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := check(bad); err == nil || !strings.Contains(out, "line 2: field tsl not found") {
		t.Errorf("an unknown key: %v\n%s", err, out)
	}

	// --node: the config as `orkestrd node` reads it, its environment
	// included, and refused without what a node needs.
	nodeCfg := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(nodeCfg, []byte("region: nbg1\nnode: {slots: 4}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	checkNode := func(env ...string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "orkestrd"), "config", "check", "--node", "--config", nodeCfg)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	const nodeToken = "node-secret-token-0123456789abcdef0123"
	nodeEnv := []string{"ORKESTR_NODE_ID=k1", "ORKESTR_NODE_LISTEN=10.0.0.7:7070", "ORKESTR_NODE_TOKEN=" + nodeToken,
		"ORKESTR_DATABASE_URL=postgres://orkestr:db-secret-pw@db.example/orkestr"}
	out, err = checkNode(nodeEnv...)
	if err != nil {
		t.Fatalf("config check --node: %v\n%s", err, out)
	}
	for _, want := range []string{"id: k1", "listen: 10.0.0.7:7070", "slots: 4", "node_token: <redacted>", "region: nbg1"} {
		if !strings.Contains(out, want) {
			t.Errorf("config check --node does not print %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, nodeToken) || strings.Contains(out, "db-secret-pw") {
		t.Errorf("config check --node printed a secret:\n%s", out)
	}
	for i, want := range []string{"a node needs an id", "a node needs --listen", "a node needs the fleet's node token", "a node needs the fleet's PostgreSQL"} {
		env := append([]string{}, nodeEnv...)
		switch i {
		case 0, 1:
			env[i] = strings.SplitN(env[i], "=", 2)[0] + "="
		case 2:
			env[2] = "ORKESTR_NODE_TOKEN=too-short"
		case 3:
			env[3] = "ORKESTR_DATABASE_URL="
		}
		if out, err := checkNode(env...); err == nil || !strings.Contains(out, want) {
			t.Errorf("config check --node, case %d: %v, want %q\n%s", i, err, want, out)
		}
	}

	out2, err := exec.Command(filepath.Join(binDir, "orkestrd"), "version", "--runsc", testenv.Runsc(t)).CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"orkestrd ", "commit ", "database schema version ", "runsc pinned ", "runsc found " + testenv.Runsc(t) + ": runsc version"} {
		if !strings.Contains(string(out2), want) {
			t.Errorf("version does not say %q:\n%s", want, out2)
		}
	}
}
