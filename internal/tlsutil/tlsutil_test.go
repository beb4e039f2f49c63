package tlsutil_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/tlsutil"
	"github.com/orkestr-eu/orkestr/internal/tlsutil/tlstest"
)

// A reload swaps the certificate for new connections while a connection
// opened before it keeps working.
func TestReloadKeepsConnections(t *testing.T) {
	dir := t.TempDir()
	ca1, ca2 := tlstest.NewCA(t, "first CA"), tlstest.NewCA(t, "second CA")
	crt, key := ca1.WriteFiles(t, dir, "server", "first", "127.0.0.1")
	r, err := tlsutil.NewReloader(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	})}
	go srv.Serve(tls.NewListener(ln, r.ServerConfig()))
	t.Cleanup(func() { srv.Close() })
	url := "https://" + ln.Addr().String() + "/"

	client := func(ca *tlstest.CA) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	}
	get := func(c *http.Client) (string, error) {
		resp, err := c.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body) // read to the end, so the connection is reused
		return resp.TLS.PeerCertificates[0].Subject.CommonName, nil
	}
	old := client(ca1)
	var conns int
	old.Transport.(*http.Transport).DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conns++
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	if cn, err := get(old); err != nil || cn != "first" {
		t.Fatalf("before the reload: %q %v", cn, err)
	}

	// A renewal from another CA (the worst case for a client that pins the old CA).
	crt2, key2 := ca2.WriteFiles(t, dir, "server2", "second", "127.0.0.1")
	mv(t, crt2, crt)
	mv(t, key2, key)
	leaf, err := r.Reload()
	if err != nil || leaf.Subject.CommonName != "second" {
		t.Fatalf("reload: %v %v", leaf, err)
	}
	// The kept-alive connection still answers, with the old certificate.
	if cn, err := get(old); err != nil || cn != "first" || conns != 1 {
		t.Fatalf("the connection opened before the reload: %q %v (dials %d)", cn, err, conns)
	}
	if cn, err := get(client(ca2)); err != nil || cn != "second" {
		t.Fatalf("a new connection after the reload: %q %v", cn, err)
	}
	if _, err := get(client(ca1)); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a new connection trusting only the old CA: %v", err)
	}

	// A broken renewal keeps the current certificate.
	if err := os.WriteFile(crt, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Reload(); err == nil || !strings.Contains(err.Error(), crt) {
		t.Fatalf("a broken file: %v", err)
	}
	if cn, err := get(client(ca2)); err != nil || cn != "second" {
		t.Fatalf("after a failed reload: %q %v", cn, err)
	}

	// TLS 1.1 and older are refused.
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca2.Pool(), MaxVersion: tls.VersionTLS11}}}
	if _, err := c.Get(url); err == nil {
		t.Fatal("a TLS 1.1 client was served")
	}
}

func TestNewReloaderErrors(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "CA")
	crt, _ := ca.WriteFiles(t, dir, "a", "a", "127.0.0.1")
	_, key2 := ca.WriteFiles(t, dir, "b", "b", "127.0.0.1")
	if _, err := tlsutil.NewReloader(crt, key2); err == nil || !strings.Contains(err.Error(), "b.key") {
		t.Fatalf("mismatched key: %v", err)
	}
	if _, err := tlsutil.NewReloader(filepath.Join(dir, "none.crt"), key2); err == nil {
		t.Fatal("missing file accepted")
	}
}

func mv(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}
