package orkestr

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/tlsutil/tlstest"
)

// A server with a private CA's certificate is reached with that CA given
// as a bundle (option or ORKESTR_CA_BUNDLE), and refused without it.
func TestCABundle(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "private CA")
	certPEM, keyPEM := ca.Issue(t, "orkestr.test", "127.0.0.1")
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"plan": "team"})
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	bundle := ca.WriteCA(t, dir, "ca.pem")
	ctx := context.Background()

	limits := func(opts ...Option) error {
		c, err := NewClient(append([]Option{WithAPIKey(testKey), WithBaseURL(srv.URL), WithMaxRetries(0)}, opts...)...)
		if err != nil {
			return err
		}
		_, err = c.Limits(ctx)
		return err
	}
	t.Setenv("ORKESTR_CA_BUNDLE", "")
	err = limits()
	var te *TransportError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without the CA: %v", err)
	}
	if err := limits(WithCABundle(bundle)); err != nil {
		t.Fatalf("WithCABundle: %v", err)
	}
	t.Setenv("ORKESTR_CA_BUNDLE", bundle)
	if err := limits(); err != nil {
		t.Fatalf("ORKESTR_CA_BUNDLE: %v", err)
	}

	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := limits(WithCABundle(junk)); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("a bundle without certificates: %v", err)
	}
	if err := limits(WithCABundle(filepath.Join(dir, "missing.pem"))); err == nil || !strings.Contains(err.Error(), "CA bundle") {
		t.Fatalf("a missing bundle: %v", err)
	}
}
