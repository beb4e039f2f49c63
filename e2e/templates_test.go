package e2e

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// tarEntry is one file of a test layer: a regular file unless link is set
// (a symlink) or body is nil and dir is set.
type tarEntry struct {
	name string
	body []byte
	mode int64
	link string
	dir  bool
}

func layerOf(t *testing.T, entries ...tarEntry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, ModTime: time.Unix(1700000000, 0)}
		switch {
		case e.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		case e.dir:
			h.Typeflag = tar.TypeDir
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if e.dir {
				h.Mode = 0o755
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			_, _ = tw.Write(e.body)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// tinyImage is a two-layer image around the host's static busybox: enough
// for the agent's shell and a few commands. The second layer replaces a
// file and deletes one with a whiteout.
func tinyImage(t *testing.T, motd string) v1.Image {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("this test needs a static busybox at /bin/busybox (apt-get install busybox-static): %v", err)
	}
	base := []tarEntry{{name: "bin", dir: true}, {name: "bin/busybox", body: bb, mode: 0o755}}
	for _, tool := range []string{"sh", "cat", "echo", "ls", "env", "true"} {
		base = append(base, tarEntry{name: "bin/" + tool, link: "busybox"})
	}
	base = append(base,
		tarEntry{name: "etc", dir: true},
		tarEntry{name: "etc/passwd", body: []byte("root:x:0:0:root:/root:/bin/sh\n")},
		tarEntry{name: "etc/motd", body: []byte("from layer 1\n")},
		tarEntry{name: "opt", dir: true},
		tarEntry{name: "opt/gone.txt", body: []byte("deleted by layer 2\n")},
		tarEntry{name: "opt/kept.txt", body: []byte("kept\n")},
	)
	top := layerOf(t,
		tarEntry{name: "etc/motd", body: []byte(motd + "\n")},
		tarEntry{name: "opt/.wh.gone.txt"},
	)
	img, err := mutate.AppendLayers(empty.Image, layerOf(t, base...), top)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Env = []string{"PATH=/bin", "IMAGE_GREETING=hello from the image config"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// buildTemplate runs `orkestrd admin template build` and returns its
// output and error.
func buildTemplate(t *testing.T, configPath, templateDir, name string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "orkestrd"), "admin", "template", "build", "--config", configPath, "--template-dir", templateDir, name)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestTemplateFromLocalRegistry(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	ref, err := name.ParseReference(host+"/test/tiny:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, tinyImage(t, "from layer 2")); err != nil {
		t.Fatal(err)
	}

	templateDir := t.TempDir()
	config := fmt.Sprintf(`
insecure_registries: [%q]
templates:
  - name: tiny
    description: busybox from a local registry
    default: true
    sources: [{image: %q}]
  - name: unreachable
    description: its registry is not there
    sources: [{image: "127.0.0.1:1/nothing/here:v1"}]
`, host, host+"/test/tiny:v1")
	s := startAPI(t, serverOpts{poolSize: 1, config: config, templateDir: templateDir})

	templates := func() map[string]bool {
		r := s.do("GET", "/v1/templates", s.key, nil)
		built := map[string]bool{}
		for _, e := range r.json(t)["data"].([]any) {
			m := e.(map[string]any)
			built[m["name"].(string)] = m["built"].(bool)
		}
		return built
	}
	if b := templates(); b["tiny"] || b["unreachable"] || len(b) != 2 {
		t.Fatalf("before any build: %v", b)
	}
	// Not built yet: a clear 503 that names the template and the fix, and
	// no sandbox left behind.
	r := s.do("POST", "/v1/sandboxes", s.key, map[string]any{"template": "tiny"})
	if r.status != 503 || r.errCode() != "unavailable" || !strings.Contains(string(r.body), "orkestrd admin template build tiny") {
		t.Fatalf("create from an unbuilt template: %d %s", r.status, r.body)
	}
	if r := s.do("GET", "/v1/sandboxes", s.key, nil); len(r.json(t)["data"].([]any)) != 0 {
		t.Fatalf("a refused create left a sandbox: %s", r.body)
	}

	out, err := buildTemplate(t, s.config, templateDir, "tiny")
	if err != nil {
		t.Fatalf("build tiny: %v\n%s", err, out)
	}
	imageDirs, _ := filepath.Glob(filepath.Join(templateDir, ".images", "sha256-*"))
	for _, d := range append(imageDirs, filepath.Join(templateDir, "tiny")) {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v %v, want mode 0755", d, fi.Mode(), err)
		}
	}
	if len(imageDirs) != 1 {
		t.Errorf("%d unpacked images, want 1", len(imageDirs))
	}
	if !strings.Contains(out, "layer 2/2") {
		t.Errorf("build output shows no layer progress:\n%s", out)
	}
	// The running server notices the build and warms a pool for it.
	// (Networking is on by default, so there is a networked pool next to
	// the plain one.)
	h := s.waitPools(time.Minute)
	plain := 0
	for _, p := range h.Pools {
		if p.Template != "tiny" {
			t.Fatalf("pools after the build: %+v", h.Pools)
		}
		if !p.Networked {
			plain++
		}
	}
	if plain != 1 {
		t.Fatalf("pools after the build: %+v", h.Pools)
	}
	if b := templates(); !b["tiny"] || b["unreachable"] {
		t.Fatalf("after building tiny: %v", b)
	}

	id := s.create(s.key, map[string]any{"template": "tiny", "env": map[string]string{"OWN": "mine"}})
	defer s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
	r = s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{
		"command": `cat /etc/motd; ls /opt; echo "$IMAGE_GREETING/$OWN"`, "cwd": "/"})
	res := r.json(t)
	want := "from layer 2\nkept.txt\nhello from the image config/mine\n"
	if r.status != 200 || res["stdout"] != want {
		t.Fatalf("exec in the image's sandbox: %d %s\nwant stdout %q", r.status, r.body, want)
	}

	// A second build of the same image pulls nothing and unpacks nothing.
	out, err = buildTemplate(t, s.config, templateDir, "tiny")
	if err != nil || !strings.Contains(out, "already built") {
		t.Fatalf("second build: %v\n%s", err, out)
	}

	// An unreachable registry fails the build quickly, saying which.
	start := time.Now()
	out, err = buildTemplate(t, s.config, templateDir, "unreachable")
	if err == nil || !strings.Contains(out, "127.0.0.1:1") {
		t.Fatalf("build from an unreachable registry: %v\n%s", err, out)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the failed build took %v", d)
	}
	if b := templates(); b["unreachable"] {
		t.Fatal("a failed build is listed as built")
	}
}

// TestOfflineTemplatesRunTheirLanguage creates a sandbox of every offline
// template `make setup` builds and runs its language in it.
func TestOfflineTemplatesRunTheirLanguage(t *testing.T) {
	s := startAPI(t, serverOpts{poolSize: 0})
	cases := []struct {
		template string
		command  string
		want     []string
	}{
		{"python-3.11", `python3 --version; python --version; pip --version; python3 -m venv /tmp/v && /tmp/v/bin/pip --version; python3 -c 'print(6*7)'`,
			[]string{"Python 3.11.", "pip ", "/tmp/v/lib/python3.11/site-packages/pip", "42"}},
		{"node-22", `node -v; npm -v; npx --version; node -e 'console.log(1+1)'`,
			[]string{"v22.", "\n10.", "\n2\n"}},
		{"debian-12", `cat /etc/debian_version`, []string{"12."}},
	}
	for _, c := range cases {
		t.Run(c.template, func(t *testing.T) {
			r := s.do("POST", "/v1/sandboxes", s.key, map[string]any{"template": c.template, "size": "medium"})
			if r.status == 503 {
				t.Fatalf("template %s is not built on this host: run `make templates` (CI builds it): %s", c.template, r.body)
			}
			if r.status != 201 {
				t.Fatalf("create: %d %s", r.status, r.body)
			}
			id := r.json(t)["id"].(string)
			defer s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
			r = s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": c.command, "timeout_seconds": 120})
			res := r.json(t)
			out, _ := res["stdout"].(string)
			if r.status != 200 || res["exit_code"] != float64(0) {
				t.Fatalf("exec: %d %s", r.status, r.body)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
		})
	}
}
