package gvisor_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// testCtx returns a context that ends after d or with the test.
func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// newSandboxRes is newSandbox with explicit resources.
func newSandboxRes(t *testing.T, env *testenv.Env, res runtime.Resources) runtime.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sb, err := env.Driver.Create(ctx, runtime.Spec{Template: "debian-12", Rootfs: testenv.Rootfs(t, "debian-12"), Resources: res})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Destroy(context.Background()) })
	return sb
}

// sh runs cmd, requires exit 0 and returns its stdout.
func sh(t *testing.T, sb runtime.Sandbox, cmd string) string {
	t.Helper()
	out := run(t, sb, runtime.ExecRequest{Command: cmd})
	if out.ExitCode != 0 || out.TimedOut {
		t.Fatalf("%q: exit %d (timed out %v), stdout %q, stderr %q", cmd, out.ExitCode, out.TimedOut, out.Stdout, out.Stderr)
	}
	return out.Stdout
}

// proc is one process as the sandbox's own /proc shows it.
type proc struct {
	PID, PPID int
	State     string // R, S, Z, ...
	Comm      string
}

func (p proc) String() string {
	return fmt.Sprintf("%d(%s,%s,ppid %d)", p.PID, p.Comm, p.State, p.PPID)
}

// listProcs reads /proc/*/stat inside the sandbox with shell builtins only,
// so the listing itself starts no process.
func listProcs(t *testing.T, sb runtime.Sandbox) []proc {
	t.Helper()
	// The agent's idle pre-started shell (still holding its script pipe on
	// fd 3) is not one of the sandbox's processes in any sense a test means.
	out := sh(t, sb, `for d in /proc/[0-9]*; do
		[ -e "$d/fd/3" ] && grep -qF /proc/self/fd/3 "$d/cmdline" 2>/dev/null && continue
		read -r l < "$d/stat" 2>/dev/null && echo "$l"; done; :`)
	var ps []proc
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		open, close_ := strings.IndexByte(line, '('), strings.LastIndexByte(line, ')')
		if open < 0 || close_ < open {
			t.Fatalf("unparsable /proc stat line %q", line)
		}
		f := strings.Fields(line[close_+1:])
		if len(f) < 2 {
			t.Fatalf("unparsable /proc stat line %q", line)
		}
		pid, err1 := strconv.Atoi(strings.TrimSpace(line[:open]))
		ppid, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			t.Fatalf("unparsable /proc stat line %q", line)
		}
		ps = append(ps, proc{PID: pid, PPID: ppid, State: f[0], Comm: line[open+1 : close_]})
	}
	if len(ps) == 0 {
		t.Fatal("no processes listed in the sandbox's /proc")
	}
	return ps
}

// procsNamed returns the processes whose command name is comm.
func procsNamed(ps []proc, comm string) []proc {
	var out []proc
	for _, p := range ps {
		if p.Comm == comm {
			out = append(out, p)
		}
	}
	return out
}

// eventually polls cond until it holds or d passes.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
