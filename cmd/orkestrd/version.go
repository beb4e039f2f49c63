package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
)

// Set by the Makefile's build (-ldflags "-X main.version=… -X main.commit=…
// -X main.runscPinned=…"); a plain `go build` falls back to the build info.
var (
	version     = ""
	commit      = ""
	runscPinned = ""
)

// buildVersion is the version and commit this binary was built from.
func buildVersion() (ver, rev string) {
	ver, rev = version, commit
	bi, ok := debug.ReadBuildInfo()
	if ver == "" {
		ver = "dev"
		if ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			ver = bi.Main.Version
		}
	}
	if rev == "" && ok {
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if rev != "" && dirty {
			rev += "-dirty"
		}
	}
	if rev == "" {
		rev = "unknown"
	}
	return ver, rev
}

// printVersion prints what this binary is and which runsc it runs with.
func printVersion(args []string) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	runsc := fs.String("runsc", envOr("ORKESTR_RUNSC", filepath.Join(node.ExecutableDir(), "runsc")), "runsc binary to ask for its version (env ORKESTR_RUNSC)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ver, rev := buildVersion()
	fmt.Printf("orkestrd %s\ncommit %s\ndatabase schema version %d\n", ver, rev, sqlstore.SchemaVersion())
	pinned := runscPinned
	if pinned == "" {
		pinned = "unknown (built without the Makefile)"
	}
	fmt.Printf("runsc pinned %s\n", pinned)
	fmt.Printf("runsc found %s\n", runscVersion(*runsc))
	return nil
}

// runscVersion asks a runsc binary for its version: its first line, or
// why there is none.
func runscVersion(path string) string {
	if _, err := os.Stat(path); err != nil {
		return "none at " + path
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return fmt.Sprintf("%s (runsc --version failed: %v)", path, err)
	}
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return fmt.Sprintf("%s: %s", path, first)
}
