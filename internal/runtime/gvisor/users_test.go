package gvisor_test

import (
	"testing"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// TestRootAfterUserKeepsExitStatus: starting a command as another user
// made the agent non-dumpable (the child's setuid while it shared the
// agent's memory), after which a root command's zygote could not report
// its status through /proc/1/fd and `set -e` commands ended with 2.
func TestRootAfterUserKeepsExitStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("gVisor test")
	}
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)
	if out := run(t, sb, runtime.ExecRequest{Command: "id -u", User: runtime.UserUser}); out.ExitCode != 0 || out.Stdout != "1000\n" {
		t.Fatalf("as user: %+v", out)
	}
	for i := 0; i < 3; i++ {
		if out := run(t, sb, runtime.ExecRequest{Command: "set -e; echo a"}); out.ExitCode != 0 || out.Stdout != "a\n" {
			t.Fatalf("set -e as root after a user's command: exit %d, stdout %q, stderr %q", out.ExitCode, out.Stdout, out.Stderr)
		}
		if out := run(t, sb, runtime.ExecRequest{Command: "set -e; false; echo no"}); out.ExitCode != 1 || out.Stdout != "" {
			t.Fatalf("set -e; false: exit %d, stdout %q", out.ExitCode, out.Stdout)
		}
	}
}
