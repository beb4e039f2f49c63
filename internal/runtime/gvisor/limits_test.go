package gvisor_test

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
	"github.com/orkestr-eu/orkestr/internal/runtime/gvisor"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// hostAlive checks that the host can still start processes.
func hostAlive(t *testing.T) {
	t.Helper()
	if out, err := exec.Command("/bin/sh", "-c", "echo host ok").CombinedOutput(); err != nil || string(out) != "host ok\n" {
		t.Fatalf("host cannot run a process: %v %q", err, out)
	}
}

// bystander keeps running a command in sb until stop is closed and counts
// failures.
func bystander(t *testing.T, sb runtime.Sandbox, stop <-chan struct{}) (wait func() (runs, fails int, last error)) {
	var runs, fails atomic.Int64
	var mu sync.Mutex
	var lastErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			var out strings.Builder
			res, err := sb.Exec(ctx, runtime.ExecRequest{Command: "echo ok", Stdout: &out})
			cancel()
			runs.Add(1)
			if err != nil || res.ExitCode != 0 || out.String() != "ok\n" {
				fails.Add(1)
				mu.Lock()
				lastErr = errors.Join(err, errors.New("output "+out.String()))
				mu.Unlock()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	return func() (int, int, error) {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return int(runs.Load()), int(fails.Load()), lastErr
	}
}

// backgroundTicker starts a process in sb that outlives its exec and
// writes a counter every 100 ms; alive checks that it still counts.
func backgroundTicker(t *testing.T, sb runtime.Sandbox) (alive func() bool) {
	t.Helper()
	sh(t, sb, `nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /workspace/tick; sleep 0.1; done' >/dev/null 2>&1 &`)
	// The loop's `echo $i > tick` truncates the file before it writes: a
	// read in between would find it empty, and is made again rather than
	// taken for a stopped ticker (not seen: 0 empty reads in 300 beside
	// two busy loops).
	read := func() int {
		for range 10 {
			var out strings.Builder
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "cat /workspace/tick", Stdout: &out})
			cancel()
			if err != nil {
				t.Logf("reading the ticker's count: %v", err)
				return -1
			}
			if n, err := strconv.Atoi(strings.TrimSpace(out.String())); err == nil {
				return n
			}
			time.Sleep(10 * time.Millisecond)
		}
		return -1
	}
	return func() bool {
		a := read()
		time.Sleep(600 * time.Millisecond)
		b := read()
		if a <= 0 || b <= a {
			t.Logf("the ticker counted %d, then %d 0.6 s later", a, b)
			return false
		}
		return true
	}
}

// latencies records the neighbour's exec latencies.
type latencies struct {
	mu  sync.Mutex
	all []time.Duration
}

// neighbour keeps running `echo ok` in sb until stop is closed, recording
// each exec's latency and counting failures.
func neighbour(t *testing.T, sb runtime.Sandbox, stop <-chan struct{}) (wait func() (lat []time.Duration, fails int, last error)) {
	var lats latencies
	var fails atomic.Int64
	var mu sync.Mutex
	var lastErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			var out strings.Builder
			start := time.Now()
			res, err := sb.Exec(ctx, runtime.ExecRequest{Command: "echo ok", Stdout: &out})
			d := time.Since(start)
			cancel()
			lats.mu.Lock()
			lats.all = append(lats.all, d)
			lats.mu.Unlock()
			if err != nil || res.ExitCode != 0 || out.String() != "ok\n" {
				fails.Add(1)
				mu.Lock()
				lastErr = errors.Join(err, errors.New("output "+out.String()))
				mu.Unlock()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	return func() ([]time.Duration, int, error) {
		<-done
		mu.Lock()
		defer mu.Unlock()
		lats.mu.Lock()
		defer lats.mu.Unlock()
		sorted := slices.Clone(lats.all)
		slices.Sort(sorted)
		return sorted, int(fails.Load()), lastErr
	}
}

func checkNeighbour(t *testing.T, what string, lat []time.Duration, fails int, last error) {
	t.Helper()
	if len(lat) == 0 {
		t.Errorf("%s: the neighbour ran no command", what)
		return
	}
	t.Logf("%s: neighbour exec latency p50 %v, max %v over %d execs", what, lat[len(lat)/2], lat[len(lat)-1], len(lat))
	if fails > 0 {
		t.Errorf("%s: the neighbour failed %d of %d commands: %v", what, fails, len(lat), last)
	}
	// Generous: the point is that it answered throughout, on a shared host.
	if lat[len(lat)-1] > 5*time.Second {
		t.Errorf("%s: a neighbour exec took %v", what, lat[len(lat)-1])
	}
}

// limitedWriter keeps the first n bytes.
type limitedWriter struct {
	strings.Builder
	n int
}

func (w *limitedWriter) Write(b []byte) (int, error) {
	if room := w.n - w.Len(); room > 0 {
		w.Builder.Write(b[:min(len(b), room)])
	}
	return len(b), nil
}

// TestForkFlood: a command that starts more processes than the sandbox's
// task cap sees its forks fail inside the sandbox (the commands share a
// pids cgroup of the sandbox kernel capped at the size's tasks), the host's
// larger limit is not reached, and the sandbox, a background process in it
// and a neighbour sandbox live on.
func TestForkFlood(t *testing.T) {
	env := testenv.NewDriver(t)
	other := newSandbox(t, env)
	sb := newSandbox(t, env)
	ctx := testCtx(t, 2*time.Minute)
	// A long-running process that needs no fork (one that forks would see
	// its forks fail while the flood holds the cap, as it should).
	survivor := strings.TrimSpace(sh(t, sb, "nohup tail -f /dev/null >/dev/null 2>&1 & echo $!"))
	st, err := sb.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.PIDsLimit != uint64(testenv.Small.PIDs) {
		t.Fatalf("pids limit %d, want %d", st.PIDsLimit, testenv.Small.PIDs)
	}
	hostLimit := uint64(gvisor.HostTasks(testenv.Small.PIDs))

	stop := make(chan struct{})
	waitOther := neighbour(t, other, stop)
	// dash gives up its script at the first failed fork (exit 2).
	res := run(t, sb, runtime.ExecRequest{Command: `i=0; while [ $i -lt 800 ]; do sleep 120 & i=$((i+1)); done`, Timeout: time.Minute})
	after, _ := sb.Stats(ctx)
	close(stop)
	lat, fails, lastErr := waitOther()
	// Counted with shell builtins only: the sandbox is at its cap.
	count := run(t, sb, runtime.ExecRequest{Command: `n=0; for d in /proc/[0-9]*; do read c < $d/comm 2>/dev/null && [ "$c" = sleep ] && n=$((n+1)); done; echo $n`})
	started, _ := strconv.Atoi(strings.TrimSpace(count.Stdout))
	t.Logf("fork flood: %d of 800 started (cap %d), host tasks %d (host limit %d), exit %d, stderr %q", started, testenv.Small.PIDs, after.PIDs, hostLimit, res.ExitCode, firstLine(res.Stderr))
	checkNeighbour(t, "fork flood", lat, fails, lastErr)
	hostAlive(t)
	if sb.Err() != nil {
		t.Fatalf("the fork flood ended the sandbox: %v", sb.Err())
	}
	if started >= 800 || started < int(testenv.Small.PIDs)/2 {
		t.Errorf("%d of 800 background processes started under a cap of %d tasks", started, testenv.Small.PIDs)
	}
	if after.PIDs >= hostLimit {
		t.Errorf("host tasks %d reached the host limit %d", after.PIDs, hostLimit)
	}
	if r := run(t, sb, runtime.ExecRequest{Command: "kill -0 " + survivor}); r.ExitCode != 0 {
		t.Errorf("the background process %s did not survive the flood: %q", survivor, r.Stderr)
	}
	// With shell builtins only: at the cap, pkill could not be started.
	sh(t, sb, `for d in /proc/[0-9]*; do read c < $d/comm 2>/dev/null && [ "$c" = sleep ] && kill ${d#/proc/}; done; :`)
	if !eventually(10*time.Second, func() bool {
		out := run(t, sb, runtime.ExecRequest{Command: "for i in 1 2 3; do (echo $i) ; done | wc -l"})
		return out.ExitCode == 0 && strings.TrimSpace(out.Stdout) == "3"
	}) {
		t.Fatal("forks do not work again after the flood")
	}
}

// TestForkBomb: the classic bomb, `:(){ :|:& };:` in bash, in a small
// sandbox. Its forks must fail inside the sandbox (bash reports "fork:
// retry: Resource temporarily unavailable"), the exec must end at its
// timeout with everything it started killed, and the sandbox must live on:
// a background process in it survives, the next exec answers, forks work
// again, the host's task limit is never reached, and a neighbour sandbox
// keeps answering throughout.
//
// What makes this hold is each command's RLIMIT_NPROC (the agent's
// limitTasks): gVisor checks the pids cgroup's limit on only some forks,
// and before that limit a bomb outgrew the cap until the host's task or
// memory limit ended the sandbox after 15-25 s (docs/benchmarks.md).
func TestForkBomb(t *testing.T) {
	// As root the agent sets the command's limit; as another user the
	// command's shell does.
	for _, user := range []string{"root", "user"} {
		t.Run(user, func(t *testing.T) { testForkBomb(t, user, classicBomb) })
	}
}

const classicBomb = `bash -c ':(){ :|:& };:'; sleep 100`

// TestForkBombManyUsers: twelve bombs at once, each as a user id of its
// own (root may change its uid), so the per-user RLIMIT_NPROC gives each
// its own cap: what holds them together is the sandbox kernel's cgroup v2
// pids.max over all commands (runsc --in-sandbox-cgroup=v2), checked on
// every task they create. Before it, this ended the sandbox at the host's
// memory limit after ≈ 21 s (docs/benchmarks.md).
func TestForkBombManyUsers(t *testing.T) {
	testForkBomb(t, "root", `for u in $(seq 2001 2012); do setpriv --reuid=$u --regid=$u --clear-groups bash -c ':(){ :|:& };:' & done; sleep 100`)
}

func testForkBomb(t *testing.T, user, bomb string) {
	env := testenv.NewDriver(t)
	other := newSandbox(t, env)
	sb := newSandbox(t, env)
	ctx := testCtx(t, 3*time.Minute)
	hostLimit := uint64(gvisor.HostTasks(testenv.Small.PIDs))
	// A long-running process that needs no fork (one that forks would see
	// its forks fail while the bomb holds the cap, as it should).
	survivor := strings.TrimSpace(sh(t, sb, "nohup tail -f /dev/null >/dev/null 2>&1 & echo $!"))

	stop := make(chan struct{})
	var peak atomic.Uint64
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if st, err := sb.Stats(context.Background()); err == nil && st.PIDs > peak.Load() {
				peak.Store(st.PIDs)
			}
		}
	}()
	waitOther := neighbour(t, other, stop)
	stderr := &limitedWriter{n: 1 << 16}
	start := time.Now()
	res, err := sb.Exec(ctx, runtime.ExecRequest{
		User:    user,
		Command: bomb,
		Timeout: 8 * time.Second, Stdout: io.Discard, Stderr: stderr,
	})
	elapsed := time.Since(start)
	time.Sleep(300 * time.Millisecond) // let the neighbour run after the bomb too
	close(stop)
	sampler.Wait()
	lat, fails, lastErr := waitOther()
	t.Logf("fork bomb: result %+v, err %v, after %v; peak host tasks %d (host limit %d); stderr starts %q",
		res, err, elapsed, peak.Load(), hostLimit, firstLine(stderr.String()))
	checkNeighbour(t, "fork bomb", lat, fails, lastErr)
	hostAlive(t)
	if err != nil {
		t.Fatalf("the bomb's exec failed (%v); sandbox: %v", err, sb.Err())
	}
	if sb.Err() != nil || sb.Info().State != runtime.StateRunning {
		t.Fatalf("the fork bomb ended the sandbox: %v (state %s)", sb.Err(), sb.Info().State)
	}
	if !res.TimedOut || res.ExitCode != 137 {
		t.Errorf("the bomb ended without its timeout: %+v", res)
	}
	if !strings.Contains(stderr.String(), "fork") || !strings.Contains(stderr.String(), "Resource temporarily unavailable") {
		t.Errorf("no fork failed inside the sandbox; stderr starts %q", firstLine(stderr.String()))
	}
	if p := peak.Load(); p >= hostLimit {
		t.Errorf("host tasks peaked at %d, at the host limit %d", p, hostLimit)
	}
	if out := sh(t, sb, "echo alive"); out != "alive\n" {
		t.Fatalf("after the bomb: %q", out)
	}
	if r := run(t, sb, runtime.ExecRequest{Command: "kill -0 " + survivor}); r.ExitCode != 0 {
		t.Errorf("the background process %s did not survive the bomb: %q", survivor, r.Stderr)
	}
	// The bomb's processes are gone (killed with its exec) and forks work
	// again once their zombies are reaped.
	if !eventually(20*time.Second, func() bool {
		out := run(t, sb, runtime.ExecRequest{Command: "for i in 1 2 3; do (echo $i) ; done | wc -l"})
		return out.ExitCode == 0 && strings.TrimSpace(out.Stdout) == "3"
	}) {
		t.Fatal("forks do not work again after the bomb")
	}
	if n := len(procsNamed(listProcs(t, sb), "bash")); n != 0 {
		t.Errorf("%d bash processes of the bomb are left", n)
	}
	if out := sh(t, other, "echo still"); out != "still\n" {
		t.Fatalf("other sandbox after the bomb: %q", out)
	}
}

// TestTaskLimitEveryUser: every command, as root or as another user, has
// the task cap as its RLIMIT_NPROC, soft and hard, cannot raise it, and
// holds no CAP_SYS_RESOURCE (which would exempt it).
func TestTaskLimitEveryUser(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)
	const sysResource = 1 << 24 // CAP_SYS_RESOURCE
	capsOf := func(out, field string) uint64 {
		for _, line := range strings.Split(out, "\n") {
			if rest, ok := strings.CutPrefix(line, field+":"); ok {
				v, err := strconv.ParseUint(strings.TrimSpace(rest), 16, 64)
				if err != nil {
					t.Fatalf("unparsable %s line %q", field, line)
				}
				return v
			}
		}
		t.Fatalf("no %s in %q", field, out)
		return 0
	}
	want := strconv.FormatInt(testenv.Small.PIDs, 10)
	for _, user := range []string{"root", "user"} {
		out := run(t, sb, runtime.ExecRequest{User: user, Command: `bash -c 'echo $(ulimit -Su) $(ulimit -Hu)'; grep -E '^Cap(Eff|Prm|Bnd):' /proc/self/status`})
		if out.ExitCode != 0 {
			t.Fatalf("as %s: exit %d, %q", user, out.ExitCode, out.Stderr)
		}
		if first := firstLine(out.Stdout); first != want+" "+want {
			t.Errorf("as %s: RLIMIT_NPROC soft and hard %q, want %s", user, first, want)
		}
		for _, f := range []string{"CapEff", "CapPrm", "CapBnd"} {
			if capsOf(out.Stdout, f)&sysResource != 0 {
				t.Errorf("as %s: the command holds CAP_SYS_RESOURCE in %s", user, f)
			}
		}
		// Raising it back fails.
		if r := run(t, sb, runtime.ExecRequest{User: user, Command: `bash -c 'ulimit -Hu unlimited'`}); r.ExitCode == 0 {
			t.Errorf("as %s: a command raised its hard task limit", user)
		}
	}
}

// TestOutOfMemory: a process that allocates past the sandbox's memory is
// killed (exit 137, OOMKilled), not the sandbox; a background process and
// a neighbour sandbox live on; filling /tmp (memory) stops at its size.
func TestOutOfMemory(t *testing.T) {
	env := testenv.NewDriver(t)
	other := newSandbox(t, env)
	// Two vCPUs only to fill memory faster; the memory limit is the small one.
	res := runtime.Resources{CPU: 2, MemoryBytes: testenv.Small.MemoryBytes, PIDs: testenv.Small.PIDs}
	sb := newSandboxRes(t, env, res)
	ticking := backgroundTicker(t, sb)

	for i, tc := range []struct{ name, cmd string }{
		// tail keeps the whole 700 MiB "line" in memory.
		{"pipeline", "head -c 700M /dev/zero | tail -n 1 > /dev/null"},
		{"again", "head -c 900M /dev/zero | tail -n 1 > /dev/null"},
	} {
		stop := make(chan struct{})
		waitOther := neighbour(t, other, stop)
		ctx := testCtx(t, time.Minute)
		var out strings.Builder
		start := time.Now()
		r, err := sb.Exec(ctx, runtime.ExecRequest{Command: tc.cmd, Stdout: &out, Stderr: &out})
		close(stop)
		lat, fails, lastErr := waitOther()
		t.Logf("%s: %+v %v after %v, output %q", tc.name, r, err, time.Since(start), out.String())
		checkNeighbour(t, tc.name, lat, fails, lastErr)
		hostAlive(t)
		if err != nil {
			t.Fatalf("%s: the memory bomb ended the sandbox: %v", tc.name, err)
		}
		if r.ExitCode != 137 || !r.OOMKilled {
			t.Fatalf("%s: exit %d, oom_killed %v; want 137 and true", tc.name, r.ExitCode, r.OOMKilled)
		}
		st, err := sb.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.ProcessOOMKills < uint64(i+1) || st.OOMKills != 0 {
			t.Errorf("%s: stats %+v: want %d process OOM kills and no host OOM kill", tc.name, st, i+1)
		}
	}
	if sb.Err() != nil {
		t.Fatalf("sandbox stopped: %v", sb.Err())
	}
	if !ticking() {
		t.Errorf("the background process did not survive the memory bombs")
	}
	// The memory is given back: a command that needs 300 MiB runs now.
	if out := sh(t, sb, "head -c 300M /dev/zero | tail -n 1 | wc -c"); strings.TrimSpace(out) != "314572800" {
		t.Errorf("300 MiB after the bombs: %q", out)
	}
	// /tmp is memory, capped at half of it: filling it fails inside.
	r := run(t, sb, runtime.ExecRequest{Command: "head -c 700M /dev/zero > /tmp/fill"})
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "No space left on device") || sb.Err() != nil {
		t.Errorf("filling /tmp: exit %d, stderr %q, sandbox %v", r.ExitCode, r.Stderr, sb.Err())
	}
	if env.Driver.OOMKills() < 2 {
		t.Errorf("driver counted %d OOM kills", env.Driver.OOMKills())
	}
	if out := sh(t, other, "echo fine"); out != "fine\n" {
		t.Fatalf("other sandbox: %q", out)
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func TestStats(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)
	ctx := testCtx(t, time.Minute)

	st, err := sb.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.CPUQuotaMicros != 50000 || st.CPUPeriodMicros != 100000 {
		t.Errorf("cpu quota %d/%d, want 50000/100000 for 0.5 vCPU", st.CPUQuotaMicros, st.CPUPeriodMicros)
	}
	if st.MemoryLimitBytes != 512<<20 || st.PIDsLimit != 512 {
		t.Errorf("limits: memory %d, pids %d", st.MemoryLimitBytes, st.PIDsLimit)
	}
	if st.PIDs == 0 || st.PIDs > 200 || st.CPUNanos == 0 || st.MemoryBytes == 0 || time.Since(st.ReadAt) > time.Second {
		t.Errorf("idle usage: %+v", st)
	}

	// CPU: a 2 s busy loop at a 50 % quota gets about 1 s of CPU.
	before, _ := sb.Stats(ctx)
	sh(t, sb, "timeout 2 sh -c 'while :; do :; done'; :")
	after, _ := sb.Stats(ctx)
	cpu := time.Duration(after.CPUNanos - before.CPUNanos)
	t.Logf("2 s busy loop at 0.5 vCPU used %v of CPU", cpu)
	// The floor is low because other work may share the host's two cores;
	// the ceiling is what a 50 % quota allows (a whole core would give 2 s).
	if cpu < 250*time.Millisecond || cpu > 1600*time.Millisecond {
		t.Errorf("busy loop used %v of CPU; want about 1 s (quota 50%% of 2 s)", cpu)
	}

	// Memory: 200 MiB in tmpfs is sandbox memory.
	before, _ = sb.Stats(ctx)
	sh(t, sb, "head -c 200M /dev/zero > /tmp/blob")
	after, _ = sb.Stats(ctx)
	grew := int64(after.MemoryBytes) - int64(before.MemoryBytes)
	t.Logf("working set %d MiB -> %d MiB", before.MemoryBytes>>20, after.MemoryBytes>>20)
	if grew < 150<<20 || after.MemoryBytes > after.MemoryLimitBytes {
		t.Errorf("working set grew by %d MiB after 200 MiB in tmpfs", grew>>20)
	}

	// New limits apply at once and are reported.
	bigger := runtime.Resources{CPU: 1.5, MemoryBytes: 768 << 20, PIDs: 1024}
	if err := sb.SetResources(bigger); err != nil {
		t.Fatal(err)
	}
	st, err = sb.Stats(ctx)
	if err != nil || st.CPUQuotaMicros != 150000 || st.MemoryLimitBytes != 768<<20 || st.PIDsLimit != 1024 {
		t.Fatalf("after SetResources: %+v %v", st, err)
	}
	if sb.Info().Resources != bigger {
		t.Fatalf("info after SetResources: %+v", sb.Info().Resources)
	}
	// And through a claim.
	if err := sb.Configure(ctx, runtime.Claim{Resources: testenv.Small}); err != nil {
		t.Fatal(err)
	}
	if st, err := sb.Stats(ctx); err != nil || st.CPUQuotaMicros != 50000 || st.MemoryLimitBytes != 512<<20 || st.PIDsLimit != 512 {
		t.Fatalf("after Configure: %+v %v", st, err)
	}
}

// TestPooledSandboxWaitsIdle: a warm pool's sandbox waits SCHED_IDLE
// (cpu.idle 1) until its claim, which gives it the full weight back, also
// after a start slow enough to have been moved to the low weight on the
// way (forced here with a zero idle boot).
func TestPooledSandboxWaitsIdle(t *testing.T) {
	env := testenv.NewDriver(t)
	ctx := testCtx(t, 2*time.Minute)
	cpuFile := func(sb runtime.Sandbox, name string) string {
		b, err := os.ReadFile(filepath.Join(cgroupv1.Root, "cpu", env.CgroupParent, sb.ID(), name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	for _, slow := range []bool{false, true} {
		if slow {
			old := gvisor.SetPooledIdleBootForTest(time.Nanosecond)
			t.Cleanup(func() { gvisor.SetPooledIdleBootForTest(old) })
		}
		sb, err := env.Driver.Create(ctx, runtime.Spec{Template: "debian-12", Rootfs: testenv.Rootfs(t, "debian-12"),
			Resources: testenv.Small, Labels: map[string]string{"pool": "debian-12/small"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sb.Destroy(context.Background()) })
		if got := cpuFile(sb, "cpu.idle"); got != "1" {
			t.Errorf("slow=%v: a pooled sandbox's cpu.idle is %s, want 1", slow, got)
		}
		if got, want := cpuFile(sb, "cpu.cfs_quota_us"), strconv.FormatInt(cgroupv1.QuotaMicros(testenv.Small.CPU), 10); got != want {
			t.Errorf("slow=%v: cpu quota %s, want %s", slow, got, want)
		}
		if err := sb.Configure(ctx, runtime.Claim{Resources: testenv.Small}); err != nil {
			t.Fatal(err)
		}
		if idle, shares := cpuFile(sb, "cpu.idle"), cpuFile(sb, "cpu.shares"); idle != "0" || shares != "1024" {
			t.Errorf("slow=%v: claimed sandbox cpu.idle %s, cpu.shares %s; want 0, 1024", slow, idle, shares)
		}
		// The quota comes with a burst of one period's quota, where the
		// kernel has cfs_burst_us.
		if _, err := os.Stat(filepath.Join(cgroupv1.Root, "cpu", "cpu.cfs_burst_us")); err == nil {
			if got, want := cpuFile(sb, "cpu.cfs_burst_us"), strconv.FormatInt(cgroupv1.QuotaMicros(testenv.Small.CPU), 10); got != want {
				t.Errorf("slow=%v: claimed sandbox cpu.cfs_burst_us %s, want its quota %s", slow, got, want)
			}
		}
		if out := sh(t, sb, "echo ok"); out != "ok\n" {
			t.Fatalf("claimed sandbox: %q", out)
		}
	}
}
