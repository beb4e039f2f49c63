package gvisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// CABundlePath is the trust store every Debian-, Ubuntu- and Alpine-based
// template reads (OpenSSL's default file, Debian's pip, Go, curl). The
// operator's extra CA certificates are appended to it in each sandbox.
const CABundlePath = "/etc/ssl/certs/ca-certificates.crt"

// CAEnv points the tools that keep their own trust store (pip and requests,
// Node, curl) or ignore the default file at the sandbox's bundle. It is
// added under every sandbox's environment when extra CAs are configured.
var CAEnv = map[string]string{
	"SSL_CERT_FILE":       CABundlePath,
	"REQUESTS_CA_BUNDLE":  CABundlePath,
	"PIP_CERT":            CABundlePath,
	"CURL_CA_BUNDLE":      CABundlePath,
	"NODE_EXTRA_CA_CERTS": CABundlePath,
}

// maxSystemBundle bounds what is read of a template's own bundle.
const maxSystemBundle = 16 << 20

// installCAs appends extra (PEM certificates) to the trust store of a new
// sandbox, in its own copy-on-write layer: the template stays untouched,
// and a snapshot keeps the result. Done through the agent, inside the
// sandbox, so a bundle that is a symlink in the image resolves as the
// image means it. A template without a bundle gets one of the extra
// certificates only (its programs still see their own roots).
func installCAs(ctx context.Context, sb runtime.Sandbox, extra []byte) error {
	var sys bytes.Buffer
	lw := &limitedWriter{w: &sys, n: maxSystemBundle}
	if _, err := sb.ReadFile(ctx, CABundlePath, lw); err != nil && !errors.Is(err, runtime.ErrFileNotFound) {
		return fmt.Errorf("reading the template's %s: %w", CABundlePath, err)
	}
	if lw.n < 0 {
		return fmt.Errorf("the template's %s is larger than %d bytes", CABundlePath, maxSystemBundle)
	}
	out := sys.Bytes()
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	out = append(out, extra...)
	if _, err := sb.WriteFile(ctx, CABundlePath, 0o644, bytes.NewReader(out)); err != nil {
		return fmt.Errorf("writing %s: %w", CABundlePath, err)
	}
	return nil
}

type limitedWriter struct {
	w *bytes.Buffer
	n int64
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	l.n -= int64(len(p))
	if l.n < 0 {
		return 0, errors.New("too large")
	}
	return l.w.Write(p)
}
