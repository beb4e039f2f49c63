package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/orkestr-eu/orkestr/internal/template/oci/ocitest"
)

// tinyImage is a two-layer image around the host's static busybox: enough
// for the agent's shell and a few commands. The second layer replaces a
// file and deletes one with a whiteout.
func tinyImage(t *testing.T, motd string) v1.Image {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("this test needs a static busybox at /bin/busybox (apt-get install busybox-static): %v", err)
	}
	base := []ocitest.Entry{ocitest.Dir("bin"), {Name: "bin/busybox", Body: string(bb), Mode: 0o755}}
	for _, tool := range []string{"sh", "cat", "echo", "ls", "env", "true"} {
		base = append(base, ocitest.Symlink("bin/"+tool, "busybox"))
	}
	base = append(base,
		ocitest.Dir("etc"),
		ocitest.File("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
		ocitest.File("etc/motd", "from layer 1\n"),
		ocitest.Dir("opt"),
		ocitest.File("opt/gone.txt", "deleted by layer 2\n"),
		ocitest.File("opt/kept.txt", "kept\n"),
	)
	top := ocitest.Layer(t, ocitest.File("etc/motd", motd+"\n"), ocitest.Entry{Name: "opt/.wh.gone.txt"})
	return ocitest.Image(t, []string{"PATH=/bin", "IMAGE_GREETING=hello from the image config"}, ocitest.Layer(t, base...), top)
}

// buildTemplate runs `orkestrd admin template build [flags] NAME` and
// returns its output and error.
func buildTemplate(t *testing.T, configPath, templateDir, name string, flags ...string) (string, error) {
	t.Helper()
	args := append([]string{"admin", "template", "build", "--config", configPath, "--template-dir", templateDir}, flags...)
	return runOrkestrd(t, append(args, name)...)
}

func runOrkestrd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(filepath.Join(binDir, "orkestrd"), args...).CombinedOutput()
	return string(out), err
}

func TestTemplateFromLocalRegistry(t *testing.T) {
	host := ocitest.StartRegistry(t, nil)
	ocitest.Push(t, host+"/test/tiny:v1", tinyImage(t, "from layer 2"))

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
	if !strings.Contains(out, "layer 2/2") || !strings.Contains(out, "unpacked") {
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

	// A rebuild from a changed image leaves the old one unpacked; prune
	// keeps it while a sandbox (the one above, the warm pool's) runs in
	// it and removes it, with its own layer, once they are gone.
	ocitest.Push(t, host+"/test/tiny:v1", tinyImage(t, "from layer 2, v2"))
	if out, err := buildTemplate(t, s.config, templateDir, "tiny", "--force"); err != nil {
		t.Fatalf("rebuild tiny: %v\n%s", err, out)
	}
	prune := func() string {
		out, err := runOrkestrd(t, "admin", "template", "prune", "--template-dir", templateDir)
		if err != nil {
			t.Fatalf("prune: %v\n%s", err, out)
		}
		return out
	}
	if out := prune(); !strings.Contains(out, "kept .images/sha256-") || strings.Contains(out, "removed .images/sha256-") {
		t.Fatalf("prune with a sandbox in the old image:\n%s", out)
	}
	s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
	for start := time.Now(); ; time.Sleep(time.Second) {
		out := prune()
		if strings.Contains(out, "removed .images/sha256-") && strings.Contains(out, "removed .oci/blobs/sha256/") {
			break
		}
		if time.Since(start) > time.Minute {
			t.Fatalf("the old image is still in use a minute after its sandboxes should be gone:\n%s", out)
		}
	}
	if imageDirs, _ := filepath.Glob(filepath.Join(templateDir, ".images", "sha256-*")); len(imageDirs) != 1 {
		t.Errorf("%d unpacked images after the prune, want 1", len(imageDirs))
	}
	id = s.create(s.key, map[string]any{"template": "tiny"})
	r = s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": "cat /etc/motd"})
	if res := r.json(t); r.status != 200 || res["stdout"] != "from layer 2, v2\n" {
		t.Fatalf("exec after the rebuild and prune: %d %s", r.status, r.body)
	}
	s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)

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
