// Fleet benchmarks: what a fleet's control plane adds to a call, against
// the one-process server, in the same run.

package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

var (
	fleetExecs = flag.Int("fleet.execs", 10, "BenchmarkFleet/exec: exec pairs (one per side) per iteration")
	fleetSize  = flag.String("fleet.size", "small", "BenchmarkFleet/exec: the size of the sandboxes the execs run in (medium: 2 vCPU, no CFS throttling of the command in the way of the comparison)")
	fleetGap   = flag.Duration("fleet.gap", 0, "BenchmarkFleet/exec: an untimed pause before each exec, so that every exec finds its sandbox idle (spaced execs vary far less than back-to-back ones, whose sandbox is still busy with the last one's process)")
	fleetPerf  = flag.String("fleet.perf", "", "BenchmarkFleet/exec: `perf record -g` the control plane, the node and the one-process server for 10 s of the loop into PREFIX-{cp,node,local}.perf")
)

// fleetSide is one of the two servers BenchmarkFleet compares, and the
// processes that serve its calls.
type fleetSide struct {
	name string
	s    *apiServer
	pids []int
}

// cpu is the CPU time the side's processes have used so far, in
// nanoseconds from the scheduler (the sum of /proc/PID/task/*/schedstat;
// /proc/PID/stat counts 10 ms ticks).
func (fs fleetSide) cpu(b *testing.B) time.Duration {
	var t time.Duration
	for _, d := range fs.cpus(b) {
		t += d
	}
	return t
}

// cpus is cpu per process, in the order of pids.
func (fs fleetSide) cpus(b *testing.B) []time.Duration {
	ts := make([]time.Duration, len(fs.pids))
	for i, pid := range fs.pids {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			b.Fatal(err)
		}
		for _, task := range tasks {
			bs, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, task.Name()))
			if err != nil {
				continue // the thread ended
			}
			f := strings.Fields(string(bs))
			if len(f) == 0 {
				continue
			}
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			ts[i] += time.Duration(ns)
		}
	}
	return ts
}

// BenchmarkFleet starts, in one invocation, a one-process server (SQLite,
// a pool of 4 small debian-12 sandboxes, networking off) and a fleet of
// one (PostgreSQL, one control-plane replica on the host, one `orkestrd
// node` in its own network namespace with the same pool), and asks both
// the same questions, interleaved (the side that goes first alternates):
//
//   - exec: POST /exec `true` on one running small sandbox per side,
//     -fleet.execs pairs per iteration.
//   - create-exec: POST /v1/sandboxes, then POST /exec `echo hi` (checked),
//     then DELETE, once per side per iteration, each side's pool refilled
//     (untimed) first so that every create claims a warm sandbox.
//
// p50/p95-ms are the fleet's, local-p50/p95-ms the one-process server's;
// added-p50-ms is the difference of the medians, pair-p50-ms the median
// of the differences of the interleaved pairs, ratio-p50 the quotient of
// the medians. cpu-us/op is the CPU time the serving processes used per
// call, measured around each call (the control plane and the node for the
// fleet, orkestrd for the one-process server; from the scheduler's
// per-thread counters); runsc and the sandbox are not in it.
func BenchmarkFleet(b *testing.B) {
	local := startServerWith(b, seqPool, templateName, noNetworkConfig)
	f := startFleet(b, seqPool, templateName)
	ctx := timeout(b, 30*time.Minute)
	sides := []fleetSide{
		{"one-process", local, []int{local.pid()}},
		{"fleet", f.cp, []int{f.cp.pid(), f.node.Process.Pid}},
	}
	waitPools := func() {
		local.waitPool(seqPool, 5*time.Minute, nil)
		f.waitPool(seqPool, 5*time.Minute)
	}
	waitPools()

	b.Run("exec", func(b *testing.B) {
		sbs := make([]*orkestr.Sandbox, len(sides))
		for i, sd := range sides {
			sb, err := createWhenRoom(ctx, sd.s.client, orkestr.CreateParams{Template: templateName, Size: *fleetSize})
			if err != nil {
				b.Fatalf("%s: create: %v", sd.name, err)
			}
			sbs[i] = sb
			b.Cleanup(func() { _ = sb.Terminate(context.Background()) })
		}
		var inAgent [2]int64 // the exec's own duration_ms, summed
		run := func(i int) time.Duration {
			t0 := time.Now()
			res, err := sbs[i].Exec(ctx, "true", orkestr.ExecOptions{})
			d := time.Since(t0)
			if err != nil {
				b.Fatalf("%s: exec: %v", sides[i].name, err)
			}
			if res.ExitCode != 0 {
				b.Fatalf("%s: exec true: exit %d", sides[i].name, res.ExitCode)
			}
			inAgent[i] += res.DurationMS
			return d
		}
		// The same exec straight to the node API from this process
		// (what the control plane does for the fleet's exec): where the
		// fleet's time goes, between the control plane and the node. On a
		// sandbox of its own on the node, so that each sandbox gets the
		// same rate of execs (a small one has half a core: more execs,
		// more CFS throttling).
		third, err := createWhenRoom(ctx, f.cp.client, orkestr.CreateParams{Template: templateName, Size: *fleetSize})
		if err != nil {
			b.Fatalf("fleet: create: %v", err)
		}
		b.Cleanup(func() { _ = third.Terminate(context.Background()) })
		direct, err := f.nodeAPI.Sandbox(ctx, f.runtimeID(third.ID))
		if err != nil {
			b.Fatalf("node API: sandbox: %v", err)
		}
		runDirect := func() time.Duration {
			t0 := time.Now()
			res, err := direct.Exec(ctx, runtime.ExecRequest{Command: "true", Cwd: "/workspace", Timeout: time.Minute,
				Stdout: io.Discard, Stderr: io.Discard})
			d := time.Since(t0)
			if err != nil || res.ExitCode != 0 {
				b.Fatalf("node API: exec true: exit %d, %v", res.ExitCode, err)
			}
			return d
		}
		for range 5 {
			run(0)
			run(1)
			runDirect()
		}
		inAgent = [2]int64{}
		var ds [3]durations
		var cpu [2]time.Duration
		var cpCPU, nodeCPU time.Duration
		n := 0
		idle := f.idleTransactions()
		x0, xt0 := f.transactions(), time.Now()
		perfWait := func() {}
		if *fleetPerf != "" {
			var waits []func()
			for name, pid := range map[string]int{"cp": f.cp.pid(), "node": f.node.Process.Pid, "local": local.pid()} {
				waits = append(waits, perfRecord(b, *fleetPerf+"-"+name+".perf", 10*time.Second, "-p", strconv.Itoa(pid)))
			}
			perfWait = func() {
				for _, w := range waits {
					w()
				}
			}
		}
		for b.Loop() {
			for range *fleetExecs {
				for k := range 3 {
					if *fleetGap > 0 {
						b.StopTimer()
						time.Sleep(*fleetGap)
						b.StartTimer()
					}
					switch i := (n + k) % 3; i {
					case 2:
						ds[2].add(runDirect())
					default:
						c0 := sides[i].cpus(b)
						ds[i].add(run(i))
						c1 := sides[i].cpus(b)
						for j := range c0 {
							cpu[i] += c1[j] - c0[j]
						}
						if i == 1 {
							cpCPU += c1[0] - c0[0]
							nodeCPU += c1[1] - c0[1]
						}
					}
				}
				n++
			}
		}
		b.StopTimer()
		xt1 := time.Now()
		perfWait()
		time.Sleep(2 * time.Second)
		x1 := f.transactions()
		reportFleet(b, ds[0], ds[1])
		ds[2].report(b, "nodeapi-p50-ms")
		// Minus this benchmark's own read and the background rate.
		b.ReportMetric((float64(x1-x0-1)-idle*xt1.Sub(xt0).Seconds())/float64(len(ds[1])), "pg-xacts/op")
		b.ReportMetric(idle, "pg-idle-xacts/s")
		b.ReportMetric(float64(cpu[1].Microseconds())/float64(len(ds[1])), "cpu-us/op")
		b.ReportMetric(float64(cpu[0].Microseconds())/float64(len(ds[0])), "local-cpu-us/op")
		// duration_ms is whole, truncated ms; the mean keeps some resolution.
		b.ReportMetric(float64(inAgent[1])/float64(len(ds[1])), "in-agent-ms")
		b.ReportMetric(float64(inAgent[0])/float64(len(ds[0])), "local-in-agent-ms")
		b.ReportMetric(float64(cpCPU.Microseconds())/float64(len(ds[1])), "cp-cpu-us/op")
		b.ReportMetric(float64(nodeCPU.Microseconds())/float64(len(ds[1])), "node-cpu-us/op")
	})

	b.Run("create-exec", func(b *testing.B) {
		var tti, creates, execs, deletes [2]durations
		var cpu [2]time.Duration
		once := func(i int) {
			sd := sides[i]
			c0 := sd.cpu(b)
			t0 := time.Now()
			sb, err := sd.s.client.CreateSandbox(ctx, orkestr.CreateParams{Template: templateName, Size: "small"})
			if err != nil {
				b.Fatalf("%s: create: %v", sd.name, err)
			}
			t1 := time.Now()
			res, err := sb.Exec(ctx, "echo hi", orkestr.ExecOptions{})
			t2 := time.Now()
			if err != nil {
				b.Fatalf("%s: exec: %v", sd.name, err)
			}
			if res.ExitCode != 0 || res.Stdout != "hi\n" {
				b.Fatalf("%s: echo hi: exit %d, stdout %q, stderr %q", sd.name, res.ExitCode, res.Stdout, res.Stderr)
			}
			if err := sb.Terminate(ctx); err != nil {
				b.Fatalf("%s: delete: %v", sd.name, err)
			}
			t3 := time.Now()
			cpu[i] += sd.cpu(b) - c0
			tti[i].add(t2.Sub(t0))
			creates[i].add(t1.Sub(t0))
			execs[i].add(t2.Sub(t1))
			deletes[i].add(t3.Sub(t2))
		}
		b.StopTimer()
		// The exec part's sandboxes may still hold the node's room.
		if sb, err := createWhenRoom(ctx, sides[1].s.client, orkestr.CreateParams{Template: templateName, Size: "small"}); err != nil {
			b.Fatalf("fleet: create: %v", err)
		} else if err := sb.Terminate(ctx); err != nil {
			b.Fatalf("fleet: delete: %v", err)
		}
		waitPools()
		once(0) // warm-up: connections, page cache
		once(1)
		waitPools()
		idle := f.idleTransactions()
		x0, xt0 := f.transactions(), time.Now()
		b.StartTimer()
		n := 0
		for b.Loop() {
			b.StopTimer()
			waitPools()
			b.StartTimer()
			for k := range 2 {
				once((n + k) % 2)
			}
			n++
		}
		b.StopTimer()
		xt1 := time.Now()
		time.Sleep(2 * time.Second)
		x1 := f.transactions()
		// The warm-up pair is in the samples; drop it.
		for _, ds := range []*[2]durations{&tti, &creates, &execs, &deletes} {
			ds[0], ds[1] = ds[0][1:], ds[1][1:]
		}
		reportFleet(b, tti[0], tti[1])
		creates[1].report(b, "create-ms")
		creates[0].report(b, "local-create-ms")
		execs[1].report(b, "exec-ms")
		execs[0].report(b, "local-exec-ms")
		deletes[1].report(b, "delete-ms")
		deletes[0].report(b, "local-delete-ms")
		b.ReportMetric(float64(cpu[1].Microseconds())/float64(n+1), "cpu-us/op")
		b.ReportMetric(float64(cpu[0].Microseconds())/float64(n+1), "local-cpu-us/op")
		b.ReportMetric((float64(x1-x0-1)-idle*xt1.Sub(xt0).Seconds())/float64(n), "pg-xacts/op")
		b.ReportMetric(idle, "pg-idle-xacts/s")
	})
}

// reportFleet reports the fleet's and the one-process server's p50 and
// p95 and how they compare; local[j] and fleet[j] are the j-th pair.
func reportFleet(b *testing.B, local, fleet durations) {
	fleet.report(b, "p50-ms")
	fleet.reportQuantile(b, 0.95, "p95-ms")
	local.report(b, "local-p50-ms")
	local.reportQuantile(b, 0.95, "local-p95-ms")
	lm, fm := median(local), median(fleet)
	b.ReportMetric(float64(fm-lm)/1e6, "added-p50-ms")
	b.ReportMetric(float64(quantile(fleet, 0.95)-quantile(local, 0.95))/1e6, "added-p95-ms")
	b.ReportMetric(float64(fm)/float64(lm), "ratio-p50")
	var diffs durations
	for j := range min(len(local), len(fleet)) {
		diffs.add(fleet[j] - local[j])
	}
	b.ReportMetric(float64(median(diffs))/1e6, "pair-p50-ms")
}

func median(ds durations) time.Duration { return quantile(ds, 0.5) }

// quantile is as durations.reportQuantile computes it.
func quantile(ds durations, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	n := len(s)
	switch {
	case q == 0.5 && n%2 == 0:
		return (s[n/2-1] + s[n/2]) / 2
	case q == 0.5:
		return s[n/2]
	}
	return s[max(0, min(n-1, int(math.Ceil(q*float64(n)))-1))]
}

// newRequest is an authenticated API request without a body.
func newRequest(method, url, key string) (*http.Request, error) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, url, err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	return req, nil
}

// createWhenRoom creates a sandbox, waiting up to 30 s while the answer is
// no_capacity: the sandboxes of the count before are gone, but the node's
// room comes back only with its next heartbeat (medium sandboxes take a
// 2-core node's cores).
func createWhenRoom(ctx context.Context, c *orkestr.Client, p orkestr.CreateParams) (*orkestr.Sandbox, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		sb, err := c.CreateSandbox(ctx, p)
		var e *orkestr.Error
		if err == nil || !errors.As(err, &e) || e.Code != "no_capacity" || time.Now().After(deadline) {
			return sb, err
		}
		time.Sleep(500 * time.Millisecond)
	}
}
