package template

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func tgz(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for name, body := range files {
		_ = tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(body)), Typeflag: tar.TypeReg, Uid: 501})
		_, _ = tw.Write([]byte(body))
	}
	_ = tw.Close()
	_ = gz.Close()
	return buf.Bytes()
}

// fakeNPM serves one package with the given releases; integrity is
// computed over good unless lie is set.
func fakeNPM(t *testing.T, pkg string, releases map[string][]byte, lie bool) {
	t.Helper()
	mux := http.NewServeMux()
	var srv *httptest.Server
	mux.HandleFunc("/"+pkg, func(w http.ResponseWriter, r *http.Request) {
		versions := map[string]any{}
		for v, body := range releases {
			sum := sha512.Sum512(body)
			if lie {
				sum = sha512.Sum512([]byte("something else"))
			}
			versions[v] = map[string]any{"dist": map[string]string{
				"tarball":   srv.URL + "/tarballs/" + v + ".tgz",
				"integrity": "sha512-" + base64.StdEncoding.EncodeToString(sum[:]),
			}}
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"versions": versions})
	})
	mux.HandleFunc("/tarballs/", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(releases[strings.TrimSuffix(filepath.Base(r.URL.Path), ".tgz")])
	})
	srv = httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Setenv("ORKESTR_NPM_REGISTRY", srv.URL)
}

func TestInstallNPMPicksTheNewestOfItsMajorAndVerifiesIt(t *testing.T) {
	releases := map[string][]byte{
		"22.2.0":        tgz(t, map[string]string{"package/bin/tool": "22.2.0"}),
		"22.10.1":       tgz(t, map[string]string{"package/bin/tool": "22.10.1"}),
		"23.0.0":        tgz(t, map[string]string{"package/bin/tool": "23"}),
		"22.11.0-rc.1":  tgz(t, map[string]string{"package/bin/tool": "rc"}),
		"not-a-version": tgz(t, map[string]string{"package/bin/tool": "?"}),
	}
	fakeNPM(t, "tool", releases, false)
	rootfs := t.TempDir()
	v, err := installNPM(context.Background(), rootfs, NPMPackage{Name: "tool", Major: 22, Dest: "opt/tool"}, func(string) {})
	if err != nil || v != "22.10.1" {
		t.Fatalf("installed %q, %v; want 22.10.1", v, err)
	}
	b, _ := os.ReadFile(filepath.Join(rootfs, "opt/tool/bin/tool"))
	if string(b) != "22.10.1" {
		t.Fatalf("bin/tool = %q", b)
	}
	var st os.FileInfo
	if st, err = os.Stat(filepath.Join(rootfs, "opt/tool/bin/tool")); err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("mode %v %v", st, err)
	}
}

func TestInstallNPMRefusesABadDownload(t *testing.T) {
	fakeNPM(t, "tool", map[string][]byte{"22.0.0": tgz(t, map[string]string{"package/x": "x"})}, true)
	rootfs := t.TempDir()
	_, err := installNPM(context.Background(), rootfs, NPMPackage{Name: "tool", Major: 22, Dest: "opt/tool"}, func(string) {})
	if err == nil || !strings.Contains(err.Error(), "integrity") {
		t.Fatalf("got %v, want an integrity error", err)
	}
	if ents, _ := os.ReadDir(rootfs); len(ents) != 0 {
		t.Fatalf("a refused download left %d entries", len(ents))
	}
}

func TestInstallNPMRefusesEscapingTarballs(t *testing.T) {
	outside := t.TempDir()
	fakeNPM(t, "tool", map[string][]byte{"22.0.0": tgz(t, map[string]string{"package/../../../../" + strings.TrimPrefix(outside, "/") + "/pwned": "x"})}, false)
	_, err := installNPM(context.Background(), t.TempDir(), NPMPackage{Name: "tool", Major: 22, Dest: "opt/tool"}, func(string) {})
	if err == nil {
		t.Fatal("an escaping tarball was installed")
	}
	if _, err := os.Stat(filepath.Join(outside, "pwned")); !os.IsNotExist(err) {
		t.Fatal("the tarball wrote outside the rootfs")
	}
}

func TestInstallNPMWithoutTheMajor(t *testing.T) {
	fakeNPM(t, "tool", map[string][]byte{"21.0.0": tgz(t, map[string]string{"package/x": "x"})}, false)
	_, err := installNPM(context.Background(), t.TempDir(), NPMPackage{Name: "tool", Major: 22, Dest: "opt/tool"}, func(string) {})
	if err == nil || !strings.Contains(err.Error(), "no release 22.x") {
		t.Fatalf("got %v", err)
	}
}
