package e2e

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/netpolicy/nettest"
	"github.com/orkestr-eu/orkestr/internal/testenv"
	"github.com/orkestr-eu/orkestr/internal/tlsutil/tlstest"
)

// testWheel builds a one-module wheel, orktestpkg 1.0, whose VALUE is 42.
func testWheel(t *testing.T) []byte {
	t.Helper()
	files := []struct{ name, body string }{
		{"orktestpkg/__init__.py", "VALUE = 42\n"},
		{"orktestpkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: orktestpkg\nVersion: 1.0\n"},
		{"orktestpkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: orkestr-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"},
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	var record strings.Builder
	for _, f := range files {
		w, err := zw.Create(f.name)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = w.Write([]byte(f.body))
		sum := sha256.Sum256([]byte(f.body))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", f.name, base64.RawURLEncoding.EncodeToString(sum[:]), len(f.body))
	}
	record.WriteString("orktestpkg-1.0.dist-info/RECORD,,\n")
	w, _ := zw.Create("orktestpkg-1.0.dist-info/RECORD")
	_, _ = w.Write([]byte(record.String()))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// servePackageIndex serves a PEP 503 index holding the wheel over HTTPS
// with a certificate ca issued for allowed.test, on Allowed:port of the
// test internet.
func servePackageIndex(t *testing.T, in *nettest.Internet, port int, ca *tlstest.CA) {
	t.Helper()
	wheel := testWheel(t)
	sum := sha256.Sum256(wheel)
	const whl = "orktestpkg-1.0-py3-none-any.whl"
	mux := http.NewServeMux()
	mux.HandleFunc("GET /simple/orktestpkg/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!DOCTYPE html><html><body><a href="/files/%s#sha256=%s">%s</a></body></html>`, whl, hex.EncodeToString(sum[:]), whl)
	})
	mux.HandleFunc("GET /files/"+whl, func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(wheel) })
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "hello over TLS") })
	certPEM, keyPEM := ca.Issue(t, "allowed.test", "allowed.test")
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln := tls.NewListener(in.Listen(t, nettest.Allowed, port), &tls.Config{Certificates: []tls.Certificate{cert}})
	srv := &http.Server{Handler: mux, ErrorLog: log.New(io.Discard, "", 0)} // refused handshakes are the point
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
}

// TestSandboxExtraCAs: with sandbox_ca_files configured, every new sandbox
// trusts the operator's CA — pip installs from an HTTPS index whose
// certificate that CA issued (a TLS-inspecting proxy's situation) in an
// `open` sandbox — while a certificate of another CA is still refused; a
// template without a trust store gets one holding the extra CA; the
// shared template directories are not touched.
func TestSandboxExtraCAs(t *testing.T) {
	in := nettest.Start(t)
	dir := t.TempDir()
	proxyCA, otherCA := tlstest.NewCA(t, "TLS-inspecting proxy CA"), tlstest.NewCA(t, "unknown CA")
	servePackageIndex(t, in, 8443, proxyCA)
	servePackageIndex(t, in, 8444, otherCA)
	caFile := proxyCA.WriteCA(t, dir, "proxy-ca.pem")
	tmplBundle := filepath.Join(testenv.TemplateDir(), "python-3.11", "rootfs", "etc/ssl/certs/ca-certificates.crt")
	before, err := os.ReadFile(tmplBundle)
	if err != nil {
		t.Fatalf("python-3.11 has no trust store: %v", err)
	}

	s := startAPI(t, serverOpts{poolSize: 1, logLevel: "info",
		config: netConfig(in) + fmt.Sprintf("sandbox_ca_files: [%s]\n", caFile)})
	if s.key == "" {
		t.Fatalf("no key; log:\n%s", s.logText())
	}
	run := func(id, cmd string) (string, string, float64) {
		t.Helper()
		r := s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": cmd, "timeout_seconds": 120})
		if r.status != 200 {
			t.Fatalf("exec %q: %d %s", cmd, r.status, r.body)
		}
		m := r.json(t)
		return m["stdout"].(string), m["stderr"].(string), m["exit_code"].(float64)
	}

	py := s.create(s.key, map[string]any{"template": "python-3.11", "network": "open"})
	defer s.do("DELETE", "/v1/sandboxes/"+py, s.key, nil)
	out, errOut, code := run(py, "pip install --break-system-packages --no-cache-dir --index-url https://allowed.test:8443/simple/ orktestpkg && python3 -c 'import orktestpkg; print(orktestpkg.VALUE)'")
	if code != 0 || !strings.HasSuffix(out, "42\n") {
		t.Fatalf("pip through the operator's CA: exit %v\n%s\n%s", code, out, errOut)
	}
	out, errOut, code = run(py, "pip download --retries 0 --no-cache-dir --no-deps -d /tmp/dl --index-url https://allowed.test:8444/simple/ orktestpkg")
	if code == 0 || !strings.Contains(out+errOut, "CERTIFICATE_VERIFY_FAILED") {
		t.Fatalf("a certificate of an unknown CA was accepted: exit %v\n%s\n%s", code, out, errOut)
	}
	// The template's roots are all still there, the extra CA after them.
	out, _, _ = run(py, "cat /etc/ssl/certs/ca-certificates.crt; echo \"env=$SSL_CERT_FILE $NODE_EXTRA_CA_CERTS\"")
	if !strings.HasPrefix(out, string(before)) || !strings.Contains(out, string(proxyCA.CertPEM)) ||
		!strings.HasSuffix(out, "env=/etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n") {
		t.Errorf("the sandbox's trust store (%d bytes) is not the template's %d bytes followed by the CA, or the env is missing:\n%s", len(out), len(before), out[max(0, len(out)-900):])
	}

	// A template without a trust store gets one with the extra CA.
	deb := s.create(s.key, map[string]any{"template": "debian-12"})
	defer s.do("DELETE", "/v1/sandboxes/"+deb, s.key, nil)
	if out, _, _ := run(deb, "cat /etc/ssl/certs/ca-certificates.crt"); out != string(proxyCA.CertPEM) {
		t.Errorf("debian-12's trust store: %q", out)
	}
	// The shared templates are untouched.
	if after, err := os.ReadFile(tmplBundle); err != nil || !bytes.Equal(after, before) {
		t.Errorf("the python-3.11 template's bundle changed (%v)", err)
	}
	if _, err := os.Lstat(filepath.Join(testenv.TemplateDir(), "debian-12", "rootfs", "etc/ssl")); err == nil {
		t.Error("the debian-12 template got an /etc/ssl")
	}
}
