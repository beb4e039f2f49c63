package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// TestMakeInstall stages `make install` into a temporary root: the binaries,
// the config (accepted by `orkestrd config check`), the data directories and
// the unit; `make uninstall` removes binaries and unit but keeps the config
// and the data. The unit passes `systemd-analyze verify` when it is here.
func TestMakeInstall(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	root := t.TempDir()
	bin := t.TempDir()
	for _, b := range []string{"orkestrd", "orkestr", "orkestr-agent"} {
		if err := os.Symlink(filepath.Join(binDir, b), filepath.Join(bin, b)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(testenv.Runsc(t), filepath.Join(bin, "runsc")); err != nil {
		t.Fatal(err)
	}
	make := func(target string) string {
		// GO=true: the binaries are the ones this test run built.
		cmd := exec.Command("make", "--no-print-directory", target, "DESTDIR="+root, "BIN="+bin, "GO=true")
		cmd.Dir = testenv.RepoRoot()
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("make %s: %v\n%s", target, err, out.String())
		}
		return out.String()
	}
	make("install")
	want := map[string]os.FileMode{
		"usr/local/bin/orkestrd":             0o755,
		"usr/local/bin/orkestr":              0o755,
		"usr/local/bin/orkestr-agent":        0o755,
		"usr/local/bin/runsc":                0o755,
		"etc/orkestr/config.yaml":            0o640,
		"etc/systemd/system/orkestr.service": 0o644,
		"var/lib/orkestr/data":               os.ModeDir | 0o700,
		"var/lib/orkestr/templates":          os.ModeDir | 0o755,
	}
	for p, mode := range want {
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Errorf("make install did not make %s: %v", p, err)
			continue
		}
		if fi.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), mode)
		}
	}
	orkestrd := filepath.Join(root, "usr/local/bin/orkestrd")
	out, err := exec.Command(orkestrd, "config", "check", "--config", filepath.Join(root, "etc/orkestr/config.yaml")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "listen: 127.0.0.1:7777") {
		t.Fatalf("the installed config: %v\n%s", err, out)
	}
	ver := exec.Command(orkestrd, "version")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ORKESTR_RUNSC=") { // the installed one, beside orkestrd
			ver.Env = append(ver.Env, kv)
		}
	}
	out, err = ver.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "runsc found "+filepath.Join(root, "usr/local/bin/runsc")) {
		t.Errorf("the installed orkestrd finds no runsc beside it: %v\n%s", err, out)
	}

	// A second install keeps an edited config.
	cfg := filepath.Join(root, "etc/orkestr/config.yaml")
	if err := os.WriteFile(cfg, []byte("region: edited\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	make("install")
	if b, _ := os.ReadFile(cfg); string(b) != "region: edited\n" {
		t.Errorf("make install overwrote the config: %q", b)
	}

	// The units, with the staged binaries in place of /usr/local/bin.
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		units := t.TempDir()
		var paths []string
		for _, u := range []string{"orkestr.service", "orkestr-backup.service", "orkestr-backup.timer"} {
			b, err := os.ReadFile(filepath.Join(root, "etc/systemd/system", u))
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(units, u)
			if err := os.WriteFile(p, bytes.ReplaceAll(b, []byte("/usr/local/bin/"), []byte(root+"/usr/local/bin/")), 0o644); err != nil {
				t.Fatal(err)
			}
			paths = append(paths, p)
		}
		out, err := exec.Command(sa, append([]string{"verify"}, paths...)...).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) != 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	} else {
		t.Log("systemd-analyze is not installed; the units were not verified")
	}

	make("uninstall")
	for p := range want {
		_, err := os.Lstat(filepath.Join(root, p))
		kept := strings.HasPrefix(p, "etc/orkestr/") || strings.HasPrefix(p, "var/lib/orkestr/")
		if kept && err != nil {
			t.Errorf("make uninstall removed %s", p)
		}
		if !kept && err == nil {
			t.Errorf("make uninstall left %s", p)
		}
	}
}
