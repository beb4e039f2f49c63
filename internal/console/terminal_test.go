package console_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/store"
)

// TestTerminalRouteTenancy: the console's terminal endpoint is the API's,
// for the member's account only. (The terminal itself, on a real sandbox
// in a real browser, is in e2e/console.)
func TestTerminalRouteTenancy(t *testing.T) {
	e := newEnv(t, "sqlite://"+filepath.Join(t.TempDir(), "orkestr.db"), envOpts{})
	a, other := e.account("acme", "pro"), e.account("other", "pro")
	theirs := e.sandbox(other, store.StatusRunning, nil)
	mine := e.sandbox(a, store.StatusPaused, nil)
	if p := e.browser().get("/console/api/sandboxes/" + mine.ID + "/pty"); p.status != 401 {
		t.Errorf("without a session: %d %s", p.status, p.body)
	}
	b := e.member(a, "ada@example.com")
	if p := b.get("/console/api/sandboxes/" + theirs.ID + "/pty"); p.status != 404 || !strings.Contains(p.body, "sandbox_not_found") {
		t.Errorf("their sandbox: %d %s", p.status, p.body)
	}
	for _, bad := range []string{"sbx_x", "..%2f..%2fv1%2flimits", "%00"} {
		if p := b.get("/console/api/sandboxes/" + bad + "/pty"); p.status != 404 {
			t.Errorf("id %q: %d", bad, p.status)
		}
	}
	if p := b.get("/console/api/sandboxes/" + mine.ID + "/pty"); p.status != 409 || !strings.Contains(p.body, "sandbox_not_ready") {
		t.Errorf("our paused sandbox: %d %s", p.status, p.body)
	}
}

// TestVendoredXtermUnchanged: the embedded xterm.js files are the npm
// package's, byte for byte, as VERSION records.
func TestVendoredXtermUnchanged(t *testing.T) {
	dir := filepath.Join("static", "vendor", "xterm")
	f, err := os.Open(filepath.Join(dir, "VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 2 || len(fs[0]) != 64 {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, fs[1]))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != fs[0] {
			t.Errorf("%s differs from the npm package's", fs[1])
		}
		n++
	}
	if n != 3 {
		t.Fatalf("VERSION lists %d files, want 3", n)
	}
}
