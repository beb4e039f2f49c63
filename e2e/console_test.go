package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// TestConsoleInBrowser drives the web console in a real browser
// (Playwright's playwright-core on Debian's chromium, headless) against a
// real orkestrd: set a password from the admin's setup link, sign in,
// mint a token, create a sandbox with it through the API, watch it on the
// console with a moving sparkline, type a command into its terminal
// (xterm.js) and see the output, pause and terminate it from the page,
// revoke the token and see the API refuse it. The browser part is
// e2e/console/console.mjs; its screenshots go to e2e/artifacts/console/
// (ignored by git).
func TestConsoleInBrowser(t *testing.T) {
	testenv.RequireRoot(t)
	chromium := os.Getenv("ORKESTR_CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("no chromium at %s (apt-get install chromium; `make setup` does): %v", chromium, err)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is needed for the browser test (apt-get install nodejs npm)")
	}
	// playwright-core needs Node.js 20 or newer (Debian 12's own nodejs
	// is 18; NodeSource's or Debian 13's will do).
	if v, err := exec.Command(node, "--version").Output(); err != nil || !nodeAtLeast(string(v), 20) {
		t.Fatalf("the browser test needs Node.js >= 20; %s says %q (%v)", node, strings.TrimSpace(string(v)), err)
	}
	dir := filepath.Join(testenv.RepoRoot(), "e2e", "console")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "playwright-core")); err != nil {
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	artifacts := filepath.Join(testenv.RepoRoot(), "e2e", "artifacts", "console")
	_ = os.RemoveAll(artifacts)

	// The member's account ("default") is the operator's: the usage page
	// lists the nodes too.
	s := startAPI(t, serverOpts{poolSize: 1, logLevel: "info", config: "operator_accounts: [default]\n"})
	out := s.admin("user", "create", "--account", "default", "--email", "ada@example.com", "--url", s.url)
	link := regexp.MustCompile(`http://\S+/console/setup/[A-Za-z0-9_-]{43}`).FindString(out)
	if link == "" {
		t.Fatalf("admin user create printed no setup link:\n%s", out)
	}

	// Hostile or repeated input to the admin command is refused with a
	// reason, and prints no link.
	for _, c := range []struct{ email, want string }{
		{"not an email", "not an email address"},
		{"<script>@x", "not an email address"},
		{"ADA@example.com", "already exists"},
	} {
		cmd := exec.Command(filepath.Join(binDir, "orkestrd"), "admin", "user", "create", "--account", "default",
			"--email", c.email, "--data-dir", s.dataDir)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) || strings.Contains(string(out), "/console/setup/") {
			t.Errorf("admin user create --email %q: %v\n%s", c.email, err, out)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, filepath.Join(dir, "console.mjs"))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "ORKESTR_URL="+s.url, "SETUP_LINK="+link, "MEMBER_EMAIL=ada@example.com",
		"ARTIFACTS="+artifacts, "CHROMIUM="+chromium)
	// Its own process group, so that a timeout also ends the browser.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var buf strings.Builder
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	err = cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // nothing of the browser outlives the test
	}
	t.Logf("browser test (%v):\n%s", time.Since(start).Round(time.Millisecond), buf.String())
	if err != nil {
		t.Fatalf("browser test failed: %v; screenshots in %s; server log:\n%s", err, artifacts, tail(s.logText(), 4000))
	}
	shots, _ := filepath.Glob(filepath.Join(artifacts, "*.png"))
	if len(shots) < 10 {
		t.Fatalf("%d screenshots in %s, want one per page and step", len(shots), artifacts)
	}
	t.Logf("%d screenshots in %s", len(shots), artifacts)
	if p := testenv.ProcessesMentioning("console.mjs"); len(p) > 0 {
		t.Errorf("browser test processes left behind: %v", p)
	}
}

func nodeAtLeast(version string, major int) bool {
	v := strings.TrimPrefix(strings.TrimSpace(version), "v")
	n, _, _ := strings.Cut(v, ".")
	m, err := strconv.Atoi(n)
	return err == nil && m >= major
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
