package release

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// testVersion is a pre-release version: Debian spells it 0.0.1~citest.1.
const (
	testVersion    = "0.0.1-citest.1"
	testDebVersion = "0.0.1~citest.1"
)

// toolsBin is where make builds nfpm and cyclonedx-gomod (bin/tools); make
// test sets ORKESTR_RELEASE_TOOLS, a bare `go test` skips these tests.
func toolsBin(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("ORKESTR_RELEASE_TOOLS")
	if dir == "" {
		t.Skip("ORKESTR_RELEASE_TOOLS is not set: run through make test (it builds nfpm and cyclonedx-gomod into bin/tools)")
	}
	for _, tool := range []string{"nfpm", "cyclonedx-gomod"} {
		if _, err := os.Stat(filepath.Join(dir, tool)); err != nil {
			t.Fatalf("%s is missing in %s: make bin/tools/%s", tool, dir, tool)
		}
	}
	return dir
}

func runscPinned(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^RUNSC_VERSION\s*:=\s*(\S+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no RUNSC_VERSION in the Makefile")
	}
	return string(m[1])
}

func dist(t *testing.T, tools, dir, version string, env ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(testenv.RepoRoot(), "scripts/dist.sh"))
	cmd.Env = append(os.Environ(), append([]string{"VERSION=" + version, "ARCHES=" + runtime.GOARCH,
		"DIST_DIR=" + dir, "TOOLS_BIN=" + tools, "RUNSC_VERSION=" + runscPinned(t)}, env...)...)
	return cmd.CombinedOutput()
}

func TestDistRefusesHostileVersions(t *testing.T) {
	tools := toolsBin(t)
	for _, v := range []string{"", "1.0", "1.0.0;touch /tmp/pwned", "../../1.0.0", "1.0.0 x", "v1.0.0", "1.0.0-$(id)", "1.0.0\n2.0.0"} {
		dir := t.TempDir()
		out, err := dist(t, tools, dir, v)
		var ee *exec.ExitError
		if err == nil || !errorAs(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("VERSION=%q: want exit 2, got %v: %s", v, err, out)
		}
		if ents, _ := os.ReadDir(dir); len(ents) > 0 {
			t.Errorf("VERSION=%q: dist wrote %d entries before refusing", v, len(ents))
		}
	}
	out, err := dist(t, tools, t.TempDir(), testVersion, "ARCHES=riscv64")
	if err == nil || !strings.Contains(string(out), "riscv64 is not supported") {
		t.Errorf("ARCHES=riscv64: %v %s", err, out)
	}
}

func errorAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}

// TestDist builds the release for this host's architecture (make test's
// bound on the cost; make dist builds amd64 and arm64) and checks every
// artifact by using it.
func TestDist(t *testing.T) {
	testenv.RequireRoot(t)
	tools := toolsBin(t)
	dir := t.TempDir()
	start := time.Now()
	out, err := dist(t, tools, dir, testVersion)
	if err != nil {
		t.Fatalf("dist.sh: %v\n%s", err, out)
	}
	t.Logf("dist for linux/%s took %s", runtime.GOARCH, time.Since(start).Round(time.Second))
	name := "orkestr_" + testVersion + "_linux_" + runtime.GOARCH

	t.Run("SHA256SUMS", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(dir, "SHA256SUMS"))
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]bool{name + ".tar.gz": false, "orkestr_" + testVersion + "_" + runtime.GOARCH + ".deb": false,
			"orkestr_" + testVersion + "_oci.tar": false, name + "/sbom/orkestrd.cdx.json": false, name + "/sbom/runsc.cdx.json": false}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			sum, file, ok := strings.Cut(sc.Text(), "  ")
			if !ok {
				t.Fatalf("malformed line %q", sc.Text())
			}
			data, err := os.ReadFile(filepath.Join(dir, file))
			if err != nil {
				t.Fatal(err)
			}
			if h := sha256.Sum256(data); hex.EncodeToString(h[:]) != sum {
				t.Errorf("%s: checksum does not match", file)
			}
			if _, ok := want[file]; ok {
				want[file] = true
			}
		}
		for f, seen := range want {
			if !seen {
				t.Errorf("SHA256SUMS does not list %s", f)
			}
		}
	})

	t.Run("tarball", func(t *testing.T) {
		files := untar(t, filepath.Join(dir, name+".tar.gz"))
		for _, f := range []string{"bin/orkestrd", "bin/orkestr", "bin/orkestr-agent", "bin/runsc", "LICENSE", "NOTICE",
			"THIRD_PARTY_LICENSES.csv", "THIRD_PARTY_LICENSES.runsc.csv", "config.yaml", "systemd/orkestr.service", "sbom/orkestrd.cdx.json"} {
			h, ok := files[name+"/"+f]
			if !ok {
				t.Errorf("tarball has no %s", f)
				continue
			}
			if h.Uid != 0 || h.Gid != 0 {
				t.Errorf("%s is owned by %d:%d, want root", f, h.Uid, h.Gid)
			}
			if strings.HasPrefix(f, "bin/") && h.Mode&0o111 == 0 {
				t.Errorf("%s is not executable", f)
			}
		}
		for n := range files {
			if !strings.HasPrefix(n, name+"/") && n != name+"/" && n != name {
				t.Errorf("tarball entry %q is outside %s/", n, name)
			}
		}
	})

	t.Run("static binaries stamped with the version", func(t *testing.T) {
		for _, b := range []string{"orkestrd", "orkestr", "orkestr-agent", "runsc"} {
			path := filepath.Join(dir, name, "bin", b)
			f, err := elf.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			wantMachine := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[runtime.GOARCH]
			if f.Machine != wantMachine {
				t.Errorf("%s: machine %v, want %v", b, f.Machine, wantMachine)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					t.Errorf("%s has a dynamic loader: not static", b)
				}
			}
			if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
				t.Errorf("%s links %v: not static", b, libs)
			}
			f.Close()
		}
		out, err := exec.Command(filepath.Join(dir, name, "bin/orkestrd"), "version").CombinedOutput()
		if err != nil || !strings.Contains(string(out), testVersion) {
			t.Errorf("orkestrd version: %v %q, want %s in it", err, out, testVersion)
		}
	})

	t.Run("SBOM", func(t *testing.T) {
		type bom struct {
			BomFormat string `json:"bomFormat"`
			Metadata  struct {
				Component struct{ Name, Version string } `json:"component"`
			} `json:"metadata"`
			Components []struct{ Name, Version, Purl string } `json:"components"`
		}
		read := func(b string) bom {
			var x bom
			data, err := os.ReadFile(filepath.Join(dir, name, "sbom", b+".cdx.json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(data, &x); err != nil {
				t.Fatal(err)
			}
			if x.BomFormat != "CycloneDX" {
				t.Errorf("%s: bomFormat %q", b, x.BomFormat)
			}
			return x
		}
		d := read("orkestrd")
		if d.Metadata.Component.Version != testVersion {
			t.Errorf("orkestrd SBOM: version %q, want %s", d.Metadata.Component.Version, testVersion)
		}
		// What the binary embeds, at go.mod's versions.
		gomod, _ := os.ReadFile(filepath.Join(testenv.RepoRoot(), "go.mod"))
		for _, mod := range []string{"github.com/jackc/pgx/v5", "modernc.org/sqlite", "github.com/google/go-containerregistry"} {
			m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(mod) + `\s+(\S+)`).FindSubmatch(gomod)
			if m == nil {
				t.Fatalf("%s not in go.mod", mod)
			}
			found := false
			for _, c := range d.Components {
				found = found || (c.Name == mod && c.Version == string(m[1]) && strings.HasPrefix(c.Purl, "pkg:golang/"))
			}
			if !found {
				t.Errorf("orkestrd SBOM lacks %s %s", mod, m[1])
			}
		}
		// runsc is tools/runsc's build, which embeds gVisor at the pinned
		// version.
		r := read("runsc")
		if want := runscBuild(t); r.Metadata.Component.Name != "github.com/orkestr-eu/orkestr/tools/runsc" || r.Metadata.Component.Version != want {
			t.Errorf("runsc SBOM: component %+v, want github.com/orkestr-eu/orkestr/tools/runsc %s", r.Metadata.Component, want)
		}
		gvisor := false
		for _, c := range r.Components {
			gvisor = gvisor || (c.Name == "gvisor.dev/gvisor" && c.Version == runscPinned(t))
		}
		if !gvisor {
			t.Errorf("runsc SBOM lacks gvisor.dev/gvisor %s", runscPinned(t))
		}
	})

	t.Run("Debian package", func(t *testing.T) { testDeb(t, filepath.Join(dir, "orkestr_"+testVersion+"_"+runtime.GOARCH+".deb")) })
	t.Run("OCI image", func(t *testing.T) { testImage(t, dir, name) })
}

func untar(t *testing.T, path string) map[string]*tar.Header {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	files := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")] = h
	}
}

// testDeb installs the package with the real dpkg, maintainer scripts
// included, into a throwaway root (dpkg --root): a `dpkg -i` on this machine
// would replace the host's /usr/bin and start a systemd service on a shared
// CI host. The scripts honour DPKG_ROOT and leave the running system alone;
// the installed server is then started from that root on a spare port and
// state directory, runs a real sandbox with the packaged runsc and agent,
// and stops.
func testDeb(t *testing.T, deb string) {
	fields, err := exec.Command("dpkg-deb", "--show", "--showformat", "${Package}|${Version}|${Architecture}|${Depends}", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(fields), "orkestr|"+testDebVersion+"|"+runtime.GOARCH+"|iproute2, nftables, ca-certificates"; got != want {
		t.Errorf("package fields %q, want %q", got, want)
	}
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "var/lib/dpkg/status"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// --force-depends: the throwaway root has no iproute2/nftables packages
	// (the host provides the commands); --force-script-chrootless runs the
	// maintainer scripts with DPKG_ROOT set instead of chrooting into a root
	// that has no /bin/sh.
	dpkg := func(args ...string) {
		t.Helper()
		cmd := exec.Command("dpkg", append([]string{"--root=" + root, "--log=/dev/null", "--force-depends", "--force-script-chrootless", "--force-not-root"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("dpkg %v: %v\n%s", args, err, out)
		}
	}
	hostUnit := "/etc/systemd/system/multi-user.target.wants/orkestr.service"
	_, hostHadUnit := os.Lstat(hostUnit)
	dpkg("--install", deb)
	for _, f := range []string{"usr/bin/orkestrd", "usr/bin/orkestr", "usr/bin/orkestr-agent", "usr/bin/runsc",
		"etc/orkestr/config.yaml", "lib/systemd/system/orkestr.service", "usr/share/doc/orkestr/LICENSE", "usr/share/doc/orkestr/THIRD_PARTY_LICENSES.csv"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("installed package lacks /%s: %v", f, err)
		}
	}
	// postinst ran (under DPKG_ROOT): it made the private data directory.
	if st, err := os.Stat(filepath.Join(root, "var/lib/orkestr/data")); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("postinst did not create /var/lib/orkestr/data 0700: %v", err)
	}
	unit, err := os.ReadFile(filepath.Join(root, "lib/systemd/system/orkestr.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^ExecStart=/usr/bin/orkestrd serve`).Match(unit) || strings.Contains(string(unit), "/usr/local/") {
		t.Errorf("unit does not start the packaged /usr/bin/orkestrd:\n%s", unit)
	}
	if !regexp.MustCompile(`(?m)^KillMode=process$`).Match(unit) {
		t.Errorf("unit would kill the sandboxes on stop (no KillMode=process):\n%s", unit)
	}
	// systemd's own check of the unit (syntax, unknown keys, the binary),
	// with ExecStart pointed into the throwaway root.
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		verifyDir := t.TempDir()
		local := strings.ReplaceAll(string(unit), "/usr/bin/orkestrd", filepath.Join(root, "usr/bin/orkestrd"))
		if err := os.WriteFile(filepath.Join(verifyDir, "orkestr.service"), []byte(local), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sa, "verify", "--man=no", filepath.Join(verifyDir, "orkestr.service")).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	} else {
		t.Log("systemd-analyze is not installed: the unit is not verified by systemd")
	}
	if _, err := os.Lstat(hostUnit); (err == nil) != (hostHadUnit == nil) {
		t.Errorf("installing into a throwaway root changed the host's %s", hostUnit)
	}
	if out, err := exec.Command("dpkg", "--root="+root, "--status", "orkestr").Output(); err != nil || !strings.Contains(string(out), "Status: install ok installed") {
		t.Errorf("dpkg does not record the package as installed: %v %s", err, out)
	}

	t.Run("the installed server runs a sandbox", func(t *testing.T) { runInstalled(t, root) })

	dpkg("--remove", "orkestr")
	if _, err := os.Stat(filepath.Join(root, "usr/bin/orkestrd")); !os.IsNotExist(err) {
		t.Errorf("after remove /usr/bin/orkestrd is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/orkestr/config.yaml")); err != nil {
		t.Errorf("remove must keep the conffile /etc/orkestr/config.yaml: %v", err)
	}
	dpkg("--purge", "orkestr")
	if _, err := os.Stat(filepath.Join(root, "etc/orkestr/config.yaml")); !os.IsNotExist(err) {
		t.Errorf("after purge the conffile is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/orkestr/data")); err != nil {
		t.Errorf("purge must keep the data directory: %v", err)
	}
}

// runInstalled starts root/usr/bin/orkestrd with the packaged config and
// the packaged runsc and agent (found beside it), creates a sandbox, runs a
// command in it, deletes it and stops the server.
func runInstalled(t *testing.T, root string) {
	cfg, err := os.ReadFile(filepath.Join(root, "etc/orkestr/config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// The packaged config enables sandbox networking on 10.231.0.0/16; other
	// servers on a shared test host may use that range, so this run turns
	// networking off and keeps every other packaged setting.
	cfg = regexp.MustCompile(`(?m)^(\s+enabled:)\s*true`).ReplaceAll(cfg, []byte("$1 false"))
	if !bytes.Contains(cfg, []byte("enabled: false")) {
		t.Fatalf("packaged config has no network.enabled to turn off:\n%s", cfg)
	}
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	state, err := os.MkdirTemp("/run", "orkrel-")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		// Nothing of the installed server may outlive it.
		if procs := testenv.ProcessesMentioning(state); len(procs) > 0 {
			t.Errorf("leaked processes: %v", procs)
		}
		if mounts := testenv.MountsUnder(state); len(mounts) > 0 {
			t.Errorf("leaked mounts: %v", mounts)
		}
		_ = os.RemoveAll(state)
	}()
	addr := testenv.FreePort(t)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(root, "usr/bin/orkestrd"), "serve", "--config", cfgPath, "--listen", addr,
		"--data-dir", filepath.Join(root, "var/lib/orkestr/data"), "--state-dir", state,
		"--template-dir", testenv.TemplateDir(), "--pool-size=0")
	// Only what the unit sets: no ORKESTR_RUNSC/ORKESTR_AGENT from the test
	// environment, so the packaged ones beside orkestrd are used.
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("orkestrd did not stop cleanly: %v\n%s", err, stderr.String())
			}
		case <-time.After(45 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("orkestrd did not stop within 45 s of SIGTERM")
		}
	}
	defer stop()
	base := "http://" + addr
	// A hung server fails the test instead of stalling it.
	client := &http.Client{Timeout: 3 * time.Minute}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := client.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the installed orkestrd did not answer /healthz: %v\n%s", err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	key := regexp.MustCompile(`ork_[0-9A-Za-z]{43}`).FindString(stdout.String())
	if key == "" {
		t.Fatalf("no bootstrap key on stdout: %q", stdout.String())
	}
	call := func(method, path string, body string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	code, m := call("POST", "/v1/sandboxes", `{"template":"debian-12"}`)
	if code != 201 {
		t.Fatalf("create: %d %v\n%s", code, m, stderr.String())
	}
	id, _ := m["id"].(string)
	defer func() {
		if code, m := call("DELETE", "/v1/sandboxes/"+url.PathEscape(id), ""); code/100 != 2 {
			t.Errorf("delete: %d %v", code, m)
		}
	}()
	code, m = call("POST", "/v1/sandboxes/"+url.PathEscape(id)+"/exec", `{"command":"uname -s; echo from-the-package"}`)
	if code != 200 || m["stdout"] != "Linux\nfrom-the-package\n" {
		t.Fatalf("exec: %d %v", code, m)
	}
	// gVisor's kernel answers, so the packaged runsc ran the sandbox.
	code, m = call("POST", "/v1/sandboxes/"+url.PathEscape(id)+"/exec", `{"command":"dmesg | head -1"}`)
	if code != 200 || !strings.Contains(fmt.Sprint(m["stdout"]), "gVisor") {
		t.Errorf("dmesg in the sandbox: %d %v", code, m)
	}
}

// testImage pushes the image that make dist wrote (an OCI layout) to a
// registry served in-process on loopback, pushes a fresh build of the same
// stage with imagetool --push, and checks that both have the same digest
// (reproducible), that the pulled image is configured to serve, and that
// the orkestrd in its layer is the release's static binary.
func testImage(t *testing.T, dir, stage string) {
	lp, err := layout.FromPath(filepath.Join(dir, "orkestr_"+testVersion+"_oci"))
	if err != nil {
		t.Fatal(err)
	}
	idx, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	// The layout's index.json is the index itself.
	want, _ := idx.Digest()

	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref, err := name.ParseReference(host+"/orkestr:"+testVersion, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatalf("push: %v", err)
	}
	// imagetool builds and pushes the same stage again.
	again := host + "/orkestr:again"
	epoch := image0Created(t, idx)
	tool := exec.Command("go", "run", "./internal/release/imagetool", "--version", testVersion, "--commit", image0Label(t, idx, "org.opencontainers.image.revision"),
		"--epoch", fmt.Sprint(epoch), "--ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "--stage", runtime.GOARCH+"="+filepath.Join(dir, stage),
		"--push", again, "--insecure")
	tool.Dir = testenv.RepoRoot()
	out, err := tool.CombinedOutput()
	if err != nil {
		t.Fatalf("imagetool --push: %v\n%s", err, out)
	}
	for _, r := range []string{ref.String(), again} {
		pref, _ := name.ParseReference(r, name.Insecure)
		pulled, err := remote.Index(pref)
		if err != nil {
			t.Fatalf("pull %s: %v", r, err)
		}
		if got, _ := pulled.Digest(); got != want {
			t.Errorf("%s has digest %s, want %s (make dist's)", r, got, want)
		}
	}

	pulled, err := remote.Index(ref)
	if err != nil {
		t.Fatal(err)
	}
	pm, _ := pulled.IndexManifest()
	if len(pm.Manifests) != 1 || pm.Manifests[0].Platform == nil || pm.Manifests[0].Platform.Architecture != runtime.GOARCH || pm.Manifests[0].Platform.OS != "linux" {
		t.Fatalf("index manifests: %+v", pm.Manifests)
	}
	img, err := pulled.Image(pm.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cf.Config.Entrypoint, " ") != "/usr/bin/orkestrd" || strings.Join(cf.Config.Cmd, " ") != "serve" ||
		cf.Config.Labels["org.opencontainers.image.version"] != testVersion || cf.Config.Labels["org.opencontainers.image.licenses"] != "Apache-2.0" {
		t.Errorf("image config: %+v", cf.Config)
	}
	if !contains(cf.Config.Env, "ORKESTR_LISTEN=0.0.0.0:7777") {
		t.Errorf("the image's server would listen on loopback only: %v", cf.Config.Env)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %v %d", err, len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	seen := map[string]bool{}
	bin := filepath.Join(t.TempDir(), "orkestrd")
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seen[h.Name] = true
		if h.Name == "usr/bin/orkestrd" {
			f, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
	}
	for _, f := range []string{"usr/bin/orkestrd", "usr/bin/orkestr-agent", "usr/bin/runsc", "etc/orkestr/config.yaml",
		"etc/ssl/certs/ca-certificates.crt", "usr/share/doc/orkestr/LICENSE", "tmp/", "var/lib/orkestr/data/"} {
		if !seen[f] {
			t.Errorf("image layer lacks %s", f)
		}
	}
	// The image has no libc: only a static binary can run from it.
	if out, err := exec.Command(bin, "version").CombinedOutput(); err != nil || !strings.Contains(string(out), testVersion) {
		t.Errorf("orkestrd from the image: %v %s", err, out)
	}
}

func image0(t *testing.T, idx v1.ImageIndex) *v1.ConfigFile {
	t.Helper()
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cf
}

func image0Created(t *testing.T, idx v1.ImageIndex) int64 { return image0(t, idx).Created.Unix() }

func image0Label(t *testing.T, idx v1.ImageIndex, k string) string {
	return image0(t, idx).Config.Labels[k]
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
