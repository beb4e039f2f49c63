package oci

import (
	"archive/tar"
	"bytes"
	"context"
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
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/template/oci/ocitest"
)

// ent is one tar entry of a test layer.
type ent = ocitest.Entry

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
	host := ocitest.StartRegistry(t, nil)
	base := ocitest.Layer(t,
		ent{Name: "etc/", Type: tar.TypeDir},
		ent{Name: "etc/motd", Body: "lower"},
		ent{Name: "etc/gone", Body: "whited out"},
		ent{Name: "opq/", Type: tar.TypeDir},
		ent{Name: "opq/lower", Body: "hidden by the opaque marker"},
		ent{Name: "was-dir/", Type: tar.TypeDir},
		ent{Name: "was-dir/child", Body: "x"},
		ent{Name: "was-file", Body: "x"},
		ent{Name: "bin/", Type: tar.TypeDir},
		ent{Name: "bin/tool", Body: "#!/bin/sh\n", Mode: 0o4755},
		ent{Name: "bin/tool-link", Type: tar.TypeLink, Link: "bin/tool"},
		ent{Name: "bin/sym", Type: tar.TypeSymlink, Link: "tool"},
		ent{Name: "home/", Type: tar.TypeDir},
		ent{Name: "home/user/", Type: tar.TypeDir, Mode: 0o700, UID: 1000, GID: 1000},
		ent{Name: "home/user/file", Body: "mine", UID: 1000, GID: 1000, Xattrs: map[string]string{"user.origin": "layer1"}},
		ent{Name: "fifo", Type: tar.TypeFifo},
		ent{Name: "dev-null", Type: tar.TypeChar},
	)
	top := ocitest.Layer(t,
		ent{Name: "etc/motd", Body: "upper"},
		ent{Name: "etc/.wh.gone"},
		ent{Name: "opq/.wh..wh..opq"},
		ent{Name: "opq/upper", Body: "same layer as the marker"},
		ent{Name: "was-dir", Body: "now a file"},
		ent{Name: "was-file/", Type: tar.TypeDir},
		ent{Name: "was-file/child", Body: "now a dir"},
		ent{Name: "deep/a/b/c", Body: "parents made"},
	)
	ocitest.Push(t, host+"/t/edge:v1", ocitest.Image(t, []string{"PATH=/bin", "A=1"}, base, top))
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
	host := ocitest.StartRegistry(t, nil)
	shared := ocitest.Layer(t, ent{Name: "shared", Body: "in both images"})
	ocitest.Push(t, host+"/t/a:v1", ocitest.Image(t, nil, shared, ocitest.Layer(t, ent{Name: "a", Body: "a"})))
	ocitest.Push(t, host+"/t/b:v1", ocitest.Image(t, nil, shared, ocitest.Layer(t, ent{Name: "b", Body: "b"})))
	cache := t.TempDir()
	var cached, fetched, unpacked int
	opt := Options{CacheDir: cache, Insecure: []string{host}, Progress: func(p Progress) {
		if p.Unpacked && p.Total > 0 {
			unpacked++
		} else if p.Done && p.Cached {
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
	if fetched != 3 || cached != 3 || unpacked != 6 {
		t.Errorf("fetched %d, cached %d, unpacked %d; want 3, 3 and 6", fetched, cached, unpacked)
	}
}

// corrupting serves the registry but flips a byte in the middle of the
// blob whose digest is victim, the way a broken proxy or a lying registry
// would.
func corrupting(victim func() string) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			v := victim()
			if r.Method != http.MethodGet || v == "" || !strings.HasSuffix(r.URL.Path, "/"+v) {
				h.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			body := rec.Body.Bytes()
			if len(body) > 0 {
				body[len(body)/2] ^= 0xff
			}
			for k, vs := range rec.Header() {
				w.Header()[k] = vs
			}
			w.WriteHeader(rec.Code)
			_, _ = w.Write(body)
		})
	}
}

func TestCorruptLayerIsRefusedAndNotKept(t *testing.T) {
	var victim string
	host := ocitest.StartRegistry(t, corrupting(func() string { return victim }))
	good := ocitest.Layer(t, ent{Name: "good", Body: strings.Repeat("fine ", 1000)})
	bad := ocitest.Layer(t, ent{Name: "bad", Body: strings.Repeat("payload ", 1000)})
	ocitest.Push(t, host+"/t/c:v1", ocitest.Image(t, nil, good, bad))
	goodDigest, _ := good.Digest()
	badDigest, _ := bad.Digest()
	victim = badDigest.String() // pushed clean, read corrupt
	cache := t.TempDir()
	_, _, err := pullUnpack(t, host+"/t/c:v1", Options{CacheDir: cache, Insecure: []string{host}})
	if err == nil || !strings.Contains(err.Error(), "layer "+badDigest.String()) || !strings.Contains(err.Error(), "corrupt") || !strings.Contains(err.Error(), host) {
		t.Fatalf("corrupt layer: %v; want an error naming the corrupt layer %s, the registry and the corruption", err, badDigest)
	}
	if strings.Contains(err.Error(), goodDigest.String()) {
		t.Errorf("the error names the intact layer: %v", err)
	}
	for d, want := range map[v1.Hash]bool{goodDigest: true, badDigest: false} {
		p, _ := blobPath(cache, d.String())
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("layer %s cached: %v, want %v", d, err == nil, want)
		}
	}
	if n := blobs(t, cache); n != 1 {
		t.Errorf("%d blobs cached, want only the intact layer", n)
	}
}

func TestCorruptConfigOrManifestIsRefused(t *testing.T) {
	var victim string
	host := ocitest.StartRegistry(t, corrupting(func() string { return victim }))
	img := ocitest.Image(t, []string{"A=1"}, ocitest.Layer(t, ent{Name: "f", Body: "x"}))
	ocitest.Push(t, host+"/t/c:v1", img)
	cfg, _ := img.ConfigName()
	manifest, _ := img.Digest()
	// Read clean, both references pull: the failures below are the
	// corruption's.
	for _, ref := range []string{host + "/t/c:v1", host + "/t/c@" + manifest.String()} {
		if _, err := Pull(context.Background(), ref, Options{CacheDir: t.TempDir(), Insecure: []string{host}}); err != nil {
			t.Fatalf("clean pull of %s: %v", ref, err)
		}
	}
	for _, c := range []struct{ what, victim, ref string }{
		{"config", cfg.String(), host + "/t/c:v1"},
		{"manifest by digest", manifest.String(), host + "/t/c@" + manifest.String()},
	} {
		t.Run(c.what, func(t *testing.T) {
			victim = c.victim
			cache := t.TempDir()
			_, err := Pull(context.Background(), c.ref, Options{CacheDir: cache, Insecure: []string{host}})
			if err == nil || !strings.Contains(err.Error(), host) {
				t.Fatalf("corrupt %s: %v, want an error naming the registry", c.what, err)
			}
			if n := blobs(t, cache); n != 0 {
				t.Fatalf("%d blobs kept after a corrupt %s", n, c.what)
			}
		})
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
	host := ocitest.StartRegistry(t, func(h http.Handler) http.Handler {
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
	if err := remote.Write(r, ocitest.Image(t, nil, ocitest.Layer(t, ent{Name: "f", Body: "x"})), remote.WithAuth(&authn.Basic{Username: "agent", Password: "s3cret"})); err != nil {
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
	host := ocitest.StartRegistry(t, nil)
	amd := ocitest.Image(t, []string{"ARCH=amd64"}, ocitest.Layer(t, ent{Name: "arch", Body: "amd64"}))
	arm := ocitest.Image(t, []string{"ARCH=arm64"}, ocitest.Layer(t, ent{Name: "arch", Body: "arm64"}))
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
		refused bool   // the layer must fail; otherwise it may apply, but inside
		inside  string // if set, where (relative to the root) "pwned" must land
	}{
		{"absolute path", []ent{{Name: victim, Body: "pwned"}}, true, ""},
		{"dot-dot escape", []ent{{Name: "a/../../../../" + strings.TrimPrefix(victim, "/"), Body: "pwned"}}, true, ""},
		{"hard link out", []ent{{Name: "hl", Type: tar.TypeLink, Link: "../../../../" + strings.TrimPrefix(victim, "/")}}, true, ""},
		{"hard link absolute", []ent{{Name: "hl", Type: tar.TypeLink, Link: victim}}, true, ""},
		{"symlink then write through", []ent{
			{Name: "evil", Type: tar.TypeSymlink, Link: outside},
			{Name: "evil/victim", Body: "pwned"},
		}, false, strings.TrimPrefix(victim, "/")},
		{"relative symlink chain", []ent{
			{Name: "a", Type: tar.TypeSymlink, Link: "../../../../../../.."},
			{Name: "b", Type: tar.TypeSymlink, Link: "a" + outside},
			{Name: "b/victim", Body: "pwned"},
		}, false, strings.TrimPrefix(victim, "/")},
		{"dangling symlink out, then write through", []ent{
			{Name: "evil", Type: tar.TypeSymlink, Link: outside + "/new/dir"},
			{Name: "evil/victim", Body: "pwned"},
		}, false, strings.TrimPrefix(outside, "/") + "/new/dir/victim"},
		{"symlink to the root's parent, then write through", []ent{
			{Name: "up", Type: tar.TypeSymlink, Link: ".."},
			{Name: "up/sentinel", Body: "pwned"},
		}, false, "sentinel"},
		{"symlink to the root's parent, then opaque", []ent{
			{Name: "up", Type: tar.TypeSymlink, Link: ".."},
			{Name: "up/.wh..wh..opq"},
		}, false, ""},
		{"symlink to the root's parent, then hard link", []ent{
			{Name: "up", Type: tar.TypeSymlink, Link: "../.."},
			{Name: "hl", Type: tar.TypeLink, Link: "up/sentinel"},
		}, false, ""},
		{"whiteout of the parent", []ent{{Name: ".wh..."}}, true, ""},
		{"whiteout of dot-dot in a dir", []ent{{Name: "d/", Type: tar.TypeDir}, {Name: "d/.wh..."}}, true, ""},
		{"whiteout of dot", []ent{{Name: "d/", Type: tar.TypeDir}, {Name: "d/.wh.."}}, true, ""},
		{"symlink to a dir then whiteout", []ent{
			{Name: "evil", Type: tar.TypeSymlink, Link: outside},
			{Name: "evil/.wh.victim"},
		}, false, ""},
		{"symlink then hard link through it", []ent{
			{Name: "evil", Type: tar.TypeSymlink, Link: outside},
			{Name: "hl", Type: tar.TypeLink, Link: "evil/victim"},
		}, false, ""},
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
			err := ApplyLayer(context.Background(), dest, bytes.NewReader(ocitest.Tar(t, c.entries...)))
			if _, serr := os.Stat(sentinel); serr != nil {
				t.Fatalf("the file next to the root is gone: %v", serr)
			}
			if c.refused && err == nil {
				t.Fatal("the layer was applied; want it refused")
			}
			if c.inside != "" {
				if err != nil {
					t.Fatalf("a write through an in-root symlink failed: %v", err)
				}
				if got := readFile(t, filepath.Join(dest, c.inside)); got != "pwned" {
					t.Fatalf("%s in the root says %q", c.inside, got)
				}
			}
			if got := readFile(t, sentinel); got != "next to the root" {
				t.Fatalf("the file next to the root now says %q", got)
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
