package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

// ent is one tar entry of a test layer.
type ent struct {
	name, body, link string
	typ              byte
	mode             int64
	uid, gid         int
	xattrs           map[string]string
}

func tarOf(t *testing.T, es ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{Name: e.name, Typeflag: typ, Linkname: e.link, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
		if h.Mode == 0 {
			h.Mode = 0o644
			if typ == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		for k, v := range e.xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			_, _ = io.WriteString(tw, e.body)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func layer(t *testing.T, es ...ent) v1.Layer {
	t.Helper()
	b := tarOf(t, es...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func image(t *testing.T, env []string, ls ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture, cfg.Config.Env = "linux", "amd64", env
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// startRegistry serves go-containerregistry's registry on loopback; wrap,
// if set, sits in front of it.
func startRegistry(t *testing.T, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func push(t *testing.T, ref string, img v1.Image, opts ...remote.Option) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, opts...); err != nil {
		t.Fatal(err)
	}
}

func pullUnpack(t *testing.T, ref string, opt Options) (Image, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	img, err := Pull(ctx, ref, opt)
	if err != nil {
		return img, "", err
	}
	dest := t.TempDir()
	return img, dest, Unpack(ctx, img, opt, dest)
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func blobs(t *testing.T, cache string) int {
	ents, _ := os.ReadDir(filepath.Join(cache, "blobs", "sha256"))
	n := 0
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") {
			n++
		}
	}
	return n
}

func TestLayersApplyAsTheSpecSays(t *testing.T) {
	host := startRegistry(t, nil)
	base := layer(t,
		ent{name: "etc/", typ: tar.TypeDir},
		ent{name: "etc/motd", body: "lower"},
		ent{name: "etc/gone", body: "whited out"},
		ent{name: "opq/", typ: tar.TypeDir},
		ent{name: "opq/lower", body: "hidden by the opaque marker"},
		ent{name: "was-dir/", typ: tar.TypeDir},
		ent{name: "was-dir/child", body: "x"},
		ent{name: "was-file", body: "x"},
		ent{name: "bin/", typ: tar.TypeDir},
		ent{name: "bin/tool", body: "#!/bin/sh\n", mode: 0o4755},
		ent{name: "bin/tool-link", typ: tar.TypeLink, link: "bin/tool"},
		ent{name: "bin/sym", typ: tar.TypeSymlink, link: "tool"},
		ent{name: "home/", typ: tar.TypeDir},
		ent{name: "home/user/", typ: tar.TypeDir, mode: 0o700, uid: 1000, gid: 1000},
		ent{name: "home/user/file", body: "mine", uid: 1000, gid: 1000, xattrs: map[string]string{"user.origin": "layer1"}},
		ent{name: "fifo", typ: tar.TypeFifo},
		ent{name: "dev-null", typ: tar.TypeChar},
	)
	top := layer(t,
		ent{name: "etc/motd", body: "upper"},
		ent{name: "etc/.wh.gone"},
		ent{name: "opq/.wh..wh..opq"},
		ent{name: "opq/upper", body: "same layer as the marker"},
		ent{name: "was-dir", body: "now a file"},
		ent{name: "was-file/", typ: tar.TypeDir},
		ent{name: "was-file/child", body: "now a dir"},
		ent{name: "deep/a/b/c", body: "parents made"},
	)
	push(t, host+"/t/edge:v1", image(t, []string{"PATH=/bin", "A=1"}, base, top))
	cache := t.TempDir()
	img, dest, err := pullUnpack(t, host+"/t/edge:v1", Options{CacheDir: cache, Insecure: []string{host}})
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Layers) != 2 || !strings.HasPrefix(img.Digest, "sha256:") || strings.Join(img.Env, ",") != "PATH=/bin,A=1" {
		t.Fatalf("image %+v", img)
	}
	p := func(s string) string { return filepath.Join(dest, s) }
	if got := readFile(t, p("etc/motd")); got != "upper" {
		t.Errorf("etc/motd = %q", got)
	}
	for _, gone := range []string{"etc/gone", "etc/.wh.gone", "opq/lower", "opq/.wh..wh..opq", "dev-null"} {
		if _, err := os.Lstat(p(gone)); !os.IsNotExist(err) {
			t.Errorf("%s exists (%v)", gone, err)
		}
	}
	if got := readFile(t, p("opq/upper")); got != "same layer as the marker" {
		t.Errorf("opq/upper = %q", got)
	}
	if got := readFile(t, p("was-dir")); got != "now a file" {
		t.Errorf("was-dir = %q", got)
	}
	if got := readFile(t, p("was-file/child")); got != "now a dir" {
		t.Errorf("was-file/child = %q", got)
	}
	if got := readFile(t, p("deep/a/b/c")); got != "parents made" {
		t.Errorf("deep/a/b/c = %q", got)
	}
	var st, lst syscall.Stat_t
	_ = syscall.Stat(p("bin/tool"), &st)
	_ = syscall.Stat(p("bin/tool-link"), &lst)
	if st.Mode&0o7777 != 0o4755 || st.Ino != lst.Ino || st.Nlink != 2 {
		t.Errorf("bin/tool mode %o ino %d nlink %d; link ino %d", st.Mode&0o7777, st.Ino, st.Nlink, lst.Ino)
	}
	if l, _ := os.Readlink(p("bin/sym")); l != "tool" {
		t.Errorf("bin/sym -> %q", l)
	}
	_ = syscall.Stat(p("home/user"), &st)
	if st.Mode&0o7777 != 0o700 || st.Uid != 1000 || st.Gid != 1000 {
		t.Errorf("home/user mode %o owner %d:%d", st.Mode&0o7777, st.Uid, st.Gid)
	}
	_ = syscall.Stat(p("home/user/file"), &st)
	if st.Uid != 1000 || st.Mtim.Sec != 1700000000 {
		t.Errorf("home/user/file owner %d mtime %d", st.Uid, st.Mtim.Sec)
	}
	buf := make([]byte, 64)
	if n, err := unix.Getxattr(p("home/user/file"), "user.origin", buf); err == nil {
		if string(buf[:n]) != "layer1" {
			t.Errorf("xattr user.origin = %q", buf[:n])
		}
	} else if err != unix.ENOTSUP {
		t.Errorf("xattr: %v", err)
	}
	if fi, err := os.Lstat(p("fifo")); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("fifo: %v %v", fi, err)
	}
}

func TestLayerCacheIsContentAddressed(t *testing.T) {
	host := startRegistry(t, nil)
	shared := layer(t, ent{name: "shared", body: "in both images"})
	push(t, host+"/t/a:v1", image(t, nil, shared, layer(t, ent{name: "a", body: "a"})))
	push(t, host+"/t/b:v1", image(t, nil, shared, layer(t, ent{name: "b", body: "b"})))
	cache := t.TempDir()
	var cached, fetched int
	opt := Options{CacheDir: cache, Insecure: []string{host}, Progress: func(p Progress) {
		if p.Done && p.Cached {
			cached++
		} else if p.Done {
			fetched++
		}
	}}
	for _, ref := range []string{"/t/a:v1", "/t/b:v1", "/t/a:v1"} {
		if _, _, err := pullUnpack(t, host+ref, opt); err != nil {
			t.Fatal(err)
		}
	}
	if n := blobs(t, cache); n != 3 {
		t.Errorf("%d blobs cached, want 3 (the shared layer once)", n)
	}
	if fetched != 3 || cached != 3 {
		t.Errorf("fetched %d, cached %d; want 3 and 3", fetched, cached)
	}
}

func TestCorruptBlobIsRefusedAndNotKept(t *testing.T) {
	host := startRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, r)
				body := rec.Body.Bytes()
				if len(body) > 0 && !strings.Contains(rec.Header().Get("Content-Type"), "json") {
					body[len(body)/2] ^= 0xff
				}
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				_, _ = w.Write(body)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	// The config blob is verified by the registry client itself; put the
	// corruption where a layer is read: push through a clean client, read
	// through the corrupting handler.
	push(t, host+"/t/c:v1", image(t, nil, layer(t, ent{name: "f", body: strings.Repeat("payload ", 1000)})))
	cache := t.TempDir()
	_, _, err := pullUnpack(t, host+"/t/c:v1", Options{CacheDir: cache, Insecure: []string{host}})
	if err == nil || !strings.Contains(err.Error(), host) {
		t.Fatalf("corrupt blob: %v, want an error naming the registry", err)
	}
	if n := blobs(t, cache); n != 0 {
		t.Fatalf("%d blobs kept after a corrupt download", n)
	}
}

func TestUnreachableRegistryFailsFastAndSaysWhich(t *testing.T) {
	start := time.Now()
	_, err := Pull(context.Background(), "127.0.0.1:1/nothing:v1", Options{CacheDir: t.TempDir(), Insecure: []string{"127.0.0.1:1"}})
	if err == nil || !strings.Contains(err.Error(), "cannot reach registry 127.0.0.1:1") {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestRegistryAuth(t *testing.T) {
	host := startRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != "agent" || p != "s3cret" {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	r, _ := name.ParseReference(host+"/t/private:v1", name.Insecure)
	if err := remote.Write(r, image(t, nil, layer(t, ent{name: "f", body: "x"})), remote.WithAuth(&authn.Basic{Username: "agent", Password: "s3cret"})); err != nil {
		t.Fatal(err)
	}
	_, err := Pull(context.Background(), host+"/t/private:v1", Options{CacheDir: t.TempDir(), Insecure: []string{host}})
	if err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("without credentials: %v", err)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Fatal("the error shows a password")
	}
	opt := Options{CacheDir: t.TempDir(), Insecure: []string{host}, Auth: map[string]Auth{host: {Username: "agent", Password: "s3cret"}}}
	if _, _, err := pullUnpack(t, host+"/t/private:v1", opt); err != nil {
		t.Fatalf("with credentials: %v", err)
	}
}

func TestIndexPicksLinuxAmd64(t *testing.T) {
	host := startRegistry(t, nil)
	amd := image(t, []string{"ARCH=amd64"}, layer(t, ent{name: "arch", body: "amd64"}))
	arm := image(t, []string{"ARCH=arm64"}, layer(t, ent{name: "arch", body: "arm64"}))
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	r, _ := name.ParseReference(host+"/t/multi:v1", name.Insecure)
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatal(err)
	}
	_, dest, err := pullUnpack(t, host+"/t/multi:v1", Options{CacheDir: t.TempDir(), Insecure: []string{host}})
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dest, "arch")); got != "amd64" {
		t.Fatalf("arch = %q", got)
	}
}

// TestHostileLayers applies malicious tars straight to a directory and
// checks that nothing lands outside it.
func TestHostileLayers(t *testing.T) {
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("untouched"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		entries []ent
		refused bool // the layer must fail; otherwise it may apply, but inside
	}{
		{"absolute path", []ent{{name: victim, body: "pwned"}}, true},
		{"dot-dot escape", []ent{{name: "a/../../../../" + strings.TrimPrefix(victim, "/"), body: "pwned"}}, true},
		{"hard link out", []ent{{name: "hl", typ: tar.TypeLink, link: "../../../../" + strings.TrimPrefix(victim, "/")}}, true},
		{"hard link absolute", []ent{{name: "hl", typ: tar.TypeLink, link: victim}}, true},
		{"symlink then write through", []ent{
			{name: "evil", typ: tar.TypeSymlink, link: outside},
			{name: "evil/victim", body: "pwned"},
		}, false},
		{"relative symlink chain", []ent{
			{name: "a", typ: tar.TypeSymlink, link: "../../../../../../.."},
			{name: "b", typ: tar.TypeSymlink, link: "a" + outside},
			{name: "b/victim", body: "pwned"},
		}, false},
		{"whiteout of the parent", []ent{{name: ".wh..."}}, true},
		{"whiteout of dot-dot in a dir", []ent{{name: "d/", typ: tar.TypeDir}, {name: "d/.wh..."}}, true},
		{"whiteout of dot", []ent{{name: "d/", typ: tar.TypeDir}, {name: "d/.wh.."}}, true},
		{"symlink to a dir then whiteout", []ent{
			{name: "evil", typ: tar.TypeSymlink, link: outside},
			{name: "evil/.wh.victim"},
		}, false},
		{"symlink then hard link through it", []ent{
			{name: "evil", typ: tar.TypeSymlink, link: outside},
			{name: "hl", typ: tar.TypeLink, link: "evil/victim"},
		}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			parent := t.TempDir()
			sentinel := filepath.Join(parent, "sentinel")
			if err := os.WriteFile(sentinel, []byte("next to the root"), 0o644); err != nil {
				t.Fatal(err)
			}
			dest := filepath.Join(parent, "root")
			if err := os.Mkdir(dest, 0o755); err != nil {
				t.Fatal(err)
			}
			err := ApplyLayer(dest, bytes.NewReader(tarOf(t, c.entries...)))
			if _, serr := os.Stat(sentinel); serr != nil {
				t.Fatalf("the file next to the root is gone: %v", serr)
			}
			if c.refused && err == nil {
				t.Fatal("the layer was applied; want it refused")
			}
			if got := readFile(t, victim); got != "untouched" {
				t.Fatalf("the host file outside the root now says %q", got)
			}
			var st syscall.Stat_t
			if err := syscall.Stat(victim, &st); err == nil && st.Nlink != 1 {
				t.Fatalf("the host file got %d links", st.Nlink)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 1 {
				t.Fatalf("%d entries outside the root, want 1", len(ents))
			}
		})
	}
}
