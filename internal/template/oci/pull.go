package oci

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// DefaultPlatform is the platform picked from a multi-platform index when
// Options.Platform is empty.
const DefaultPlatform = "linux/amd64"

// Pull resolves ref (a tag or digest; an index is resolved to the
// platform's manifest), reads its config and puts every layer that is not
// cached yet into the cache.
func Pull(ctx context.Context, ref string, opt Options) (Image, error) {
	img, err := pull(ctx, ref, opt)
	if err != nil {
		return Image{}, fmt.Errorf("pulling %s: %w", ref, err)
	}
	return img, nil
}

// puller is one Pull: what its errors need to name.
type puller struct {
	ctx    context.Context
	ref    string
	host   string
	authed bool // credentials were configured for host
	opt    Options
}

func pull(ctx context.Context, ref string, opt Options) (Image, error) {
	if opt.CacheDir == "" {
		return Image{}, errors.New("no layer cache directory is set (Options.CacheDir)")
	}
	r, err := parseRef(ref, opt.Insecure)
	if err != nil {
		return Image{}, fmt.Errorf("not an image reference: %w (write NAME[:TAG] or NAME@sha256:DIGEST)", err)
	}
	plat := opt.Platform
	if plat == "" {
		plat = DefaultPlatform
	}
	pl, err := v1.ParsePlatform(plat)
	if err != nil {
		return Image{}, fmt.Errorf("platform %q: %w (write OS/ARCH[/VARIANT], e.g. linux/arm64)", plat, err)
	}
	host := r.Context().RegistryStr()
	auth, authed := authFor(host, opt.Auth)
	p := &puller{ctx: ctx, ref: ref, host: host, authed: authed, opt: opt}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithPlatform(*pl), remote.WithAuth(auth),
		remote.WithTransport(httpTransport), remote.WithUserAgent("orkestr"))
	if err != nil {
		return Image{}, p.fail(err)
	}
	out, layers, err := describe(ref, img)
	if err != nil {
		return Image{}, p.fail(err)
	}
	for i, l := range layers {
		d, err := p.fetch(l, i+1, len(layers))
		if err != nil {
			return Image{}, fmt.Errorf("layer %d/%d: %w", i+1, len(layers), err)
		}
		out.Layers = append(out.Layers, d)
	}
	return out, nil
}

// describe reads what Image records from the manifest and the config.
func describe(ref string, img v1.Image) (Image, []v1.Layer, error) {
	digest, err := img.Digest()
	if err != nil {
		return Image{}, nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return Image{}, nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return Image{}, nil, err
	}
	c := cf.Config
	return Image{Ref: ref, Digest: digest.String(), Env: c.Env, WorkingDir: c.WorkingDir, User: c.User,
		Entrypoint: c.Entrypoint, Cmd: c.Cmd}, layers, nil
}

func parseRef(ref string, insecure []string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil || !slices.Contains(insecure, r.Context().RegistryStr()) {
		return r, err
	}
	return name.ParseReference(ref, name.Insecure)
}

// authFor returns how to log in to host, and whether credentials were
// configured for it.
func authFor(host string, auths map[string]Auth) (authn.Authenticator, bool) {
	a, ok := auths[host]
	if !ok && host == name.DefaultRegistry {
		// People write Docker Hub's name in several ways.
		for _, alias := range []string{"docker.io", "registry-1.docker.io"} {
			if a, ok = auths[alias]; ok {
				break
			}
		}
	}
	switch {
	case !ok:
		return authn.Anonymous, false
	case a.Token != "":
		return authn.FromConfig(authn.AuthConfig{RegistryToken: a.Token}), true
	default:
		return &authn.Basic{Username: a.Username, Password: a.Password}, true
	}
}

// httpTransport bounds connecting and waiting for an answer, so an
// unreachable or stalled registry fails instead of hanging; a slow body is
// bounded by the caller's context. It is shared so that pulls reuse
// connections.
var httpTransport = func() *http.Transport {
	t := remote.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.ResponseHeaderTimeout = time.Minute
	return t
}()

// fail says what went wrong talking to the registry and what to do.
func (p *puller) fail(err error) error {
	if cerr := p.ctx.Err(); cerr != nil {
		return fmt.Errorf("stopped: %w", cerr)
	}
	var te *transport.Error
	if errors.As(err, &te) {
		return p.statusError(te.StatusCode, err)
	}
	if isTLSError(err) {
		return fmt.Errorf("TLS with registry %s failed: %w (if it speaks plain HTTP, list it in insecure_registries; if its certificate is from a private CA, install the CA on this host)", p.host, err)
	}
	var dnsErr *net.DNSError
	var opErr *net.OpError
	var netErr net.Error
	if errors.As(err, &dnsErr) || errors.As(err, &opErr) || (errors.As(err, &netErr) && netErr.Timeout()) {
		return fmt.Errorf("cannot reach registry %s: %w (check network access or configure a mirror)", p.host, err)
	}
	return fmt.Errorf("registry %s: %w", p.host, err)
}

func (p *puller) statusError(code int, err error) error {
	switch {
	case (code == http.StatusUnauthorized || code == http.StatusForbidden) && !p.authed:
		return fmt.Errorf("authentication failed: registry %s does not let anonymous users pull this image, or it does not exist: %w (check the name, or add credentials for %s to the registries section of the config)", p.host, err, p.host)
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return fmt.Errorf("authentication failed: registry %s rejected the credentials configured for it: %w (check the username and password or token for %s)", p.host, err, p.host)
	case code == http.StatusNotFound:
		return fmt.Errorf("registry %s has no such image: %w (check the name and tag)", p.host, err)
	case code == http.StatusTooManyRequests:
		return fmt.Errorf("registry %s is rate-limiting pulls: %w (add credentials for %s, configure a mirror, or try later)", p.host, err, p.host)
	}
	return fmt.Errorf("registry %s failed: %w", p.host, err)
}

func isTLSError(err error) bool {
	var cv *tls.CertificateVerificationError
	var rh tls.RecordHeaderError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	return errors.As(err, &cv) || errors.As(err, &rh) || errors.As(err, &ua) || errors.As(err, &he) ||
		// net/http turns a RecordHeaderError into this plain error.
		strings.Contains(err.Error(), "server gave HTTP response to HTTPS client")
}

// blobPath is where the blob with digest d lives in the cache.
func blobPath(cacheDir, d string) (string, error) {
	h, err := v1.NewHash(d)
	if err != nil || h.Algorithm != "sha256" {
		return "", fmt.Errorf("unsupported layer digest %q (only sha256 is)", d)
	}
	return filepath.Join(cacheDir, "blobs", "sha256", h.Hex), nil
}

// fetch puts layer l into the cache unless it is there, and returns its
// digest.
func (p *puller) fetch(l v1.Layer, n, total int) (string, error) {
	d, err := l.Digest()
	if err != nil {
		return "", p.fail(err)
	}
	size, err := l.Size()
	if err != nil {
		return "", p.fail(err)
	}
	dst, err := blobPath(p.opt.CacheDir, d.String())
	if err != nil {
		return "", err
	}
	report := func(pr Progress) {
		if p.opt.Progress != nil {
			pr.Layer, pr.Layers, pr.Digest = n, total, d.String()
			p.opt.Progress(pr)
		}
	}
	// Only a verified blob is ever renamed into place, so a blob of the
	// right size is the right blob.
	if fi, err := os.Stat(dst); err == nil && fi.Size() == size {
		report(Progress{Bytes: size, Total: size, Done: true, Cached: true})
		return d.String(), nil
	}
	if err := p.download(l, d, size, dst, report); err != nil {
		return "", err
	}
	report(Progress{Bytes: size, Total: size, Done: true})
	return d.String(), nil
}

// download streams layer l to a temporary file next to dst, hashing it on
// the way, and renames it to dst only if the digest matches: the cache
// never holds a blob that is not what its name says.
func (p *puller) download(l v1.Layer, d v1.Hash, size int64, dst string, report func(Progress)) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("layer %s: %w", d, p.fail(err))
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".download-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	h := sha256.New()
	pw := &progressWriter{report: report, total: size}
	n, err := io.Copy(io.MultiWriter(tmp, h, pw), ctxReader{p.ctx, rc})
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	switch {
	case p.ctx.Err() != nil:
		return fmt.Errorf("layer %s: stopped: %w", d, p.ctx.Err())
	case got != d.String() && (err == nil || n == size):
		// The registry client checks the digest too and says so as an
		// error at the end of the body: either way all of it was read.
		return fmt.Errorf("layer %s from registry %s is corrupt: its content has digest %s; nothing was kept (pull again; if it persists, the registry or a proxy in between serves bad data)", d, p.host, got)
	case err != nil:
		return fmt.Errorf("layer %s: %w (nothing was kept; pull again)", d, p.fail(err))
	}
	return os.Rename(tmp.Name(), dst)
}

// progressWriter reports a download's progress at most ten times a second.
type progressWriter struct {
	report func(Progress)
	n      int64
	total  int64
	last   time.Time
}

func (w *progressWriter) Write(b []byte) (int, error) {
	w.n += int64(len(b))
	if time.Since(w.last) >= 100*time.Millisecond {
		w.last = time.Now()
		w.report(Progress{Bytes: w.n, Total: max(w.total, w.n)})
	}
	return len(b), nil
}

// ctxReader stops a long copy once ctx ends, even if the source would
// block or go on.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}
