// Package oci pulls OCI/Docker images from registries and unpacks them into
// template root filesystems.
//
// Layers are kept in a content-addressed cache exactly as the registry
// served them (CacheDir/blobs/sha256/<hex>), each verified against its
// digest before it is kept, so a layer shared by several images is stored
// and downloaded once. Unpacking applies the cached layers in order with
// ApplyLayer, which never writes outside the destination.
package oci

import (
	"context"
	"crypto/sha256"
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

// Auth is how to log in to one registry host.
type Auth struct{ Username, Password, Token string }

// Options configure Pull and Unpack.
type Options struct {
	// CacheDir holds blobs/sha256/<hex>: compressed layers as served.
	CacheDir string
	// Auth is keyed by registry host ("ghcr.io", "index.docker.io",
	// "127.0.0.1:5000"); other registries are used anonymously.
	Auth map[string]Auth
	// Insecure lists hosts spoken to over plain HTTP.
	Insecure []string
	// Platform picks an image from a multi-platform index; default
	// linux/amd64.
	Platform string
	// Progress, if set, is told about every layer as it is fetched and
	// as it is unpacked.
	Progress func(Progress)
}

// Progress reports one layer of a pull.
type Progress struct {
	Layer, Layers int // 1-based index, count
	Digest        string
	Bytes, Total  int64
	Done          bool
	Cached        bool // the layer was in the cache; nothing was downloaded
	// Unpacked reports a layer applied by Unpack (Total is its compressed
	// size) rather than fetched.
	Unpacked bool
}

// Image is a pulled image: its layers are in the cache.
type Image struct {
	Ref        string
	Digest     string   // manifest digest, sha256:…
	Layers     []string // compressed layer digests, bottom first
	Env        []string
	WorkingDir string
	User       string
	Entrypoint []string
	Cmd        []string
}

// Pull resolves ref (a tag or digest; an index is resolved to the
// platform's manifest), reads its config and puts every layer that is not
// cached yet into the cache.
func Pull(ctx context.Context, ref string, opt Options) (Image, error) {
	r, err := parseRef(ref, opt)
	if err != nil {
		return Image{}, fmt.Errorf("pulling %s: not an image reference: %w", ref, err)
	}
	host := r.Context().RegistryStr()
	plat := opt.Platform
	if plat == "" {
		plat = "linux/amd64"
	}
	p, err := v1.ParsePlatform(plat)
	if err != nil {
		return Image{}, fmt.Errorf("platform %q: %w", plat, err)
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithPlatform(*p),
		remote.WithAuth(authFor(host, opt)), remote.WithTransport(httpTransport()))
	if err != nil {
		return Image{}, registryError(ref, host, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return Image{}, registryError(ref, host, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return Image{}, registryError(ref, host, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return Image{}, registryError(ref, host, err)
	}
	out := Image{Ref: ref, Digest: digest.String(), Env: cfg.Config.Env, WorkingDir: cfg.Config.WorkingDir,
		User: cfg.Config.User, Entrypoint: cfg.Config.Entrypoint, Cmd: cfg.Config.Cmd}
	for i, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return Image{}, registryError(ref, host, err)
		}
		if err := fetchLayer(ctx, l, d, i+1, len(layers), host, opt); err != nil {
			return Image{}, err
		}
		out.Layers = append(out.Layers, d.String())
	}
	return out, nil
}

func parseRef(ref string, opt Options) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	if slices.Contains(opt.Insecure, r.Context().RegistryStr()) {
		return name.ParseReference(ref, name.Insecure)
	}
	return r, nil
}

func authFor(host string, opt Options) authn.Authenticator {
	a, ok := opt.Auth[host]
	if !ok && host == name.DefaultRegistry {
		a, ok = opt.Auth["docker.io"]
	}
	if !ok {
		return authn.Anonymous
	}
	return authn.FromConfig(authn.AuthConfig{Username: a.Username, Password: a.Password, RegistryToken: a.Token})
}

// httpTransport bounds every step that could otherwise hang on a registry
// that is unreachable or stalls.
func httpTransport() http.RoundTripper {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
	}
}

// registryError says what went wrong with which registry and what to do.
func registryError(ref, host string, err error) error {
	var te *transport.Error
	switch {
	case errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden):
		return fmt.Errorf("pulling %s: registry %s refused the credentials (authentication failed; set registries.%s in the config): %w", ref, host, host, err)
	case errors.As(err, &te) && te.StatusCode == http.StatusNotFound:
		return fmt.Errorf("pulling %s: registry %s has no such image or tag: %w", ref, host, err)
	case errors.As(err, &te):
		return fmt.Errorf("pulling %s: registry %s answered %d: %w", ref, host, te.StatusCode, err)
	}
	var ne net.Error
	var oe *net.OpError
	var de *net.DNSError
	if errors.As(err, &de) || errors.As(err, &oe) || errors.As(err, &ne) {
		return fmt.Errorf("pulling %s: cannot reach registry %s (check this host's network access, or configure a mirror): %w", ref, host, err)
	}
	return fmt.Errorf("pulling %s from registry %s: %w", ref, host, err)
}

// blobPath is where a layer with digest d lives in the cache.
func blobPath(cacheDir, d string) (string, error) {
	hexPart, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hexPart) != 64 {
		return "", fmt.Errorf("unsupported digest %q (only sha256)", d)
	}
	if _, err := hex.DecodeString(hexPart); err != nil {
		return "", fmt.Errorf("malformed digest %q", d)
	}
	return filepath.Join(cacheDir, "blobs", "sha256", hexPart), nil
}

// fetchLayer puts layer l into the cache unless it is there, verifying its
// digest while it streams to a temporary file.
func fetchLayer(ctx context.Context, l v1.Layer, d v1.Hash, n, total int, host string, opt Options) error {
	report := func(p Progress) {
		if opt.Progress != nil {
			p.Layer, p.Layers, p.Digest = n, total, d.String()
			opt.Progress(p)
		}
	}
	path, err := blobPath(opt.CacheDir, d.String())
	if err != nil {
		return err
	}
	size, _ := l.Size()
	if fi, err := os.Stat(path); err == nil {
		report(Progress{Bytes: fi.Size(), Total: fi.Size(), Done: true, Cached: true})
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	rc, err := l.Compressed()
	if err != nil {
		return registryError(d.String(), host, err)
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".part-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	h := sha256.New()
	pw := &progressWriter{report: report, total: size}
	_, err = io.Copy(io.MultiWriter(tmp, h, pw), ctxReader{ctx, rc})
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// The registry client checks the digest too and fails the read at its
	// end; a download that got every byte is judged by our own sum, so a
	// corrupt layer is called that whichever check saw it first.
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); (err == nil || pw.n == size) && got != d.String() {
		return fmt.Errorf("layer %s from registry %s has digest %s: the download is corrupt or the registry is lying; nothing was kept (pull again; if it persists, the registry or a proxy in between serves bad data)", d, host, got)
	}
	if err != nil {
		return fmt.Errorf("downloading layer %s from registry %s: %w", d, host, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	report(Progress{Bytes: pw.n, Total: pw.n, Done: true})
	return nil
}

type progressWriter struct {
	report func(Progress)
	n      int64
	total  int64
	last   time.Time
}

func (w *progressWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	if time.Since(w.last) > 100*time.Millisecond {
		w.last = time.Now()
		w.report(Progress{Bytes: w.n, Total: max(w.total, w.n)})
	}
	return len(p), nil
}

// ctxReader stops a long copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
