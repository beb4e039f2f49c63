// Package kubeapi gives tests a real Kubernetes control plane without a
// cluster: Debian's etcd and kube-apiserver (built from the Go module proxy
// by `make test-k8s`, pinned in tools/kube-apiserver), both on loopback
// ports, with their data in the test's temporary directory. There is no
// kubelet, scheduler or controller-manager: objects are stored, validated
// and admitted exactly as in a cluster, but no controller acts on them — a
// DaemonSet makes no pods and no pod ever runs. Tests that need pods create
// them and set their status themselves.
//
// Tests using it are skipped unless ORKESTR_KUBE_APISERVER names the
// kube-apiserver binary (make test-k8s sets it).
package kubeapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// Options change how the API server is started.
type Options struct {
	// AllowPrivileged is kube-apiserver's --allow-privileged: without it,
	// a pod or pod template with a privileged container is invalid.
	AllowPrivileged bool
}

// Server is a running etcd + kube-apiserver pair.
type Server struct {
	URL        string // https://127.0.0.1:PORT
	CAFile     string // the serving certificate's chain, for clients
	Kubeconfig string // a kubeconfig for the admin (system:masters)
	AdminToken string

	dir    string
	client *http.Client
	procs  []proc
}

// Binary is the kube-apiserver to run, or "" when the k8s tier is not set up.
func Binary() string { return os.Getenv("ORKESTR_KUBE_APISERVER") }

// Start runs etcd and kube-apiserver for the rest of the test and waits
// until the API server is ready (its post-start hooks, the bootstrap RBAC
// roles included, have run). Both are stopped and their data removed when
// the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: this test starts etcd and kube-apiserver (make test-k8s)")
	}
	bin := Binary()
	if bin == "" {
		t.Skip("ORKESTR_KUBE_APISERVER is not set: the Kubernetes tier runs with `make test-k8s`")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("kube-apiserver %s: %v (make test-k8s builds it into bin/tools)", bin, err)
	}
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatal("etcd is not installed: make test-k8s installs Debian's etcd-server")
	}
	dir := t.TempDir()
	s := &Server{dir: dir}

	clientURL := "http://" + testenv.FreePort(t)
	peerURL := "http://" + testenv.FreePort(t)
	s.start(t, "etcd", etcd,
		"--name=orkestr-test",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+clientURL, "--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=orkestr-test="+peerURL,
		"--logger=zap", "--log-outputs=stderr")
	s.waitFor(t, "etcd", func() error {
		resp, err := http.Get(clientURL + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !bytes.Contains(b, []byte(`"health":"true"`)) {
			return fmt.Errorf("health: %s %s", resp.Status, b)
		}
		return nil
	})

	// Service-account tokens (TokenRequest) are signed with this key.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "sa.key")
	writeFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	// The admin authenticates with a static token in system:masters.
	s.AdminToken = randomHex(t)
	tokenFile := filepath.Join(dir, "tokens.csv")
	writeFile(t, tokenFile, []byte(s.AdminToken+`,orkestr-test-admin,orkestr-test-admin,"system:masters"`+"\n"))

	addr := testenv.FreePort(t)
	_, port, _ := strings.Cut(addr, ":")
	certDir := filepath.Join(dir, "certs")
	s.URL = "https://" + addr
	s.start(t, "kube-apiserver", bin,
		"--etcd-servers="+clientURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port="+port,
		// A loopback address may not be published as the kubernetes
		// Service's endpoint; nothing here would use it.
		"--endpoint-reconciler-type=none",
		"--cert-dir="+certDir,
		"--token-auth-file="+tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+keyFile, "--service-account-signing-key-file="+keyFile,
		// Service IPs are only allocated here: nothing routes them.
		"--service-cluster-ip-range=10.0.0.0/24",
		fmt.Sprintf("--allow-privileged=%t", opts.AllowPrivileged))

	// kube-apiserver writes a self-signed CA and a serving certificate for
	// 127.0.0.1 into --cert-dir before it listens.
	s.CAFile = filepath.Join(certDir, "apiserver.crt")
	s.waitFor(t, "kube-apiserver's serving certificate", func() error {
		_, err := os.Stat(s.CAFile)
		return err
	})
	pool := x509.NewCertPool()
	pemBytes, err := os.ReadFile(s.CAFile)
	if err != nil || !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("kube-apiserver's certificate %s: %v", s.CAFile, err)
	}
	s.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	s.waitFor(t, "kube-apiserver", func() error {
		code, body, err := s.Raw(context.Background(), s.AdminToken, "GET", "/readyz", nil)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("readyz: %d %s", code, body)
		}
		return nil
	})
	s.Kubeconfig = filepath.Join(dir, "kubeconfig")
	writeFile(t, s.Kubeconfig, []byte(s.kubeconfig(s.AdminToken)))
	return s
}

// KubeconfigFor writes a kubeconfig that authenticates with token (for
// example a service account's, from ServiceAccountToken).
func (s *Server) KubeconfigFor(t testing.TB, token string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "kubeconfig")
	writeFile(t, f, []byte(s.kubeconfig(token)))
	return f
}

func (s *Server) kubeconfig(token string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: test
  user:
    token: %s
contexts:
- name: test
  context: {cluster: test, user: test}
current-context: test
`, s.URL, s.CAFile, token)
}

// Raw sends one request with token as bearer and returns the status and
// body.
func (s *Server) Raw(ctx context.Context, token, method, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, s.URL+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		ct := "application/json"
		if method == http.MethodPatch {
			ct = "application/merge-patch+json"
		}
		req.Header.Set("Content-Type", ct)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return resp.StatusCode, b, err
}

// Do sends a request as the admin with in marshalled as JSON (nil: no
// body), fails the test unless the status is 2xx, and decodes the answer
// into out (unless nil).
func (s *Server) Do(t testing.TB, method, path string, in, out any) {
	t.Helper()
	code, b, err := s.Try(method, path, in, out)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if code/100 != 2 {
		t.Fatalf("%s %s: HTTP %d: %s", method, path, code, b)
	}
}

// Try is Do without failing: the status, the body, and an error only for
// a failed request.
func (s *Server) Try(method, path string, in, out any) (int, []byte, error) {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return 0, nil, err
		}
	}
	code, b, err := s.Raw(context.Background(), s.AdminToken, method, path, body)
	if err == nil && out != nil && code/100 == 2 {
		err = json.Unmarshal(b, out)
	}
	return code, b, err
}

// ServiceAccountToken asks the API server for a token of a service account
// (TokenRequest), as the kubelet would for a pod running as it.
func (s *Server) ServiceAccountToken(t testing.TB, namespace, name string) string {
	t.Helper()
	var tr struct {
		Status struct {
			Token string `json:"token"`
		} `json:"status"`
	}
	s.Do(t, "POST", "/api/v1/namespaces/"+namespace+"/serviceaccounts/"+name+"/token",
		map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": map[string]any{"expirationSeconds": 3600}}, &tr)
	if tr.Status.Token == "" {
		t.Fatalf("no token for service account %s/%s", namespace, name)
	}
	return tr.Status.Token
}

// HTTPClient trusts the API server's certificate.
func (s *Server) HTTPClient() *http.Client { return s.client }

// start runs a process for the rest of the test; its output goes to a log
// file printed (the tail) if the test fails. It is killed with the test
// process too (Pdeathsig), so an interrupted run leaves nothing behind.
func (s *Server) start(t testing.TB, name, bin string, args ...string) {
	t.Helper()
	logPath := filepath.Join(s.dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			t.Logf("%s's log (tail):\n%s", name, b)
		}
	})
	s.procs = append(s.procs, proc{name, done})
}

type proc struct {
	name string
	done chan error
}

// waitFor polls check until it passes; it fails the test when a process
// exited or after three minutes (a cold start on a loaded 2-core host takes
// tens of seconds).
func (s *Server) waitFor(t testing.TB, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	var last error
	for time.Now().Before(deadline) {
		for _, p := range s.procs {
			select {
			case err := <-p.done:
				p.done <- err
				t.Fatalf("%s exited while waiting for %s: %v", p.name, what, err)
			default:
			}
		}
		if last = check(); last == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s not ready after 3 minutes: %v", what, last)
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func randomHex(t testing.TB) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// Chart is the repository's Helm chart.
func Chart() string { return filepath.Join(testenv.RepoRoot(), "deploy/helm/orkestr") }

// Helm runs helm (bin/tools/helm, from $ORKESTR_RELEASE_TOOLS) against this
// API server as the admin, with its own config, cache and data homes so
// the operator's are neither read nor written. It returns stdout, or an
// error carrying stderr.
func (s *Server) Helm(t testing.TB, args ...string) (string, error) {
	t.Helper()
	tools := os.Getenv("ORKESTR_RELEASE_TOOLS")
	if tools == "" {
		t.Fatal("ORKESTR_RELEASE_TOOLS is not set: make test-k8s builds helm into bin/tools")
	}
	home := t.TempDir()
	cmd := exec.Command(filepath.Join(tools, "helm"), append(args, "--kubeconfig", s.Kubeconfig)...)
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+home, "HELM_CACHE_HOME="+home, "HELM_DATA_HOME="+home, "KUBECONFIG=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// Namespace creates a namespace with labels and its "default" service
// account, which the controller-manager (not running here) would make.
func (s *Server) Namespace(t testing.TB, name string, labels map[string]string) {
	t.Helper()
	s.Do(t, "POST", "/api/v1/namespaces", map[string]any{"metadata": map[string]any{"name": name, "labels": labels}}, nil)
	s.Do(t, "POST", "/api/v1/namespaces/"+name+"/serviceaccounts", map[string]any{"metadata": map[string]any{"name": "default"}}, nil)
}
