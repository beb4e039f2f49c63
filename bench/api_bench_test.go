// API benchmarks: the same questions asked through the REST API of a real
// `orkestrd serve` built from this checkout, as a client sees it. Every
// benchmark starts its own server (fresh data directory, SQLite store,
// the pool size it needs) with a plan that neither rate-limits nor caps
// concurrency, and talks to it over loopback HTTP with keep-alive, through
// the Go SDK (sdk/go) except for the GET load, which uses net/http directly
// so that the client costs as little CPU as possible. The server and the
// client share the machine's cores.

package bench

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

var (
	burstSize  = flag.Int("api.burst", 100, "BenchmarkAPIBurstTTI: sandboxes created at once (and the pool size)")
	getClients = flag.Int("api.get-clients", 64, "BenchmarkAPIGetThroughput: concurrent keep-alive clients")
	getWindow  = flag.Duration("api.get-window", 3*time.Second, "BenchmarkAPIGetThroughput: measured time per iteration")
	perfOut    = flag.String("api.perf", "", "BenchmarkAPIGetThroughput: `perf record -g` the server during the first window into this file")
	perfBurst  = flag.String("api.perf-burst", "", "BenchmarkAPIBurstTTI: `perf record -a -g` the whole host during the first burst into this file")
)

// The TTI benchmarks measure what the public computesdk benchmark does:
// create a sandbox, run `node -v` in it.
var (
	ttiTemplate = flag.String("api.tti-template", "node-22", "the template of the TTI benchmarks")
	ttiCommand  = flag.String("api.tti-cmd", "node -v", "the first command of the TTI benchmarks (with another command only its exit code is checked)")
)

// checkTTI fails unless res is the expected answer to the TTI command.
func checkTTI(res *orkestr.ExecResult) error {
	if res.ExitCode != 0 || (*ttiCommand == "node -v" && !strings.HasPrefix(res.Stdout, "v")) {
		return fmt.Errorf("%s: exit %d, stdout %q, stderr %q", *ttiCommand, res.ExitCode, res.Stdout, res.Stderr)
	}
	return nil
}

// seqPool is the warm pool of the sequential TTI benchmarks.
const seqPool = 4

// BenchmarkAPITTIWarm is time to interactive as the public computesdk
// benchmark measures it: from the create() call until the first command's
// result is back (POST /v1/sandboxes, then POST /exec `node -v`), one
// sandbox after another. The pool (4 small node-22 sandboxes) is
// refilled, untimed, before each create, so every
// create claims a warm sandbox; the DELETE after each is untimed.
func BenchmarkAPITTIWarm(b *testing.B) { benchTTI(b, seqPool, true) }

// BenchmarkAPITTINoWait is BenchmarkAPITTIWarm without waiting for the
// pool to refill: create → exec → delete back to back, so it measures what
// a pool of 4 sustains. pool-hit-% is the share of creates that found a
// warm sandbox waiting (read from /healthz just before, untimed).
func BenchmarkAPITTINoWait(b *testing.B) { benchTTI(b, seqPool, false) }

// BenchmarkAPITTICold is BenchmarkAPITTIWarm with the pool disabled: every
// create is a cold start.
func BenchmarkAPITTICold(b *testing.B) { benchTTI(b, 0, false) }

func benchTTI(b *testing.B, pool int, wait bool) {
	s := startServer(b, pool, *ttiTemplate)
	ctx := timeout(b, 30*time.Minute)
	if pool > 0 {
		s.waitPool(pool, 5*time.Minute, nil)
	}
	var ttis, creates, execs durations
	hits, tries := 0, 0
	once := func() {
		if wait {
			s.waitPool(pool, 5*time.Minute, nil)
		}
		if pool > 0 {
			tries++
			if s.ready() > 0 {
				hits++
			}
		}
		b.StartTimer()
		t0 := time.Now()
		sb := s.create(ctx, "small")
		t1 := time.Now()
		res, err := sb.Exec(ctx, *ttiCommand, orkestr.ExecOptions{})
		t2 := time.Now()
		b.StopTimer()
		if err != nil {
			b.Fatalf("exec: %v", err)
		}
		if err := checkTTI(res); err != nil {
			b.Fatal(err)
		}
		s.terminate(sb)
		ttis.add(t2.Sub(t0))
		creates.add(t1.Sub(t0))
		execs.add(t2.Sub(t1))
	}
	b.StopTimer()
	once() // warm-up: connection, page cache
	ttis, creates, execs = nil, nil, nil
	hits, tries = 0, 0
	b.StartTimer()
	for b.Loop() {
		b.StopTimer()
		once()
		b.StartTimer()
	}
	ttis.report(b, "p50-ms")
	ttis.reportQuantile(b, 0.9, "p90-ms")
	creates.report(b, "create-ms")
	execs.report(b, "exec-ms")
	if tries > 0 {
		b.ReportMetric(100*float64(hits)/float64(tries), "pool-hit-%")
	}
}

// BenchmarkAPIBurstTTI fills a pool of -api.burst (100) warm sandboxes,
// waits until /healthz shows all of them ready (untimed; fill-s is how long
// the first fill took), then starts that many clients at once, each doing
// create → exec `node -v` (node-22). One iteration is one burst:
// p50/p95/max-ms are per-client TTIs, wall-ms is until the last client has
// its result. The pool starts refilling (several cold starts at a time,
// pool.HostStarts) as soon as the first claim empties a slot, so the refill
// competes with the burst as it would in production; refilled is how many warm sandboxes the pool
// held again right after the burst. host-cpu-ms/sbx is the CPU time the
// whole host was busy during the burst per sandbox (the client, orkestrd,
// every runsc process, the kernel), server-cpu-ms/sbx orkestrd's share. The
// sandboxes are deleted untimed. With -api.base-rev it runs once for
// orkestrd built from that revision (build=base), then for this checkout's.
func BenchmarkAPIBurstTTI(b *testing.B) { forBuilds(b, benchBurstTTI) }

func benchBurstTTI(b *testing.B) {
	n := *burstSize
	s := startServer(b, n, *ttiTemplate)
	ctx := timeout(b, 60*time.Minute)
	t0 := time.Now()
	s.waitPool(n, 15*time.Minute, func(r int) {
		if r%25 == 0 || r == n {
			b.Logf("pool %d/%d after %v", r, n, time.Since(t0).Round(time.Millisecond))
		}
	})
	fill := time.Since(t0)
	var ttis, creates, execs, walls durations
	var hostCPU, srvCPU, refilled samples
	for b.Loop() {
		b.StopTimer()
		s.waitPool(n, 15*time.Minute, nil)
		sbs := make([]*orkestr.Sandbox, n)
		tti := make([]time.Duration, n)
		cr := make([]time.Duration, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				t0 := time.Now()
				sb, err := s.client.CreateSandbox(ctx, orkestr.CreateParams{Template: s.template})
				if err != nil {
					errs[i] = fmt.Errorf("create: %w", err)
					return
				}
				sbs[i] = sb
				t1 := time.Now()
				res, err := sb.Exec(ctx, *ttiCommand, orkestr.ExecOptions{})
				if err == nil {
					err = checkTTI(res)
				}
				if err != nil {
					errs[i] = fmt.Errorf("exec: %w", err)
					return
				}
				tti[i], cr[i] = time.Since(t0), t1.Sub(t0)
			}()
		}
		time.Sleep(50 * time.Millisecond) // let every goroutine reach the barrier
		perfWait := func() {}
		if *perfBurst != "" && len(walls) == 0 {
			perfWait = perfRecord(b, *perfBurst, 5*time.Second, "-a")
			time.Sleep(100 * time.Millisecond) // perf attaches
		}
		h0, sc0 := hostBusy(), serverCPUTime(b, s)
		b.StartTimer()
		w0 := time.Now()
		close(start)
		wg.Wait()
		wall := time.Since(w0)
		b.StopTimer()
		h1, sc1 := hostBusy(), serverCPUTime(b, s)
		refilled.add(float64(s.ready()))
		perfWait()
		hostCPU.add(float64(h1-h0) / 1e6 / float64(n))
		srvCPU.add(float64(sc1-sc0) / 1e6 / float64(n))
		terr := s.terminateAll(sbs)
		for _, err := range append(errs, terr) {
			if err != nil {
				b.Fatal(err)
			}
		}
		walls.add(wall)
		for i := range n {
			ttis.add(tti[i])
			creates.add(cr[i])
			execs.add(tti[i] - cr[i])
		}
		b.StartTimer()
	}
	ttis.report(b, "p50-ms")
	ttis.reportQuantile(b, 0.95, "p95-ms")
	ttis.reportQuantile(b, 1, "max-ms")
	walls.report(b, "wall-ms")
	creates.report(b, "create-ms")
	execs.report(b, "exec-ms")
	b.ReportMetric(fill.Seconds(), "fill-s")
	b.ReportMetric(hostCPU.median(), "host-cpu-ms/sbx")
	b.ReportMetric(srvCPU.median(), "server-cpu-ms/sbx")
	b.ReportMetric(refilled.median(), "refilled")
}

func serverCPUTime(b *testing.B, s *apiServer) time.Duration {
	d, err := cpuTime(s.pid())
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// BenchmarkAPIExec is POST /v1/sandboxes/{id}/exec of `true` back to back
// on one running sandbox, through the SDK: the HTTP-level ExecRoundTrip.
// size=small is 0.5 vCPU (as ExecRoundTrip/cpu=0.5), medium 2 vCPUs.
func BenchmarkAPIExec(b *testing.B) { benchAPIExec(b, 0) }

// BenchmarkAPIExecSpaced is BenchmarkAPIExec with 100 ms of untimed idle
// before each call, as ExecSpaced.
func BenchmarkAPIExecSpaced(b *testing.B) { benchAPIExec(b, 100*time.Millisecond) }

func benchAPIExec(b *testing.B, gap time.Duration) {
	s := startServer(b, 0, templateName)
	for _, size := range []string{"small", "medium"} {
		b.Run("size="+size, func(b *testing.B) {
			ctx := timeout(b, 10*time.Minute)
			sb := s.create(ctx, size)
			b.Cleanup(func() { s.terminate(sb) })
			run := func() *orkestr.ExecResult {
				res, err := sb.Exec(ctx, "true", orkestr.ExecOptions{})
				if err != nil {
					b.Fatalf("exec: %v", err)
				}
				if res.ExitCode != 0 {
					b.Fatalf("exec true: exit %d", res.ExitCode)
				}
				return res
			}
			for range 5 {
				run()
			}
			var ds, gets durations
			var inAgent int64
			for b.Loop() {
				if gap > 0 {
					// A GET of the same sandbox, equally spaced and
					// untimed, is the baseline: what HTTP, auth and the
					// store cost without the sandbox.
					b.StopTimer()
					time.Sleep(gap / 2)
					t0 := time.Now()
					if err := sb.Refresh(ctx); err != nil {
						b.Fatalf("get: %v", err)
					}
					gets.add(time.Since(t0))
					time.Sleep(gap / 2)
					b.StartTimer()
				}
				t0 := time.Now()
				res := run()
				ds.add(time.Since(t0))
				inAgent += res.DurationMS
			}
			ds.report(b, "p50-ms")
			ds.reportQuantile(b, 0.9, "p90-ms")
			if gap > 0 {
				gets.report(b, "get-p50-ms")
			}
			// duration_ms (the agent's own timing) is in whole,
			// truncated milliseconds; the mean keeps some resolution.
			b.ReportMetric(float64(inAgent)/float64(b.N), "in-agent-ms")
		})
	}
}

// BenchmarkAPIGetThroughput is GET /v1/sandboxes/{id} of one running
// sandbox from -api.get-clients (64) goroutines over keep-alive
// connections. One iteration is -api.get-window (3 s) of load after 0.5 s
// of warm-up at full load: req/s is responses completed in the window,
// p50/p90/p99-ms their latencies, server-cpu-us/req and client-cpu-us/req
// the CPU time orkestrd and this process used per response (they share the
// cores: the server could do at most cores/server-cpu per second).
func BenchmarkAPIGetThroughput(b *testing.B) {
	s := startServer(b, 0, templateName)
	ctx := timeout(b, 10*time.Minute)
	sb := s.create(ctx, "small")
	b.Cleanup(func() { s.terminate(sb) })
	url := s.url + "/v1/sandboxes/" + sb.ID
	hc := &http.Client{Transport: &http.Transport{
		MaxIdleConns: 2 * *getClients, MaxIdleConnsPerHost: 2 * *getClients, DisableCompression: true,
	}}
	b.Cleanup(hc.CloseIdleConnections)
	auth := "Bearer " + s.key
	get := func() error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("Authorization", auth)
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET: %s", resp.Status)
		}
		return err
	}
	if err := get(); err != nil {
		b.Fatal(err)
	}
	var rates, serverCPU, clientCPU samples
	var lat durations
	perfDone := *perfOut == ""
	for b.Loop() {
		b.StopTimer()
		var stop atomic.Bool
		type rec struct{ end, d time.Duration }
		recs := make([][]rec, *getClients)
		errc := make(chan error, *getClients)
		var wg sync.WaitGroup
		base := time.Now()
		for c := range *getClients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					t0 := time.Now()
					if err := get(); err != nil {
						errc <- err
						return
					}
					t1 := time.Now()
					recs[c] = append(recs[c], rec{t1.Sub(base), t1.Sub(t0)})
				}
			}()
		}
		time.Sleep(500 * time.Millisecond)
		perfWait := func() {}
		if !perfDone {
			perfDone = true
			perfWait = perfRecord(b, *perfOut, *getWindow, "-p", strconv.Itoa(s.pid()))
		}
		sc0 := serverCPUTime(b, s)
		cc0 := selfCPU()
		w0 := time.Since(base)
		b.StartTimer()
		time.Sleep(*getWindow)
		b.StopTimer()
		w1 := time.Since(base)
		sc1 := serverCPUTime(b, s)
		cc1 := selfCPU()
		stop.Store(true)
		wg.Wait()
		perfWait()
		select {
		case err := <-errc:
			b.Fatal(err)
		default:
		}
		n := 0
		for _, rs := range recs {
			for _, r := range rs {
				if r.end >= w0 && r.end < w1 {
					n++
					lat.add(r.d)
				}
			}
		}
		if n == 0 {
			b.Fatal("no GET completed in the window")
		}
		rates.add(float64(n) / (w1 - w0).Seconds())
		serverCPU.add(float64(sc1-sc0) / 1e3 / float64(n))
		clientCPU.add(float64(cc1-cc0) / 1e3 / float64(n))
		b.StartTimer()
	}
	b.ReportMetric(rates.median(), "req/s")
	lat.report(b, "p50-ms")
	lat.reportQuantile(b, 0.9, "p90-ms")
	lat.reportQuantile(b, 0.99, "p99-ms")
	b.ReportMetric(serverCPU.median(), "server-cpu-us/req")
	b.ReportMetric(clientCPU.median(), "client-cpu-us/req")
}
