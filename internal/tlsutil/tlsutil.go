// Package tlsutil serves TLS from a certificate and key on disk that can be
// swapped while the server runs (a renewal, then SIGHUP), without touching
// the connections already open.
package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync/atomic"
	"time"
)

// MinVersion is the oldest protocol orkestr's listeners accept.
const MinVersion = tls.VersionTLS12

// Reloader holds the current certificate. Handshakes read it through
// GetCertificate, so Reload affects only connections made afterwards;
// established ones keep the session they negotiated.
type Reloader struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

// NewReloader loads the key pair once; an error names the files.
func NewReloader(certFile, keyFile string) (*Reloader, error) {
	r := &Reloader{certFile: certFile, keyFile: keyFile}
	if _, err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload reads the files again. On error the previous certificate stays
// in use, so a half-written renewal never takes the server down.
func (r *Reloader) Reload() (*x509.Certificate, error) {
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: loading %s and %s: %w", r.certFile, r.keyFile, err)
	}
	leaf := c.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, fmt.Errorf("tls: %s: %w", r.certFile, err)
		}
		c.Leaf = leaf
	}
	if time.Now().After(leaf.NotAfter) {
		return nil, fmt.Errorf("tls: %s expired at %s", r.certFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	r.cur.Store(&c)
	return leaf, nil
}

// Current is the certificate new handshakes get.
func (r *Reloader) Current() *x509.Certificate { return r.cur.Load().Leaf }

// GetCertificate is tls.Config.GetCertificate.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cur.Load(), nil
}

// ServerConfig is the TLS configuration of orkestr's listeners: TLS 1.2
// at least, the certificate from r, HTTP/1.1 (the protocol the API and its
// streamed exec and file transfers are built and tested on).
func (r *Reloader) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     MinVersion,
		GetCertificate: r.GetCertificate,
		NextProtos:     []string{"http/1.1"},
	}
}
