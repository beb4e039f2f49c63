package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/netpolicy"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// apiServer is a running orkestrd with its bootstrap key.
type apiServer struct {
	*server
	key    string // bootstrap key of account "default" (plan team)
	config string
	dbURL  string
	// client is the HTTP client of a server that speaks TLS (nil: httpClient).
	client *http.Client
}

type serverOpts struct {
	poolSize int
	config   string // YAML
	dataDir  string // reuse (restart); empty: fresh
	stateDir string
	logLevel string
	dbURL    string // PostgreSQL; empty: SQLite in the data dir
	// templateDir replaces the host's template directory (testenv.TemplateDir).
	templateDir string
	args        []string // more flags for orkestrd serve
	// tlsRoots, when set, says the server speaks TLS (tls: in config) with
	// a certificate these roots verify.
	tlsRoots *x509.CertPool
}

var keyRE = regexp.MustCompile(`ork_[0-9A-Za-z]{43}`)

func startAPI(t *testing.T, o serverOpts) *apiServer {
	t.Helper()
	testenv.RequireRoot(t)
	if o.dataDir == "" {
		o.dataDir = t.TempDir()
	}
	if o.stateDir == "" {
		dir, err := os.MkdirTemp("/run", "orke2e-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		o.stateDir = dir
	}
	cfgPath := filepath.Join(o.dataDir, "config.yaml")
	if o.config != "" {
		if err := os.WriteFile(cfgPath, []byte(o.config), 0o600); err != nil {
			t.Fatal(err)
		}
	} else {
		cfgPath = ""
	}
	if o.logLevel == "" {
		o.logLevel = "debug"
	}
	if o.templateDir == "" {
		o.templateDir = testenv.TemplateDir()
	}
	addr := testenv.FreePort(t)
	log, err := os.CreateTemp(t.TempDir(), "orkestrd-*.log")
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"serve", "--listen", addr, "--data-dir", o.dataDir, "--state-dir", o.stateDir,
		"--runsc", testenv.Runsc(t), "--agent", filepath.Join(binDir, "orkestr-agent"),
		"--template-dir", o.templateDir, fmt.Sprintf("--pool-size=%d", o.poolSize), "--log-level", o.logLevel}
	if cfgPath != "" {
		args = append(args, "--config", cfgPath)
	}
	if o.dbURL != "" {
		args = append(args, "--database-url", o.dbURL)
	}
	args = append(args, o.args...)
	cmd := exec.Command(filepath.Join(binDir, "orkestrd"), args...)
	// stdout carries only the one-time bootstrap key; stderr the log.
	stdout, err := os.CreateTemp(t.TempDir(), "orkestrd-*.out")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = stdout
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &apiServer{server: &server{t: t, cmd: cmd, url: "http://" + addr, dataDir: o.dataDir, stateDir: o.stateDir, log: log}, config: cfgPath, dbURL: o.dbURL}
	health := http.DefaultClient
	if o.tlsRoots != nil {
		s.url = "https://" + addr
		s.client = &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: o.tlsRoots}}}
		health = s.client
	}
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			_ = s.cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = s.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = s.cmd.Process.Kill()
			}
		}
		// Sandboxes a test left running are cleaned up here, so that no
		// test leaks: a fresh server on the same state terminates them.
		s.destroyLeftovers()
	})
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if resp, err := health.Get(s.url + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if s.cmd.ProcessState != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(stdout.Name())
	if m := keyRE.Find(b); m != nil {
		s.key = string(m)
	}
	return s
}

// destroyLeftovers kills every sandbox process of this server's state and
// removes its cgroups and mounts, as a reconcile with nothing kept would.
func (s *apiServer) destroyLeftovers() {
	ents, _ := os.ReadDir(filepath.Join(s.stateDir, "sandboxes"))
	for _, e := range ents {
		_ = exec.Command(testenv.Runsc(s.t), "--root", filepath.Join(s.stateDir, "runsc"), "delete", "--force", e.Name()).Run()
	}
	for _, mp := range testenv.MountsUnder(s.stateDir) {
		_ = syscall.Unmount(mp, syscall.MNT_DETACH)
	}
	_ = netpolicy.Cleanup(context.Background(), node.Instance(s.dataDir))
	// The instance's cgroup parent, which a killed server leaves behind.
	_ = cgroupv1.Group("/orkestr/" + node.Instance(s.dataDir)).Remove()
}

// admin runs `orkestrd admin ARGS --data-dir DIR` and returns stdout.
func (s *apiServer) admin(args ...string) string {
	s.t.Helper()
	args = append([]string{"admin"}, args...)
	args = append(args, "--data-dir", s.dataDir)
	if s.config != "" {
		args = append(args, "--config", s.config)
	}
	if s.dbURL != "" {
		args = append(args, "--database-url", s.dbURL)
	}
	cmd := exec.Command(filepath.Join(binDir, "orkestrd"), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		s.t.Fatalf("orkestrd %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// newKey creates an account (if needed) and a key for it.
func (s *apiServer) newKey(account, plan, scopes string, extra ...string) string {
	s.t.Helper()
	if plan != "" {
		s.admin("account", "create", account, "--plan", plan)
	}
	out := s.admin(append([]string{"key", "create", "--account", account, "--scopes", scopes}, extra...)...)
	sc := bufio.NewScanner(strings.NewReader(out))
	last := ""
	for sc.Scan() {
		last = sc.Text()
	}
	if !keyRE.MatchString(last) {
		s.t.Fatalf("key create printed no key as its last line: %q", out)
	}
	return last
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("status %d, body not JSON: %q", r.status, r.body)
	}
	return m
}

func (r response) errCode() string {
	var m struct {
		Error struct{ Code string } `json:"error"`
	}
	_ = json.Unmarshal(r.body, &m)
	return m.Error.Code
}

var httpClient = &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 0}}

func (s *apiServer) do(method, path, key string, body any) response {
	s.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	case io.Reader:
		rd = b
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, s.url+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	hc := httpClient
	if s.client != nil {
		hc = s.client
	}
	resp, err := hc.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, b}
}

// create makes a sandbox and returns its id.
func (s *apiServer) create(key string, body map[string]any) string {
	s.t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	if body["template"] == nil {
		body["template"] = "debian-12"
	}
	r := s.do("POST", "/v1/sandboxes", key, body)
	if r.status != 201 {
		s.t.Fatalf("create: %d %s", r.status, r.body)
	}
	return r.json(s.t)["id"].(string)
}

func (s *apiServer) logText() string {
	b, _ := os.ReadFile(s.log.Name())
	return string(b)
}
