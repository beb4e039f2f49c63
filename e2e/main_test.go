// Package e2e starts the real binaries (orkestrd, orkestr-agent, runsc) and
// tests them from the outside, as an operator or a client would.
package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// binDir holds binaries built from this checkout for the test run.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// Every test here runs the real binaries against real sandboxes:
		// none belongs in the fast tier.
		fmt.Println("e2e: skipped under -short (run by `make test`)")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "orkestr-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := func() int {
		defer os.RemoveAll(dir)
		for _, b := range []struct{ name, pkg string }{
			{"orkestrd", "./cmd/orkestrd"},
			{"orkestr-agent", "./cmd/orkestr-agent"},
			{"orkestr", "./cmd/orkestr"},
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.name), b.pkg)
			cmd.Dir = testenv.RepoRoot()
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b.name, err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}
