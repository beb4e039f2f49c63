package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultExecCgroups is where the agent, as PID 1 of a sandbox, keeps one
// pids cgroup per command (the sandbox kernel's own cgroupfs, mounted by the
// runtime; nothing here touches the host's cgroups).
const DefaultExecCgroups = "/sys/fs/cgroup/pids/orkestr-exec"

// execGroups puts each command's process tree in a cgroup of its own, so a
// timeout or a cancelled exec kills everything the command started, also
// processes that left its process group and session and were reparented to
// PID 1 (a double fork under setsid), which a walk of the process tree
// cannot find. Moving itself out of its cgroup takes a deliberate write by
// the command; the sandbox's deadline and limits still hold then.
type execGroups struct {
	base string // "" when cgroups are not available: the tree walk alone
	next atomic.Uint64
}

// newExecGroups prepares base; without a usable cgroupfs it returns a
// disabled set.
func newExecGroups(base string) *execGroups {
	g := &execGroups{}
	if base == "" {
		return g
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return g
	}
	if _, err := os.Stat(filepath.Join(base, "cgroup.procs")); err != nil {
		return g
	}
	g.base = base
	return g
}

// join creates a cgroup for a new command and moves pid into it; pid must
// not have forked yet. It returns the cgroup's directory, or "" if it could
// not (the command then runs without one).
func (g *execGroups) join(pid int) string {
	if g.base == "" {
		return ""
	}
	g.sweep()
	dir := filepath.Join(g.base, strconv.FormatUint(g.next.Add(1), 10))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return ""
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		_ = os.Remove(dir)
		return ""
	}
	return dir
}

// sweep removes the cgroups of commands whose processes are all gone
// (removing a cgroup that still has members fails, which is the test).
func (g *execGroups) sweep() {
	ents, err := os.ReadDir(g.base)
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.IsDir() {
			_ = os.Remove(filepath.Join(g.base, e.Name()))
		}
	}
}

// members lists the processes in the cgroup dir.
func members(dir string) []int {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil && p > 1 {
			out = append(out, p)
		}
	}
	return out
}

// killGroup kills every process in the cgroup dir until it is empty (a
// process forking meanwhile lands in the same cgroup and is caught by the
// next round), then removes it.
func killGroup(dir string) {
	if dir == "" {
		return
	}
	for round := 0; round < 50; round++ {
		ps := members(dir)
		if len(ps) == 0 {
			break
		}
		for _, p := range ps {
			_ = unix.Kill(p, unix.SIGKILL)
		}
		time.Sleep(time.Millisecond)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		// Zombies not yet reaped still count; the next sweep removes it.
		return
	}
}
