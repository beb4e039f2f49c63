// Package cgroupv1 reads and writes the cgroup v1 controllers a sandbox is
// limited and measured by: cpu, cpuacct, memory and pids, each its own
// hierarchy on the hosts we run on.
package cgroupv1

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Root is where the v1 hierarchies are mounted.
var Root = "/sys/fs/cgroup"

// Controllers a sandbox's group exists in.
var Controllers = []string{"cpu", "cpuacct", "memory", "pids"}

// CPUPeriodMicros is the CFS period used for every quota.
const CPUPeriodMicros = 100000

// Group is one cgroup path (e.g. "/orkestr/o01h...") across the controllers.
type Group string

func (g Group) file(ctrl, name string) string {
	return filepath.Join(Root, ctrl, string(g), name)
}

// Limits to write.
type Limits struct {
	CPU         float64
	MemoryBytes int64
	PIDs        int64
}

// QuotaMicros turns vCPUs into a CFS quota per CPUPeriodMicros.
func QuotaMicros(cpu float64) int64 {
	if cpu <= 0 {
		return -1
	}
	return int64(math.Round(cpu * CPUPeriodMicros))
}

// Apply writes limits into an existing group. Lowering memory below current
// usage is accepted by the kernel, which then reclaims or kills.
func (g Group) Apply(l Limits) error {
	var errs []error
	if l.CPU > 0 {
		errs = append(errs, write(g.file("cpu", "cpu.cfs_period_us"), strconv.Itoa(CPUPeriodMicros)), g.SetCPUQuota(l.CPU))
	}
	if l.MemoryBytes > 0 {
		errs = append(errs, write(g.file("memory", "memory.limit_in_bytes"), strconv.FormatInt(l.MemoryBytes, 10)))
	}
	if l.PIDs > 0 {
		errs = append(errs, write(g.file("pids", "pids.max"), strconv.FormatInt(l.PIDs, 10)))
	}
	return errors.Join(errs...)
}

// SetCPUQuota sets the group's CFS quota to cpu vCPUs; 0 or less lifts
// it (the group may use every core).
//
// A quota also comes with a burst of one period's quota
// (cpu.cfs_burst_us, Linux 5.14+; left alone where the kernel has none):
// quota a group left unused in earlier periods, up to that much, may be
// spent on top of a later period's. So a sandbox's command after an idle
// spell runs at full speed until the saved quota is spent, instead of
// being held for the rest of its period as soon as it has used one
// period's share. That hold was the spread between two otherwise equal
// creates: `node -v` takes ≈ 85 ms of CPU, a small sandbox's period allows
// 50 ms, and a create waited 0–50 ms for the next period depending on
// where in it the command began (docs/benchmarks.md). Over any longer
// stretch the group still gets no more than its quota, plus that one
// burst.
func (g Group) SetCPUQuota(cpu float64) error {
	quota := QuotaMicros(cpu)
	burst := g.file("cpu", "cpu.cfs_burst_us")
	// The kernel refuses a quota under the burst: the burst goes first.
	if err := writeIfPresent(burst, "0"); err != nil {
		return err
	}
	if err := write(g.file("cpu", "cpu.cfs_quota_us"), strconv.FormatInt(quota, 10)); err != nil {
		return err
	}
	if quota <= 0 {
		return nil
	}
	return writeIfPresent(burst, strconv.FormatInt(quota, 10))
}

// SetCPUShares sets the group's CPU weight (cpu.shares; 1024 is the
// kernel's default).
func (g Group) SetCPUShares(n uint64) error {
	return write(g.file("cpu", "cpu.shares"), strconv.FormatUint(n, 10))
}

// SetCPUIdle marks the group SCHED_IDLE (cpu.idle, Linux 5.15+, also in
// v1): its tasks run only on CPU no non-idle sibling group wants, and any
// of those preempts them at once. false restores the weight cpu.shares had.
func (g Group) SetCPUIdle(idle bool) error {
	v := "0"
	if idle {
		v = "1"
	}
	return write(g.file("cpu", "cpu.idle"), v)
}

// Stats is one reading.
type Stats struct {
	CPUNanos         uint64
	MemoryUsage      uint64
	MemoryWorkingSet uint64
	MemoryLimit      uint64
	MemoryFailcnt    uint64
	OOMKills         uint64
	UnderOOM         bool
	PIDs             uint64
	PIDsLimit        uint64
	PIDsLimitHits    uint64 // forks refused because the group was at its limit
	CPUQuotaMicros   int64
	CPUPeriodMicros  uint64
	ReadAt           time.Time
}

// Read reads the group's usage. The working set is usage minus inactive file
// cache, the figure the kernel would not give back under pressure (as
// kubelet and cAdvisor compute it).
func (g Group) Read() (Stats, error) {
	s := Stats{ReadAt: time.Now()}
	var err error
	if s.CPUNanos, err = readUint(g.file("cpuacct", "cpuacct.usage")); err != nil {
		return s, err
	}
	if s.MemoryUsage, err = readUint(g.file("memory", "memory.usage_in_bytes")); err != nil {
		return s, err
	}
	s.MemoryLimit, _ = readUint(g.file("memory", "memory.limit_in_bytes"))
	s.MemoryFailcnt, _ = readUint(g.file("memory", "memory.failcnt"))
	kv, _ := readKV(g.file("memory", "memory.stat"))
	inactive := kv["total_inactive_file"]
	if inactive < s.MemoryUsage {
		s.MemoryWorkingSet = s.MemoryUsage - inactive
	}
	oom, _ := readKV(g.file("memory", "memory.oom_control"))
	s.OOMKills = oom["oom_kill"]
	s.UnderOOM = oom["under_oom"] == 1
	s.PIDs, _ = readUint(g.file("pids", "pids.current"))
	if ev, err := readKV(g.file("pids", "pids.events")); err == nil {
		s.PIDsLimitHits = ev["max"]
	}
	if v, err := os.ReadFile(g.file("pids", "pids.max")); err == nil {
		s.PIDsLimit, _ = strconv.ParseUint(strings.TrimSpace(string(v)), 10, 64)
	}
	if v, err := os.ReadFile(g.file("cpu", "cpu.cfs_quota_us")); err == nil {
		s.CPUQuotaMicros, _ = strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64)
	}
	s.CPUPeriodMicros, _ = readUint(g.file("cpu", "cpu.cfs_period_us"))
	return s, nil
}

// Usage is the part of Stats that metering reads every second.
type Usage struct {
	CPUNanos         uint64
	MemoryWorkingSet uint64
	MemoryLimit      uint64
}

// ReadUsage reads only CPU time, working set and memory limit: 4 files
// instead of Read's 11, which is most of what sampling every sandbox
// every second costs.
func (g Group) ReadUsage() (Usage, error) {
	var u Usage
	var err error
	if u.CPUNanos, err = readUint(g.file("cpuacct", "cpuacct.usage")); err != nil {
		return u, err
	}
	usage, err := readUint(g.file("memory", "memory.usage_in_bytes"))
	if err != nil {
		return u, err
	}
	u.MemoryLimit, _ = readUint(g.file("memory", "memory.limit_in_bytes"))
	var inactive uint64
	if b, err := os.ReadFile(g.file("memory", "memory.stat")); err == nil {
		const key = "\ntotal_inactive_file "
		if i := strings.Index(string(b), key); i >= 0 {
			rest := string(b[i+len(key):])
			if j := strings.IndexByte(rest, '\n'); j >= 0 {
				rest = rest[:j]
			}
			inactive, _ = strconv.ParseUint(rest, 10, 64)
		}
	}
	if inactive < usage {
		u.MemoryWorkingSet = usage - inactive
	}
	return u, nil
}

// MeterCache is what ReadMeterUsage keeps between two readings of one
// group; the zero value is ready to use. Not safe for concurrent use.
type MeterCache struct {
	statUsage uint64 // memory.usage_in_bytes when memory.stat was last read
	inactive  uint64 // its total_inactive_file then
	statAt    time.Time
}

// meterStatEvery and meterStatDrift bound how stale ReadMeterUsage's
// inactive file cache may be.
const (
	meterStatEvery = 10 * time.Second
	meterStatDrift = 1 << 20
)

// ReadMeterUsage is ReadUsage for a meter that reads every group once a
// second and knows the limit already (it is the size's): it reads
// cpuacct.usage and memory.usage_in_bytes each time but memory.stat (the
// costly file: the kernel formats some forty counters) only when usage
// moved by more than 1 MiB since it was last read or 10 s have passed,
// and never memory.limit_in_bytes. An idle sandbox's reading is two small
// files. The working set is then off by at most the inactive file cache's
// change within those bounds.
func (g Group) ReadMeterUsage(c *MeterCache) (Usage, error) {
	var u Usage
	var err error
	if u.CPUNanos, err = readUint(g.file("cpuacct", "cpuacct.usage")); err != nil {
		return u, err
	}
	usage, err := readUint(g.file("memory", "memory.usage_in_bytes"))
	if err != nil {
		return u, err
	}
	drift := max(usage, c.statUsage) - min(usage, c.statUsage)
	if c.statAt.IsZero() || drift > meterStatDrift || time.Since(c.statAt) >= meterStatEvery {
		c.inactive = readInactiveFile(g.file("memory", "memory.stat"))
		c.statUsage, c.statAt = usage, time.Now()
	}
	if c.inactive < usage {
		u.MemoryWorkingSet = usage - c.inactive
	}
	return u, nil
}

// readInactiveFile is memory.stat's total_inactive_file; 0 if unreadable.
func readInactiveFile(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	const key = "\ntotal_inactive_file "
	i := strings.Index(string(b), key)
	if i < 0 {
		return 0
	}
	rest := string(b[i+len(key):])
	if j := strings.IndexByte(rest, '\n'); j >= 0 {
		rest = rest[:j]
	}
	v, _ := strconv.ParseUint(rest, 10, 64)
	return v
}

// Exists reports whether the group exists in any controller.
func (g Group) Exists() bool {
	for _, c := range Controllers {
		if _, err := os.Stat(filepath.Join(Root, c, string(g))); err == nil {
			return true
		}
	}
	return false
}

// Tasks lists the host thread ids in the group's pids controller.
func (g Group) Tasks() []int {
	var out []int
	for _, c := range Controllers {
		b, err := os.ReadFile(g.file(c, "tasks"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	return out
}

// hierarchies lists every cgroup hierarchy mounted under Root. runsc
// creates a sandbox's path in all of them (blkio, cpuset, devices, freezer,
// name=systemd…), not only in the controllers orkestr limits, so cleanup
// must look in all of them.
func hierarchies() []string {
	ents, err := os.ReadDir(Root)
	if err != nil {
		return Controllers
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

// Remove kills whatever is left in the group and removes it, children first,
// in every hierarchy. A group that does not exist is not an error.
func (g Group) Remove() error {
	var errs []error
	for _, c := range hierarchies() {
		dir := filepath.Join(Root, c, string(g))
		if err := removeTree(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func removeTree(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			if err := removeTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	var last error
	for i := 0; i < 50; i++ {
		if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		last = os.Remove(dir)
		if last == nil || errors.Is(last, fs.ErrNotExist) {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, last)
}

// Children lists the direct child groups of g that exist in any hierarchy.
func (g Group) Children() []Group {
	seen := map[string]bool{}
	var out []Group
	for _, c := range hierarchies() {
		ents, err := os.ReadDir(filepath.Join(Root, c, string(g)))
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.IsDir() && !seen[e.Name()] {
				seen[e.Name()] = true
				out = append(out, Group(filepath.Join(string(g), e.Name())))
			}
		}
	}
	return out
}

// writeIfPresent is write for a file older kernels do not have: there it
// does nothing.
func writeIfPresent(path, v string) error {
	if err := write(path, v); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// write writes v into the cgroup file at path. It never creates one: a
// file the kernel does not have is fs.ErrNotExist.
func write(path, v string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err == nil {
		_, err = f.WriteString(v)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("cgroup write %s=%s: %w", path, v, err)
	}
	return nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

func readKV(path string) (map[string]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err == nil {
			out[k] = n
		}
	}
	return out, sc.Err()
}

// MemoryThreshold returns an eventfd that the kernel signals whenever the
// group's memory usage crosses threshold bytes, upwards or downwards
// (cgroup.event_control). It is non-blocking, so a Read waits in Go's
// poller without holding a thread; closing it removes the event.
func (g Group) MemoryThreshold(threshold int64) (*os.File, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	usage, err := os.Open(g.file("memory", "memory.usage_in_bytes"))
	if err != nil {
		unix.Close(efd)
		return nil, err
	}
	defer usage.Close()
	if err := write(g.file("memory", "cgroup.event_control"), fmt.Sprintf("%d %d %d", efd, usage.Fd(), threshold)); err != nil {
		unix.Close(efd)
		return nil, err
	}
	return os.NewFile(uintptr(efd), "memory-threshold"), nil
}

// MemoryAnon reads the group's memory usage and the part of it that is
// anonymous or shared memory (gVisor's application memory and tmpfs): what
// the kernel cannot reclaim without swap, unlike the page cache of the
// sandbox's disk, which usage also counts.
func (g Group) MemoryAnon() (usage, anon uint64, err error) {
	if usage, err = readUint(g.file("memory", "memory.usage_in_bytes")); err != nil {
		return 0, 0, err
	}
	kv, err := readKV(g.file("memory", "memory.stat"))
	if err != nil {
		return usage, 0, err
	}
	return usage, kv["total_active_anon"] + kv["total_inactive_anon"], nil
}
