package bench

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

var (
	idleCount      = flag.Int("idle.sandboxes", 50, "BenchmarkIdleCPU: idle small sandboxes")
	idleWindow     = flag.Duration("idle.window", 20*time.Second, "BenchmarkIdleCPU: measured idle time per iteration")
	idleSettle     = flag.Duration("idle.settle", 25*time.Second, "BenchmarkIdleCPU: wait after the last sandbox started, before anything is measured (runsc hands its heaps back once a process has been quiet for 15 s)")
	idleMemReserve = flag.Int("idle.reserve-mib", 2048, "BenchmarkIdleCPU: stop starting sandboxes (and measure those running) once the host's MemAvailable falls below this")
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's utime and stime.
const clockTicks = 100

// BenchmarkIdleCPU starts -idle.sandboxes idle small sandboxes (debian-12,
// network off, one exec each, then nothing) and measures over -idle.window
// the host CPU they cost: each sandbox's cgroup (cpuacct.usage: gVisor's
// sentry, gofer and stub processes) and this process, which holds every
// sandbox's end of its agent channel as orkestrd does (orkestrd's metering
// sampler is not part of it). It reports host CPU ms per second per idle
// sandbox, the split by host process kind, and PSS per sandbox.
func BenchmarkIdleCPU(b *testing.B) {
	env := newDriver(b)
	ctx := timeout(b, 20*time.Minute)
	n := *idleCount
	// Latency on an empty host, then beside the idle fleet.
	latency := func() (createP50, execP50 time.Duration) {
		var cs, es durations
		for range 5 {
			start := time.Now()
			sb := create(b, env, testenv.Small)
			cs.add(time.Since(start))
			for range 10 {
				start := time.Now()
				execTrue(ctx, b, sb)
				es.add(time.Since(start))
			}
			destroy(b, sb)
		}
		return cs.median(), es.median()
	}
	emptyCreate, emptyExec := latency()
	sbs := make([]runtime.Sandbox, 0, n)
	availBefore := memAvailableMiB(b)
	for range n {
		if memAvailableMiB(b) < float64(*idleMemReserve) {
			b.Logf("MemAvailable under %d MiB after %d sandboxes: no more started", *idleMemReserve, len(sbs))
			break
		}
		sb := create(b, env, testenv.Small)
		execTrue(ctx, b, sb)
		sbs = append(sbs, sb)
	}
	n = len(sbs)
	// Let start-up work settle: what is measured is a sandbox that has
	// been idle for a while, not one that has just started.
	time.Sleep(*idleSettle)
	// What the host gave each one: MemAvailable's drop counts what PSS
	// does not (page tables, the kernel's socket and pipe buffers, the
	// memory file's pages the sandbox's processes have not touched).
	hostMem := (availBefore - memAvailableMiB(b)) / float64(n)
	fullCreate, fullExec := latency()
	b.Logf("create p50 %v empty, %v beside %d idle; exec true p50 %v empty, %v beside them", emptyCreate, fullCreate, n, emptyExec, fullExec)
	groups := make([]cgroupv1.Group, n)
	for i, sb := range sbs {
		groups[i] = cgroupv1.Group(filepath.Join(env.CgroupParent, sb.ID()))
	}
	var perSandbox, self, pss samples
	kinds := map[string]float64{}
	for b.Loop() {
		before := make([]uint64, n)
		procsBefore := map[int]procCPU{}
		for i, g := range groups {
			u, err := g.ReadUsage()
			if err != nil {
				b.Fatal(err)
			}
			before[i] = u.CPUNanos
			for _, p := range procsOf(g) {
				procsBefore[p.pid] = p
			}
		}
		selfBefore := selfCPU()
		time.Sleep(*idleWindow)
		selfUsed := selfCPU() - selfBefore
		var total time.Duration
		for i, g := range groups {
			u, err := g.ReadUsage()
			if err != nil {
				b.Fatal(err)
			}
			total += time.Duration(u.CPUNanos - before[i])
			for _, p := range procsOf(g) {
				if q, ok := procsBefore[p.pid]; ok {
					kinds[p.kind] += float64(p.ticks-q.ticks) * 1000 / clockTicks
				}
			}
		}
		secs := idleWindow.Seconds()
		perSandbox.add(float64(total.Microseconds()) / 1000 / secs / float64(n))
		self.add(float64(selfUsed.Microseconds()) / 1000 / secs / float64(n))
	}
	var p float64
	for _, sb := range sbs {
		m, err := sandboxMemory(env.CgroupParent, sb.ID())
		if err != nil {
			b.Fatal(err)
		}
		p += float64(m.PssKiB) / 1024
	}
	pss.add(p / float64(n))
	b.ReportMetric(perSandbox.median(), "sandbox-cpu-ms/s/sandbox")
	b.ReportMetric(self.median(), "host-side-cpu-ms/s/sandbox")
	b.ReportMetric(perSandbox.median()+self.median(), "total-cpu-ms/s/sandbox")
	b.ReportMetric(pss.median(), "pss-MiB/sandbox")
	b.ReportMetric(hostMem, "host-mem-MiB/sandbox")
	// Reported after the loop: b.Loop's start drops metrics reported before.
	b.ReportMetric(float64(fullCreate)/float64(emptyCreate), "create-ratio")
	b.ReportMetric(float64(fullExec)/float64(emptyExec), "exec-ratio")
	b.ReportMetric(float64(n), "sandboxes")
	var names []string
	for k := range kinds {
		names = append(names, k)
	}
	sort.Strings(names)
	var split []string
	iters := float64(len(perSandbox))
	for _, k := range names {
		split = append(split, fmt.Sprintf("%s %.3f", k, kinds[k]/iters/idleWindow.Seconds()/float64(n)))
	}
	b.Logf("%d idle sandboxes: host CPU ms/s per sandbox by process kind (tick resolution): %s", n, strings.Join(split, ", "))
}

type procCPU struct {
	pid   int
	kind  string
	ticks uint64 // utime + stime of every thread
}

// procsOf lists the host processes in g's cpuacct cgroup with their CPU.
func procsOf(g cgroupv1.Group) []procCPU {
	b, err := os.ReadFile(filepath.Join(cgroupv1.Root, "cpuacct", string(g), "cgroup.procs"))
	if err != nil {
		return nil
	}
	var out []procCPU
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		st, err := os.ReadFile("/proc/" + f + "/stat")
		if err != nil {
			continue
		}
		s := string(st)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(s[i+1:])
		if len(fields) < 13 {
			continue
		}
		ut, _ := strconv.ParseUint(fields[11], 10, 64)
		stime, _ := strconv.ParseUint(fields[12], 10, 64)
		out = append(out, procCPU{pid: pid, kind: procKind(f), ticks: ut + stime})
	}
	return out
}

// procKind names a sandbox's host process: runsc's sandbox (the sentry),
// its gofer, or a systrap stub (which shares the sentry's command line but
// is not its thread-group leader's parent... told apart by its threads).
func procKind(pid string) string {
	cmd, _ := os.ReadFile("/proc/" + pid + "/cmdline")
	args := strings.Split(string(cmd), "\x00")
	for _, a := range args {
		switch a {
		case "boot":
			return "sentry"
		case "gofer":
			return "gofer"
		}
	}
	return "stub"
}

// median is the middle duration (the mean of the middle two of an even count).
func (ds durations) median() time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append(durations(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// memAvailableMiB is the host's MemAvailable (/proc/meminfo) in MiB.
func memAvailableMiB(b *testing.B) float64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			kib, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			if err != nil {
				b.Fatal(err)
			}
			return kib / 1024
		}
	}
	b.Fatal("no MemAvailable in /proc/meminfo")
	return 0
}
