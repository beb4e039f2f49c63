package release

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// runscBuild is the name scripts/runsc-build-id gives tools/runsc's build.
func runscBuild(t *testing.T) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(testenv.RepoRoot(), "scripts/runsc-build-id"))
	cmd.Env = append(os.Environ(), "RUNSC_VERSION="+runscPinned(t))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/runsc-build-id: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// tools/runsc builds the runsc that make and make dist ship: it must
// require the gVisor version the Makefile pins (and orkestrd is stamped
// with), or the binary would not be the version it claims.
func TestRunscModuleRequiresThePinnedVersion(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "tools/runsc/go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^require gvisor\.dev/gvisor (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("tools/runsc/go.mod does not require gvisor.dev/gvisor on a line of its own")
	}
	if got, want := string(m[1]), runscPinned(t); got != want {
		t.Fatalf("tools/runsc/go.mod requires gvisor.dev/gvisor %s, the Makefile pins RUNSC_VERSION %s: make them agree", got, want)
	}
}
