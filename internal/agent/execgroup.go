package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// DefaultExecCgroups is where the agent, as PID 1 of a sandbox, keeps one
// cgroup per command (the sandbox kernel's own cgroupfs, mounted by the
// runtime; nothing here touches the host's cgroups). They are in the memory
// hierarchy, which only accounts: the pids hierarchy holds the one group
// that caps all commands' tasks together (tasksGroup), since the sandbox
// kernel charges a task to its own pids cgroup only, not to its parents.
const DefaultExecCgroups = "/sys/fs/cgroup/memory/orkestr-exec"

// tasksGroup is the pids cgroup every command joins when the agent has a
// TasksMax.
const tasksGroup = "/sys/fs/cgroup/pids/orkestr-tasks"

// cgroup2Root is where the sandbox kernel's cgroupfs is mounted; it is a
// cgroup v2 (unified) hierarchy when the runtime starts the sandbox with
// --in-sandbox-cgroup=v2, recognisable by its cgroup.controllers file.
const cgroup2Root = "/sys/fs/cgroup"

// execGroupsV2 is DefaultExecCgroups's counterpart in a cgroup v2 sandbox:
// a sibling of the container's own cgroup (where the agent stays), so its
// pids.max caps every command's tasks together and never the agent's.
const execGroupsV2 = cgroup2Root + "/orkestr-exec"

// execGroups puts each command's process tree in a cgroup of its own, so a
// timeout or a cancelled exec kills everything the command started, also
// processes that left its process group and session and were reparented to
// PID 1 (a double fork under setsid), which a walk of the process tree
// cannot find. Moving itself out of its cgroup takes a deliberate write by
// the command; the sandbox's deadline and limits still hold then.
type execGroups struct {
	base  string // "" when cgroups are not available: the tree walk alone
	tasks string // the pids cgroup capping all commands; "" for none
	// v2: base is in a cgroup v2 hierarchy and is itself the tasks group
	// (its pids.max holds for every command's cgroup under it).
	v2 bool
	// tasksMax, when > 0, is also every command's RLIMIT_NPROC (see
	// limitTasks).
	tasksMax int64
	next     atomic.Uint64
}

// newExecGroups prepares base, and with tasksMax > 0 the pids cgroup that
// caps every command's tasks together; without a usable cgroupfs it returns
// a disabled set.
//
// In a cgroup v2 sandbox (see cgroup2Root) the default base moves to
// execGroupsV2: there the sandbox kernel checks pids.max, hierarchically,
// on every task a command creates, whatever its user, which is the
// sandbox-wide cap a fork bomb meets (in v1 it is checked on about one
// fork in seven; see limitTasks).
func newExecGroups(base string, tasksMax int64) *execGroups {
	g := &execGroups{tasksMax: tasksMax}
	if base == "" {
		return g
	}
	if base == DefaultExecCgroups {
		if _, err := os.Stat(filepath.Join(cgroup2Root, "cgroup.controllers")); err == nil {
			return newExecGroupsV2(execGroupsV2, tasksMax)
		}
	}
	if tasksMax > 0 && os.MkdirAll(tasksGroup, 0o755) == nil &&
		os.WriteFile(filepath.Join(tasksGroup, "pids.max"), []byte(strconv.FormatInt(tasksMax, 10)), 0) == nil {
		g.tasks = tasksGroup
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

// newExecGroupsV2 prepares base in a cgroup v2 hierarchy: memory enabled
// for the commands' cgroups under it (their usage, for the OOM killer's
// choice) and, with tasksMax > 0, base's pids.max, which every command's
// tasks are charged against.
func newExecGroupsV2(base string, tasksMax int64) *execGroups {
	g := &execGroups{tasksMax: tasksMax}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return g
	}
	// The runtime enables the controllers at the root; base passes memory
	// on to each command's cgroup (pids stays base's own: one count).
	_ = os.WriteFile(filepath.Join(cgroup2Root, "cgroup.subtree_control"), []byte("+pids +memory"), 0)
	_ = os.WriteFile(filepath.Join(base, "cgroup.subtree_control"), []byte("+memory"), 0)
	if tasksMax > 0 {
		if err := os.WriteFile(filepath.Join(base, "pids.max"), []byte(strconv.FormatInt(tasksMax, 10)), 0); err != nil {
			return g
		}
	}
	g.base, g.v2 = base, true
	return g
}

// join creates a cgroup for a new command and moves pid into it; pid must
// not have forked yet. It returns the cgroup's directory, or "" if it could
// not (the command then runs without one).
func (g *execGroups) join(pid int) string {
	g.limitTasks(pid)
	if g.tasks != "" && !g.v2 {
		_ = os.WriteFile(filepath.Join(g.tasks, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
	}
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

// limitTasks sets pid's RLIMIT_NPROC (soft and hard) to the task cap. The
// pids cgroup alone does not hold a fork bomb in gVisor: its cgroup v1
// charge on fork goes to whichever of the task's hierarchies a map
// iteration yields first (kernel.Task.chargeLocked), so pids.max is
// checked on about one fork in seven and a bomb outgrows it until the
// host's limits end the sandbox. RLIMIT_NPROC is checked on every task
// creation against the creating task's own limit, counts a user's tasks
// until they are reaped (zombies too), and in gVisor applies to root as
// well unless it holds CAP_SYS_RESOURCE or CAP_SYS_ADMIN, which commands do
// not, so they cannot raise the hard limit back either. The agent's own
// limit stays unlimited: its threads and shells are never refused. Setting
// another process's limit needs the same user ids (or CAP_SYS_RESOURCE,
// which the agent does not hold), so this works for root's commands; a
// command started as another user sets its own limit in its shell
// (tasksUlimit).
func (g *execGroups) limitTasks(pid int) {
	if g.tasksMax <= 0 {
		return
	}
	lim := unix.Rlimit{Cur: uint64(g.tasksMax), Max: uint64(g.tasksMax)}
	_ = unix.Prlimit(pid, unix.RLIMIT_NPROC, &lim, nil)
}

// tasksUlimit is the shell prefix with which a command started as another
// user caps its own tasks (see limitTasks); "" without a cap.
func (g *execGroups) tasksUlimit() string {
	if g.tasksMax <= 0 {
		return ""
	}
	return "ulimit -p " + strconv.FormatInt(g.tasksMax, 10) + "; "
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
	// cgroup v2 kills the whole group at once, forks in flight included.
	if f, err := os.OpenFile(filepath.Join(dir, "cgroup.kill"), os.O_WRONLY, 0); err == nil {
		_, _ = f.WriteString("1")
		f.Close()
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

// oomKill kills the command process with the largest resident memory (never
// the agent) and marks its command's cgroup, so the command's exit status
// says it was OOM-killed. The sandbox kernel has no OOM killer of its own:
// without this the host's would end the whole sandbox.
func (a *Agent) oomKill() wire.OOMKilled {
	self := os.Getpid()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return wire.OOMKilled{}
	}
	pageSize := int64(os.Getpagesize())
	var victim wire.OOMKilled
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid <= 1 {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/statm")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			continue
		}
		rss, _ := strconv.ParseInt(f[1], 10, 64)
		if rss*pageSize > victim.RSSBytes {
			victim = wire.OOMKilled{PID: pid, RSSBytes: rss * pageSize}
		}
	}
	if victim.PID == 0 {
		return victim
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", victim.PID)); err == nil {
		victim.Comm = strings.TrimSpace(string(b))
	}
	if dir := a.groups.of(victim.PID); dir != "" {
		a.oomGroups.Store(dir, true)
	}
	_ = unix.Kill(victim.PID, unix.SIGKILL)
	return victim
}

// of returns the command cgroup directory pid is in, "" if none.
func (g *execGroups) of(pid int) string {
	if g.base == "" {
		return ""
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return ""
	}
	// Lines are "id:controllers:path". The sandbox kernel shows the path
	// under the container's own cgroup ("/<container>/orkestr-exec/7"),
	// while its cgroupfs is mounted with that cgroup as the root.
	ctrl := filepath.Base(filepath.Dir(g.base))
	mark := "/" + filepath.Base(g.base) + "/"
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		// v2 has one line, "0::/orkestr-exec/7".
		if g.v2 && parts[0] != "0" || !g.v2 && !slices.Contains(strings.Split(parts[1], ","), ctrl) {
			continue
		}
		if i := strings.LastIndex(parts[2], mark); i >= 0 {
			return filepath.Join(g.base, parts[2][i+len(mark):])
		}
	}
	return ""
}
