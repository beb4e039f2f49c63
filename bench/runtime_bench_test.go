// Package bench measures the gVisor runtime driver and the warm pool against
// raw runsc and runc on the same template rootfs, in one invocation, so the
// ratios compare numbers taken on the same machine at the same time.
//
// These are benchmarks, not tests: they assert only what they need in order
// to measure the right thing (a claim was warm, a command exited 0) and leave
// judging the numbers to people. Run them as root with bench/run.sh.
//
// Every benchmark times with b.Loop, so its setup runs once per -count, and
// reports, besides ns/op (the mean), the median of its own iterations as
// p50-ms plus the parts of an operation where they are useful.
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/pool"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

const templateName = "debian-12"

// sized is testenv.Small with another CPU count: a 0.5-vCPU sandbox gets
// 50 ms of CPU per 100 ms CFS period, which shows in anything that needs a
// few ms of CPU in a burst (starting, exec).
func sized(cpu float64) runtime.Resources {
	r := testenv.Small
	r.CPU = cpu
	return r
}

func spec(b *testing.B, res runtime.Resources) runtime.Spec {
	return runtime.Spec{Template: templateName, Rootfs: testenv.Rootfs(b, templateName), Resources: res}
}

func timeout(b *testing.B, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	b.Cleanup(cancel)
	return ctx
}

func create(b *testing.B, env *testenv.Env, res runtime.Resources) runtime.Sandbox {
	b.Helper()
	sb, err := env.Driver.Create(timeout(b, time.Minute), spec(b, res))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sb.Destroy(context.Background()) })
	return sb
}

func destroy(b *testing.B, sb runtime.Sandbox) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := sb.Destroy(ctx); err != nil {
		b.Fatalf("destroy %s: %v", sb.ID(), err)
	}
}

// execTrue runs `true` through the agent and fails unless it exited 0.
func execTrue(ctx context.Context, b *testing.B, sb runtime.Sandbox) runtime.ExecResult {
	b.Helper()
	res, err := sb.Exec(ctx, runtime.ExecRequest{Command: "true", Stdout: io.Discard, Stderr: io.Discard})
	if err != nil {
		b.Fatalf("exec: %v", err)
	}
	if res.ExitCode != 0 {
		b.Fatalf("exec true: exit %d", res.ExitCode)
	}
	return res
}

// BenchmarkColdCreate times Create (runsc run --detach of the agent, until the
// agent has dialled in) plus Destroy, with the sandbox's CPU quota in place
// from the start, as the driver does.
func BenchmarkColdCreate(b *testing.B) {
	for _, cpu := range []float64{0.5, 2} {
		b.Run(fmt.Sprintf("cpu=%g", cpu), func(b *testing.B) {
			env := newDriver(b)
			sp := spec(b, sized(cpu))
			ctx := timeout(b, 10*time.Minute)
			// Warm-up: page cache, agent copy, runsc's first start.
			destroy(b, create(b, env, sp.Resources))
			var created, destroyed, total durations
			var hostCPU, cliCPU, sbxCPU samples
			for b.Loop() {
				h0, c0 := hostBusy(), childrenCPU()
				t0 := time.Now()
				sb, err := env.Driver.Create(ctx, sp)
				if err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				hostCPU.add(float64(hostBusy()-h0) / 1e6)
				cliCPU.add(float64(childrenCPU()-c0) / 1e6)
				if u, err := cgroupv1.Group(filepath.Join(env.CgroupParent, sb.ID())).ReadUsage(); err == nil {
					sbxCPU.add(float64(u.CPUNanos) / 1e6)
				}
				if err := sb.Destroy(ctx); err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				created.add(t1.Sub(t0))
				destroyed.add(t2.Sub(t1))
				total.add(t2.Sub(t0))
			}
			total.report(b, "p50-ms")
			created.report(b, "create-ms")
			destroyed.report(b, "destroy-ms")
			// Where a cold start's CPU goes: the whole host while Create
			// ran (this process included), the runsc invocations it
			// waited for, and the sandbox's own cgroup (sentry, gofer,
			// agent) up to the ready agent.
			b.ReportMetric(hostCPU.median(), "host-cpu-ms")
			b.ReportMetric(cliCPU.median(), "runsc-cli-cpu-ms")
			b.ReportMetric(sbxCPU.median(), "sandbox-cpu-ms")
		})
	}
}

// BenchmarkWarmClaimFirstExec times what a user waits for when the pool has a
// sandbox ready: Claim (env, hostname, limits pushed to a pooled sandbox)
// plus the first Exec of `true`. The pool is refilled, untimed, before each
// claim; the refill of the claimed slot starts during the timed part, as it
// would in production, and competes with it for the 2 cores. second-exec-ms
// is an untimed second Exec right after the first.
func BenchmarkWarmClaimFirstExec(b *testing.B) {
	claim := runtime.Claim{
		Env:       map[string]string{"ORKESTR_BENCH": "1", "API_TOKEN": "not-a-secret"},
		Hostname:  "bench",
		Resources: testenv.Small,
		Labels:    map[string]string{"account": "bench"},
	}
	var seconds durations
	benchWarmClaim(b, newDriver(b), pool.Key{Template: templateName, Size: "small"}, claim, func(ctx context.Context, sb runtime.Sandbox) {
		t0 := time.Now()
		execTrue(ctx, b, sb)
		seconds.add(time.Since(t0))
	})
	seconds[1:].report(b, "second-exec-ms") // without the warm-up round
}

// benchWarmClaim keeps a pool of 2 for key and times, per iteration, a
// claim and the first Exec of `true` once the pool is full (untimed: the
// wait for the refill, then after on the claimed sandbox, then its destroy).
// It reports p50/p90 of the total and the two parts.
func benchWarmClaim(b *testing.B, env *testenv.Env, key pool.Key, claim runtime.Claim, after func(context.Context, runtime.Sandbox)) {
	p := pool.New(env.Driver, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			b.Errorf("close pool: %v", err)
		}
	})
	sp := spec(b, testenv.Small)
	p.SetTarget(key, sp, 2)
	ctx := timeout(b, 10*time.Minute)
	once := func() (claimed, first time.Duration) {
		if err := p.WaitFull(ctx); err != nil {
			b.Fatalf("pool never filled: %v", err)
		}
		b.StartTimer()
		t0 := time.Now()
		sb, warm, err := p.Claim(ctx, key, sp, claim)
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		execTrue(ctx, b, sb)
		t2 := time.Now()
		b.StopTimer()
		if !warm {
			b.Fatal("claim after WaitFull was a cold start")
		}
		if after != nil {
			after(ctx, sb)
		}
		destroy(b, sb)
		return t1.Sub(t0), t2.Sub(t1)
	}
	b.StopTimer()
	once() // warm-up
	b.StartTimer()
	var claims, execs, total durations
	for b.Loop() {
		b.StopTimer()
		c, e := once()
		b.StartTimer()
		claims.add(c)
		execs.add(e)
		total.add(c + e)
	}
	total.report(b, "p50-ms")
	total.reportQuantile(b, 0.9, "p90-ms")
	claims.report(b, "claim-ms")
	execs.report(b, "exec-ms")
}

// BenchmarkExecRoundTrip times Exec of `true` (sh -c true through the agent)
// on one running sandbox, with 0.5 and 2 vCPUs, back to back.
func BenchmarkExecRoundTrip(b *testing.B) { benchExec(b, 0) }

// BenchmarkExecSpaced is BenchmarkExecRoundTrip with 100 ms of idle time
// (untimed) before each Exec, as between the commands of an agent that
// thinks: whatever the agent starts in the background after a command has
// finished by then, and the CFS quota has refilled.
func BenchmarkExecSpaced(b *testing.B) { benchExec(b, 100*time.Millisecond) }

func benchExec(b *testing.B, gap time.Duration) {
	for _, cpu := range []float64{0.5, 2} {
		b.Run(fmt.Sprintf("cpu=%g", cpu), func(b *testing.B) {
			env := newDriver(b)
			sb := create(b, env, sized(cpu))
			ctx := timeout(b, 10*time.Minute)
			for range 5 {
				execTrue(ctx, b, sb)
			}
			var ds durations
			var inAgent time.Duration
			done := throttled(b, env, sb)
			for b.Loop() {
				if gap > 0 {
					b.StopTimer()
					time.Sleep(gap)
					b.StartTimer()
				}
				t0 := time.Now()
				res := execTrue(ctx, b, sb)
				ds.add(time.Since(t0))
				inAgent += res.Duration
			}
			ds.report(b, "p50-ms")
			ds.reportQuantile(b, 0.9, "p90-ms")
			done()
			// The agent reports whole milliseconds; the mean keeps some
			// resolution.
			b.ReportMetric(float64(inAgent)/1e6/float64(b.N), "in-agent-ms")
		})
	}
}

// BenchmarkExecCPU is the CPU a sandbox spends on one exec, read from its
// cgroup (cpuacct) around spaced execs: the command itself plus the agent's
// work, including starting the next pre-started shell. It is what bounds
// how many creates-and-first-commands a host can serve at once.
func BenchmarkExecCPU(b *testing.B) {
	for _, c := range []struct{ name, template, command string }{
		{"true", templateName, "true"},
		{"cat", templateName, "cat /etc/debian_version"},
		{"node-v", "node-22", "node -v"},
		// The baseline: 50 process starts inside one exec; its cpu-ms/exec
		// divided by 50 is what one fork+exec costs the sandbox on this host.
		{"true-x50", templateName, "i=0; while [ $i -lt 50 ]; do /bin/true; i=$((i+1)); done"},
	} {
		b.Run("cmd="+c.name, func(b *testing.B) {
			env := newDriver(b)
			sp := runtime.Spec{Template: c.template, Rootfs: testenv.Rootfs(b, c.template), Resources: sized(2)}
			ctx := timeout(b, 10*time.Minute)
			sb, err := env.Driver.Create(ctx, sp)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = sb.Destroy(context.Background()) })
			run := func() {
				res, err := sb.Exec(ctx, runtime.ExecRequest{Command: c.command, Stdout: io.Discard, Stderr: io.Discard})
				if err != nil || res.ExitCode != 0 {
					b.Fatalf("%s: %+v %v", c.command, res, err)
				}
			}
			run()
			time.Sleep(200 * time.Millisecond) // the next shell is started
			var cpu time.Duration
			for b.Loop() {
				b.StopTimer()
				before, err := sb.Stats(ctx)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				run()
				b.StopTimer()
				time.Sleep(200 * time.Millisecond)
				after, err := sb.Stats(ctx)
				if err != nil {
					b.Fatal(err)
				}
				cpu += time.Duration(after.CPUNanos - before.CPUNanos)
				b.StartTimer()
			}
			b.ReportMetric(float64(cpu)/1e6/float64(b.N), "cpu-ms/exec")
		})
	}
}

// BenchmarkAgentStat times Stat("/") through the agent: one request and one
// JSON reply on a new stream, no process started. It stands in for the bare
// channel ping, which is not reachable from outside package gvisor.
func BenchmarkAgentStat(b *testing.B) {
	for _, cpu := range []float64{0.5, 2} {
		b.Run(fmt.Sprintf("cpu=%g", cpu), func(b *testing.B) {
			env := newDriver(b)
			sb := create(b, env, sized(cpu))
			ctx := timeout(b, 10*time.Minute)
			stat := func() {
				if _, err := sb.Stat(ctx, "/"); err != nil {
					b.Fatal(err)
				}
			}
			for range 5 {
				stat()
			}
			var ds durations
			for b.Loop() {
				t0 := time.Now()
				stat()
				ds.add(time.Since(t0))
			}
			ds.report(b, "p50-ms")
			ds.reportQuantile(b, 0.9, "p90-ms")
		})
	}
}

// throttled starts counting the CFS periods in which the sandbox was
// throttled; the returned func reports them per operation.
func throttled(b *testing.B, env *testenv.Env, sb runtime.Sandbox) func() {
	path := filepath.Join(cgroupv1.Root, "cpu", env.CgroupParent, sb.ID(), "cpu.stat")
	before := readKV(path)["nr_throttled"]
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64(readKV(path)["nr_throttled"]-before)/float64(b.N), "throttled/op")
		}
	}
}

// BenchmarkCheckpoint times Checkpoint of an idle sandbox that was just
// created: drain, runsc checkpoint (which stops the sandbox), snapshot
// metadata, and the Destroy of what is left. The sandbox's CPU quota applies
// to the checkpoint work, so it is measured at 0.5 and 2 vCPUs.
func BenchmarkCheckpoint(b *testing.B) {
	for _, cpu := range []float64{0.5, 2} {
		b.Run(fmt.Sprintf("cpu=%g", cpu), func(b *testing.B) {
			env := newDriver(b)
			res := sized(cpu)
			base := b.TempDir()
			ctx := timeout(b, 10*time.Minute)
			var ds durations
			var bytes int64
			once := func() {
				sb := create(b, env, res)
				dir, err := os.MkdirTemp(base, "snap-")
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				t0 := time.Now()
				snap, err := sb.Checkpoint(ctx, dir)
				d := time.Since(t0)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				ds.add(d)
				bytes = snap.Bytes
				if err := os.RemoveAll(dir); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			once()
			ds = nil
			b.StartTimer()
			for b.Loop() {
				b.StopTimer()
				once()
				b.StartTimer()
			}
			ds.report(b, "p50-ms")
			b.ReportMetric(float64(bytes)/(1<<20), "image-MiB")
		})
	}
}

// BenchmarkRestore restores one checkpoint again and again (each restore is
// a new, independent clone) and destroys each clone untimed. The time runs
// until the restored agent has redialled; first-exec-ms is the first Exec
// of `true` on the clone after that, measured separately. The restored
// sandbox keeps the size it was checkpointed with: 0.5 or 2 vCPUs.
func BenchmarkRestore(b *testing.B) {
	for _, cpu := range []float64{0.5, 2} {
		b.Run(fmt.Sprintf("cpu=%g", cpu), func(b *testing.B) {
			env := newDriver(b)
			rootfs := testenv.Rootfs(b, templateName)
			ctx := timeout(b, 10*time.Minute)
			sb := create(b, env, sized(cpu))
			execTrue(ctx, b, sb)
			dir := b.TempDir()
			if _, err := sb.Checkpoint(ctx, dir); err != nil {
				b.Fatal(err)
			}
			restore := func() (runtime.Sandbox, time.Duration) {
				t0 := time.Now()
				r, err := env.Driver.Restore(ctx, dir, rootfs, nil)
				d := time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
				return r, d
			}
			r, _ := restore()
			destroy(b, r)
			var ds, firsts durations
			for b.Loop() {
				r, d := restore()
				b.StopTimer()
				ds.add(d)
				t0 := time.Now()
				execTrue(ctx, b, r)
				firsts.add(time.Since(t0))
				destroy(b, r)
				b.StartTimer()
			}
			ds.report(b, "p50-ms")
			firsts.report(b, "first-exec-ms")
		})
	}
}

// chainLength is how many generations BenchmarkRestoreChain restores.
const chainLength = 9

// BenchmarkRestoreChain follows one snapshot lineage: create a 2-vCPU
// sandbox, then chainLength times checkpoint it and restore the image,
// carrying on with the clone, so that every restore starts from memory
// that has been through all the earlier ones (as pause/resume cycles of a
// long-lived sandbox do). One iteration is one whole chain; p50-ms is the
// median restore (until the agent has redialled) over every generation,
// gen1-ms and genN-ms the first and last generation, slope-ms/gen the
// least-squares growth of the restore time per generation (0 when a
// restore does not depend on how many came before), first-exec-ms the
// first exec on each clone.
func BenchmarkRestoreChain(b *testing.B) {
	env := newDriver(b)
	rootfs := testenv.Rootfs(b, templateName)
	ctx := timeout(b, 30*time.Minute)
	base := b.TempDir()
	gens := make([]durations, chainLength)
	var all, firsts durations
	var slopes samples
	for b.Loop() {
		b.StopTimer()
		sb := create(b, env, sized(2))
		execTrue(ctx, b, sb)
		b.StartTimer()
		var chain []time.Duration
		for g := range chainLength {
			dir, err := os.MkdirTemp(base, "snap-")
			if err != nil {
				b.Fatal(err)
			}
			if _, err := sb.Checkpoint(ctx, dir); err != nil {
				b.Fatalf("generation %d: checkpoint: %v", g+1, err)
			}
			t0 := time.Now()
			r, err := env.Driver.Restore(ctx, dir, rootfs, nil)
			d := time.Since(t0)
			if err != nil {
				b.Fatalf("generation %d: restore: %v", g+1, err)
			}
			b.Cleanup(func() { _ = r.Destroy(context.Background()) })
			b.StopTimer()
			t1 := time.Now()
			execTrue(ctx, b, r)
			firsts.add(time.Since(t1))
			b.StartTimer()
			chain = append(chain, d)
			gens[g].add(d)
			all.add(d)
			sb = r
		}
		b.StopTimer()
		destroy(b, sb)
		if err := os.RemoveAll(base); err != nil {
			b.Fatal(err)
		}
		if err := os.MkdirAll(base, 0o700); err != nil {
			b.Fatal(err)
		}
		slopes.add(slope(chain))
		b.StartTimer()
	}
	all.report(b, "p50-ms")
	gens[0].report(b, "gen1-ms")
	gens[chainLength-1].report(b, fmt.Sprintf("gen%d-ms", chainLength))
	b.ReportMetric(slopes.median(), "slope-ms/gen")
	firsts.report(b, "first-exec-ms")
}

// slope is the least-squares slope of ds (ms) against their index.
func slope(ds []time.Duration) float64 {
	n := float64(len(ds))
	if n < 2 {
		return 0
	}
	var sx, sy, sxx, sxy float64
	for i, d := range ds {
		x, y := float64(i), float64(d)/1e6
		sx += x
		sy += y
		sxx += x * x
		sxy += x * y
	}
	return (n*sxy - sx*sy) / (n*sxx - sx*sx)
}

// BenchmarkIdleMemory starts idleSandboxes sandboxes, lets them settle, and
// reports per sandbox: the PSS of the host processes in its memory cgroup
// (runsc sandbox, gofer; shared pages are split among all of them) and the
// cgroup's working set (usage minus inactive file cache, which includes
// page cache charged to it). ns/op is only the cost of one reading.
func BenchmarkIdleMemory(b *testing.B) {
	const idleSandboxes = 5
	env := newDriver(b)
	ctx := timeout(b, 10*time.Minute)
	var sbs []runtime.Sandbox
	for range idleSandboxes {
		sb := create(b, env, testenv.Small)
		execTrue(ctx, b, sb)
		sbs = append(sbs, sb)
	}
	time.Sleep(2 * time.Second)
	var pss, rss, wset, procs samples
	for b.Loop() {
		var p, r, w, n float64
		for _, sb := range sbs {
			m, err := sandboxMemory(env.CgroupParent, sb.ID())
			if err != nil {
				b.Fatal(err)
			}
			p += float64(m.PssKiB) / 1024
			r += float64(m.RssKiB) / 1024
			w += float64(m.WorkingSet) / (1 << 20)
			n += float64(m.Procs)
		}
		pss.add(p / idleSandboxes)
		rss.add(r / idleSandboxes)
		wset.add(w / idleSandboxes)
		procs.add(n / idleSandboxes)
	}
	b.ReportMetric(pss.median(), "pss-MiB/sandbox")
	b.ReportMetric(rss.median(), "rss-MiB/sandbox")
	b.ReportMetric(wset.median(), "wset-MiB/sandbox")
	b.ReportMetric(procs.median(), "procs/sandbox")
}

// BenchmarkRawRunscRun is the gVisor floor: runsc run of /bin/true on the
// same rootfs (overlay in memory, no cgroup limits, no agent), to exit;
// runsc removes the container itself. "detach" starts /bin/sleep with
// --detach and times until runsc returns, the closest raw analogue of our
// Create (which also waits for the agent); its delete is untimed.
func BenchmarkRawRunscRun(b *testing.B) {
	b.Run("true", func(b *testing.B) {
		rs := newRawRunsc(b)
		bundle := rs.bundle(b, "/bin/true")
		rs.runTrue(b, bundle)
		var ds durations
		for b.Loop() {
			ds.add(rs.runTrue(b, bundle))
		}
		ds.report(b, "p50-ms")
	})
	b.Run("detach", func(b *testing.B) {
		rs := newRawRunsc(b)
		bundle := rs.bundle(b, "/bin/sleep", "infinity")
		var ds, dels durations
		id, _ := rs.start(b, bundle)
		rs.delete(b, id)
		for b.Loop() {
			id, d := rs.start(b, bundle)
			b.StopTimer()
			ds.add(d)
			dels.add(rs.delete(b, id))
			b.StartTimer()
		}
		ds.report(b, "p50-ms")
		dels.report(b, "delete-ms")
	})
}

// BenchmarkRawRunscExec is runsc exec /bin/true in a running container.
func BenchmarkRawRunscExec(b *testing.B) {
	rs := newRawRunsc(b)
	id, _ := rs.start(b, rs.bundle(b, "/bin/sleep", "infinity"))
	b.Cleanup(func() { rs.delete(b, id) })
	for range 3 {
		rs.exec(b, id)
	}
	var ds durations
	for b.Loop() {
		ds.add(rs.exec(b, id))
	}
	ds.report(b, "p50-ms")
	ds.reportQuantile(b, 0.9, "p90-ms")
}

// BenchmarkRawRunscState is one `runsc state` of a running container: the
// floor of any runsc invocation (an 80 MB static binary starting), which
// our Create pays once more after `runsc run` to learn the sandbox's pid.
func BenchmarkRawRunscState(b *testing.B) {
	rs := newRawRunsc(b)
	id, _ := rs.start(b, rs.bundle(b, "/bin/sleep", "infinity"))
	b.Cleanup(func() { rs.delete(b, id) })
	rs.state(b, id)
	var ds durations
	for b.Loop() {
		ds.add(rs.state(b, id))
	}
	ds.report(b, "p50-ms")
}

// BenchmarkRawRunscCheckpoint is runsc checkpoint (which stops the sandbox)
// of a just-started /bin/sleep container; the delete afterwards is untimed
// and reported as delete-ms.
func BenchmarkRawRunscCheckpoint(b *testing.B) {
	rs := newRawRunsc(b)
	bundle := rs.bundle(b, "/bin/sleep", "infinity")
	var ds, dels durations
	var bytes int64
	once := func() {
		id, _ := rs.start(b, bundle)
		img := rs.imageDir(b)
		b.StartTimer()
		d := rs.checkpoint(b, id, img)
		b.StopTimer()
		ds.add(d)
		dels.add(rs.delete(b, id))
		bytes = dirBytes(img)
		if err := os.RemoveAll(img); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	once()
	ds, dels = nil, nil
	b.StartTimer()
	for b.Loop() {
		b.StopTimer()
		once()
		b.StartTimer()
	}
	ds.report(b, "p50-ms")
	dels.report(b, "delete-ms")
	b.ReportMetric(float64(bytes)/(1<<20), "image-MiB")
}

// BenchmarkRawRunscRestore restores one runsc checkpoint of a /bin/sleep
// container again and again with --detach; each clone is deleted untimed.
func BenchmarkRawRunscRestore(b *testing.B) {
	rs := newRawRunsc(b)
	bundle := rs.bundle(b, "/bin/sleep", "infinity")
	id, _ := rs.start(b, bundle)
	img := rs.imageDir(b)
	rs.checkpoint(b, id, img)
	rs.delete(b, id)
	id, _ = rs.restore(b, bundle, img)
	rs.delete(b, id)
	var ds durations
	for b.Loop() {
		id, d := rs.restore(b, bundle, img)
		b.StopTimer()
		ds.add(d)
		rs.delete(b, id)
		b.StartTimer()
	}
	ds.report(b, "p50-ms")
}

// BenchmarkRuncRun is Debian's runc running /bin/true on the same rootfs
// (read-only root, its own cgroup, no limits), to exit; runc removes the
// container itself. A container, not a sandbox: the floor of what a
// namespace-only runtime costs here.
func BenchmarkRuncRun(b *testing.B) {
	rc := newRunc(b)
	bundle := rc.bundle(b, "/bin/true")
	rc.run(b, bundle)
	var ds durations
	for b.Loop() {
		ds.add(rc.run(b, bundle))
	}
	ds.report(b, "p50-ms")
}
