package metering

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// cgroupSource reads a cgroup the way the gVisor driver's Stats does
// (cgroupv1.Group.Read), without a sandbox around it: the tests and the
// benchmark put ordinary processes in real cgroups.
type cgroupSource struct{ g cgroupv1.Group }

func (c cgroupSource) Stats(context.Context) (runtime.Stats, error) {
	st, err := c.g.Read()
	if err != nil {
		return runtime.Stats{}, err
	}
	return runtime.Stats{CPUNanos: st.CPUNanos, MemoryBytes: st.MemoryWorkingSet, MemoryLimitBytes: st.MemoryLimit,
		MemoryFailures: st.MemoryFailcnt, OOMKills: st.OOMKills, PIDs: st.PIDs, PIDsLimit: st.PIDsLimit,
		CPUQuotaMicros: st.CPUQuotaMicros, CPUPeriodMicros: st.CPUPeriodMicros, ReadAt: st.ReadAt}, nil
}

// cgroups makes n cgroups (0.5 vCPU, 512 MiB, 64 pids) under a private
// parent, each holding one process running script; all of it is killed
// and removed when the test ends.
func cgroups(t testing.TB, n int, script string) []cgroupv1.Group {
	t.Helper()
	testenv.RequireRoot(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	parent := cgroupv1.Group("/orkestr-meter-test-" + hex.EncodeToString(b))
	var procs []*exec.Cmd
	t.Cleanup(func() {
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
		if err := parent.Remove(); err != nil {
			t.Errorf("removing the test cgroups: %v", err)
		}
	})
	groups := make([]cgroupv1.Group, n)
	for i := range groups {
		g := cgroupv1.Group(filepath.Join(string(parent), strconv.Itoa(i)))
		for _, c := range cgroupv1.Controllers {
			if err := os.MkdirAll(filepath.Join(cgroupv1.Root, c, string(g)), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := g.Apply(cgroupv1.Limits{CPU: 0.5, MemoryBytes: 512 << 20, PIDs: 64}); err != nil {
			t.Fatal(err)
		}
		// The process waits on its stdin until it is in the group, so
		// all it does is charged there.
		cmd := exec.Command("/bin/sh", "-c", "read x; "+script)
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, cmd)
		for _, c := range cgroupv1.Controllers {
			if err := os.WriteFile(filepath.Join(cgroupv1.Root, c, string(g), "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		_, _ = in.Write([]byte("go\n"))
		groups[i] = g
	}
	return groups
}

// usageSource is cgroupSource with the cheaper read the gVisor driver's
// sandboxes offer (runtime.UsageReader), the path production takes.
type usageSource struct{ cgroupSource }

func (c usageSource) Usage(context.Context) (runtime.Usage, error) {
	u, err := c.g.ReadUsage()
	return runtime.Usage{CPUNanos: u.CPUNanos, MemoryBytes: u.MemoryWorkingSet, MemoryLimitBytes: u.MemoryLimit}, err
}

// meterSource reads as the gVisor driver's Usage does now
// (cgroupv1.ReadMeterUsage: memory.stat only now and then).
type meterSource struct {
	cgroupSource
	cache *cgroupv1.MeterCache
}

func (c meterSource) Usage(context.Context) (runtime.Usage, error) {
	u, err := c.g.ReadMeterUsage(c.cache)
	return runtime.Usage{CPUNanos: u.CPUNanos, MemoryBytes: u.MemoryWorkingSet}, err
}

// meterStore is a SQLite store with one account and n sandboxes in it.
func meterStore(t testing.TB, n int) (*sqlstore.Store, string, []string) {
	t.Helper()
	st, err := sqlstore.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "orkestr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	acct := store.Account{ID: "acc_" + ulid.Make().String(), Name: "meter", Plan: "team"}
	if err := st.CreateAccount(context.Background(), acct); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "sbx_" + ulid.Make().String()
		now := time.Now()
		if err := st.CreateSandbox(context.Background(), store.Sandbox{ID: ids[i], AccountID: acct.ID, Status: store.StatusRunning,
			Template: "t", Size: "small", CPU: 0.5, MemoryMB: 512, CreatedAt: now, UpdatedAt: now}, 0); err != nil {
			t.Fatal(err)
		}
	}
	return st, acct.ID, ids
}

type jumpClock struct{ off time.Duration }

func (c jumpClock) Now() time.Time { return time.Now().Add(c.off) }

// TestSamplerAccruesAcrossTheMonth meters a busy loop in a real 0.5-vCPU
// cgroup while the clock crosses midnight of the 1st: every second lands
// in the hour (and month) it ran in, in whole MB·s, CPU ms and seconds.
func TestSamplerAccruesAcrossTheMonth(t *testing.T) {
	g := cgroups(t, 1, "while :; do :; done")[0]
	st, acct, ids := meterStore(t, 1)
	midnight := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	clock := jumpClock{off: time.Until(midnight.Add(-1500 * time.Millisecond))}
	s := New(Config{Interval: time.Second, Sink: st, Clock: clock})
	start := time.Now()
	s.Track(ids[0], acct, usageSource{cgroupSource{g}}, 0.5, 512)
	for range 4 {
		time.Sleep(time.Second)
		s.SampleAll()
	}
	samples, latest, running := s.Window(ids[0], time.Time{})
	s.Untrack(ids[0])
	elapsed := time.Since(start)
	if !running || len(samples) != 4 || latest == nil || latest.MemLimit != 512<<20 {
		t.Fatalf("window: running %v, %d samples, latest %+v", running, len(samples), latest)
	}
	if _, _, running := s.Window(ids[0], time.Time{}); running {
		t.Fatal("an untracked sandbox still has a window")
	}
	ctx := context.Background()
	nov, err := st.AccountUsage(ctx, acct, midnight.AddDate(0, -1, 0), midnight)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := st.AccountUsage(ctx, acct, midnight, midnight.AddDate(0, 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	total := nov.Add(dec)
	t.Logf("ran %v: November %+v, December %+v", elapsed, nov, dec)
	if nov.RunningSeconds < 1 || dec.RunningSeconds < 2 {
		t.Fatalf("the seconds before and after midnight are not split at it: November %+v, December %+v", nov, dec)
	}
	if total.RunningSeconds != int64(elapsed/time.Second) && total.RunningSeconds != int64(elapsed/time.Second)-1 {
		t.Fatalf("%d running seconds metered over %v", total.RunningSeconds, elapsed)
	}
	if total.MemMBSeconds != 512*total.RunningSeconds {
		t.Fatalf("mem_mb_seconds %d for %d s of a 512 MB sandbox", total.MemMBSeconds, total.RunningSeconds)
	}
	// The quota caps the loop at 0.5 cores, plus the burst of one
	// period's quota (50 ms) saved before it and the lumpiness of CFS
	// periods (50 ms); contention may give it less.
	if ms := float64(total.CPUMS); ms > 0.5*float64(elapsed.Milliseconds())+100 || ms < 0.2*float64(elapsed.Milliseconds()) {
		t.Fatalf("%d CPU ms over %v for a busy loop at 0.5 vCPU", total.CPUMS, elapsed)
	}
	for _, sm := range samples {
		if sm.CPUPercent < 20 || sm.CPUPercent > 125 {
			t.Errorf("sample %+v: a busy loop at 0.5 vCPU should read ≈100 %%", sm)
		}
	}
	life, err := s.Lifetime(ctx, acct, ids[0])
	if err != nil || life != total {
		t.Fatalf("lifetime %+v (%v), buckets %+v", life, err, total)
	}
}

// failingSink is the store with a switch that makes writes fail, standing
// in for a database that is down.
type failingSink struct {
	Sink
	fail atomic.Bool
}

func (f *failingSink) AddUsage(ctx context.Context, d []store.UsageDelta) error {
	if f.fail.Load() {
		return errors.New("database is down")
	}
	return f.Sink.AddUsage(ctx, d)
}

// TestSamplerKeepsUsageWhenAFlushFails: a failed flush keeps everything for
// the next one, lifetimes include it meanwhile, and nothing is counted
// twice.
func TestSamplerKeepsUsageWhenAFlushFails(t *testing.T) {
	gs := cgroups(t, 2, "exec sleep 3600")
	st, acct, ids := meterStore(t, 2)
	sink := &failingSink{Sink: st}
	s := New(Config{Interval: time.Second, Sink: sink})
	for i, g := range gs {
		s.Track(ids[i], acct, cgroupSource{g}, 0.5, 512)
	}
	sink.fail.Store(true)
	time.Sleep(2100 * time.Millisecond)
	s.SampleAll()
	if err := s.Flush(context.Background()); err == nil {
		t.Fatal("the flush did not fail")
	}
	s.Untrack(ids[0]) // its flush fails too; the usage stays pending
	ctx := context.Background()
	want, err := s.Lifetime(ctx, acct, ids[0])
	if err != nil || want.RunningSeconds < 2 {
		t.Fatalf("lifetime with the store down: %+v %v", want, err)
	}
	if u, _ := st.SandboxUsage(ctx, acct, ids[0]); !u.IsZero() {
		t.Fatalf("the store has usage although every flush failed: %+v", u)
	}
	sink.fail.Store(false)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil { // nothing left: nothing added twice
		t.Fatal(err)
	}
	got, _ := st.SandboxUsage(ctx, acct, ids[0])
	if life, _ := s.Lifetime(ctx, acct, ids[0]); got != want || life != want {
		t.Fatalf("after the store came back: stored %+v, lifetime %+v, want %+v", got, life, want)
	}
	// Untrack flushes the sandbox it stops metering, at once.
	s.SampleAll()
	s.Untrack(ids[1])
	if u, _ := st.SandboxUsage(ctx, acct, ids[1]); u.RunningSeconds < 2 || u.MemMBSeconds != 512*u.RunningSeconds {
		t.Fatalf("the second sandbox after Untrack: %+v", u)
	}
}

// TestSamplerRunStopsWithAFinalFlush: Run's last act is a reading of every
// sandbox and a flush, so a clean stop loses nothing.
func TestSamplerRunStopsWithAFinalFlush(t *testing.T) {
	g := cgroups(t, 1, "exec sleep 3600")[0]
	st, acct, ids := meterStore(t, 1)
	s := New(Config{Interval: time.Second, FlushEvery: time.Hour, Sink: st})
	s.Track(ids[0], acct, cgroupSource{g}, 0.5, 512)
	ctx, cancel := context.WithCancel(context.Background())
	go s.Run(ctx)
	time.Sleep(2500 * time.Millisecond)
	cancel()
	s.Wait()
	u, _ := st.SandboxUsage(context.Background(), acct, ids[0])
	if u.RunningSeconds < 2 || u.RunningSeconds > 3 {
		t.Fatalf("after 2.5 s and a clean stop the store holds %+v", u)
	}
}

var benchWindow = flag.Duration("meter.window", 10*time.Second, "wall time BenchmarkSampler500 runs the sampler for")

// BenchmarkSampler500 runs the sampler (1 s interval, 3 s flushes to
// SQLite) over 500 real cgroups, each holding a sleeping process, and
// reports the CPU it costs per second of wall time: reading through
// runtime.UsageReader with ReadUsage (usage: 4 cgroup files) and with
// ReadMeterUsage (meter: 2, memory.stat every 10 s; what gVisor sandboxes
// do now), and through Stats (all 11). Run with -benchtime=1x.
func BenchmarkSampler500(b *testing.B) {
	const n = 500
	gs := cgroups(b, n, "exec sleep 3600")
	for _, bc := range []struct {
		name string
		src  func(cgroupv1.Group) Source
	}{
		{"usage", func(g cgroupv1.Group) Source { return usageSource{cgroupSource{g}} }},
		{"meter", func(g cgroupv1.Group) Source { return meterSource{cgroupSource{g}, &cgroupv1.MeterCache{}} }},
		{"stats", func(g cgroupv1.Group) Source { return cgroupSource{g} }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for range b.N {
				benchSampler(b, gs, bc.src)
			}
		})
	}
}

func benchSampler(b *testing.B, gs []cgroupv1.Group, src func(cgroupv1.Group) Source) {
	st, acct, ids := meterStore(b, len(gs))
	var mu sync.Mutex
	var lags []time.Duration
	var flushes, rows int
	var flushTook time.Duration
	s := New(Config{Interval: time.Second, FlushEvery: 3 * time.Second, Sink: st,
		OnRound: func(lag time.Duration, _ int) { mu.Lock(); lags = append(lags, lag); mu.Unlock() },
		OnFlush: func(took time.Duration, r int, err error) {
			mu.Lock()
			flushes, rows, flushTook = flushes+1, rows+r, flushTook+took
			mu.Unlock()
		}})
	for i, g := range gs {
		s.Track(ids[i], acct, src(g), 0.5, 512)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *benchWindow)
	defer cancel()
	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	start := time.Now()
	s.Run(ctx)
	wall := time.Since(start)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(syscall.TimevalToNsec(ru1.Utime)-syscall.TimevalToNsec(ru0.Utime)) +
		time.Duration(syscall.TimevalToNsec(ru1.Stime)-syscall.TimevalToNsec(ru0.Stime))
	b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cpu-s/wall-s")
	mu.Lock()
	defer mu.Unlock()
	var worst, sum time.Duration
	for _, l := range lags {
		sum += l
		worst = max(worst, l)
	}
	if len(lags) > 0 {
		b.ReportMetric(float64(sum.Milliseconds())/float64(len(lags)), "mean-lag-ms")
		b.ReportMetric(float64(worst.Milliseconds()), "max-lag-ms")
	}
	if flushes > 0 {
		b.ReportMetric(float64(flushTook.Milliseconds())/float64(flushes), "ms/flush")
		b.ReportMetric(float64(rows)/float64(flushes), "rows/flush")
	}
	b.Logf("%d sandboxes, %v wall: %v CPU (%.3f cores), %d rounds, %d flushes", len(gs), wall.Round(time.Millisecond), cpu, cpu.Seconds()/wall.Seconds(), len(lags), flushes)
	u, err := st.AccountUsage(context.Background(), acct, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil || u.RunningSeconds < int64(len(gs))*int64(benchWindow.Seconds()-2) {
		b.Fatalf("%d sandboxes for %v metered %+v (%v)", len(gs), *benchWindow, u, err)
	}
}

// TestReadUsageMatchesRead: the cheap reading the sampler uses agrees with
// the full one on a cgroup holding ~30 MB.
func TestReadUsageMatchesRead(t *testing.T) {
	g := cgroups(t, 1, `x=$(head -c 30000000 /dev/zero | tr '\0' a); while :; do sleep 1; done`)[0]
	var full cgroupv1.Stats
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		if full, err = g.Read(); err != nil {
			t.Fatal(err)
		}
		if full.MemoryWorkingSet > 30e6 && full.PIDs == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	full, _ = g.Read()
	u, err := g.ReadUsage()
	if err != nil {
		t.Fatal(err)
	}
	diff := int64(u.MemoryWorkingSet) - int64(full.MemoryWorkingSet)
	if full.MemoryWorkingSet < 30e6 || diff > 1<<20 || diff < -(1<<20) || u.MemoryLimit != full.MemoryLimit || u.MemoryLimit != 512<<20 ||
		u.CPUNanos < full.CPUNanos || u.CPUNanos > full.CPUNanos+uint64(time.Second) {
		t.Fatalf("ReadUsage %+v, Read %+v", u, full)
	}
}

// TestSamplerSkipsShortSamples: a reading right after another accrues
// (metering loses nothing) but adds no sample over a sliver of time.
func TestSamplerSkipsShortSamples(t *testing.T) {
	g := cgroups(t, 1, "while :; do :; done")[0]
	st, acct, ids := meterStore(t, 1)
	s := New(Config{Interval: time.Second, Sink: st})
	s.Track(ids[0], acct, usageSource{cgroupSource{g}}, 0.5, 512)
	time.Sleep(1100 * time.Millisecond)
	s.SampleAll()
	s.SampleAll()
	s.SampleAll()
	samples, _, _ := s.Window(ids[0], time.Time{})
	life, err := s.Lifetime(context.Background(), acct, ids[0])
	if err != nil || len(samples) != 1 || life.RunningSeconds != 1 || life.CPUMS < 100 {
		t.Fatalf("%d samples %+v, lifetime %+v %v", len(samples), samples, life, err)
	}
	s.Untrack(ids[0])
}

// TestMeterUsageFollowsUsage: the cheap metering read (memory.stat only
// now and then) gives the CPU and working set of the full read, also
// right after the working set grew by 64 MiB.
func TestMeterUsageFollowsUsage(t *testing.T) {
	dir := t.TempDir()
	// Grows its anonymous memory by 64 MiB when told to (a file appears):
	// dd holds its 64 MiB buffer while its write to sleep blocks.
	g := cgroups(t, 1, `while [ ! -e `+dir+`/grow ]; do sleep 0.05; done; dd if=/dev/zero bs=64M count=1 2>/dev/null | sleep 3600`)[0]
	var c cgroupv1.MeterCache
	full, err := g.ReadUsage()
	if err != nil {
		t.Fatal(err)
	}
	m, err := g.ReadMeterUsage(&c)
	if err != nil {
		t.Fatal(err)
	}
	if m.CPUNanos < full.CPUNanos || diff(m.MemoryWorkingSet, full.MemoryWorkingSet) > 1<<20 {
		t.Fatalf("meter read %+v, full read %+v", m, full)
	}
	if err := os.WriteFile(filepath.Join(dir, "grow"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		m, err = g.ReadMeterUsage(&c)
		if err != nil {
			t.Fatal(err)
		}
		if m.MemoryWorkingSet > full.MemoryWorkingSet+32<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("working set %d after 64 MiB more were asked for (was %d)", m.MemoryWorkingSet, full.MemoryWorkingSet)
		}
		time.Sleep(20 * time.Millisecond)
	}
	full, err = g.ReadUsage()
	if err != nil {
		t.Fatal(err)
	}
	if diff(m.MemoryWorkingSet, full.MemoryWorkingSet) > 2<<20 {
		t.Fatalf("after growing: meter read %d, full read %d", m.MemoryWorkingSet, full.MemoryWorkingSet)
	}
}

func diff(a, b uint64) uint64 { return max(a, b) - min(a, b) }
