package bench

import (
	"fmt"
	"strings"
	"testing"
	"time"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

// BenchmarkAPITTIRow is the "20 creates in a row": with the default
// warm pool of 2 (which follows demand up to pool_max 8), one iteration is
// 20 create → `node -v` (node-22) one after another, each sandbox deleted
// untimed right after. The pool is not waited for, so later iterations show
// what the grown pool sustains. It reports the p50 and p95 TTI of the
// iteration's creates, their ratio, pool-hit-% (creates that found a warm
// sandbox, from /healthz just before), the highest target the pool grew to
// (peak-target, 0: it did not grow) and row-ms, the sum of the 20 TTIs.
//
// demand=off is the baseline in the same invocation: pool_max 0, the pool
// stays at 2. refill=waited is the floor: the fixed pool of 2, and each
// create waits (untimed) until it is full again.
//
// With -api.base-rev each runs once for orkestrd built from that revision
// (build=base) and once for this checkout's (build=head).
func BenchmarkAPITTIRow(b *testing.B) {
	forBuilds(b, func(b *testing.B) {
		b.Run("demand=off", func(b *testing.B) { benchTTIRow(b, "pool_max: 0\n", false) })
		b.Run("demand=on", func(b *testing.B) { benchTTIRow(b, "", false) })
		if serverBuild != "base" {
			b.Run("refill=waited", func(b *testing.B) { benchTTIRow(b, "pool_max: 0\n", true) })
		}
	})
}

// benchTTIRow runs the rows; with waitRefill each create waits (untimed)
// until the pool is full again, so every create is warm and no refill runs
// beside it: the floor a pool can reach on the host at that time.
func benchTTIRow(b *testing.B, extraConfig string, waitRefill bool) {
	const row = 20
	s := startServerWith(b, 2, *ttiTemplate, extraConfig)
	ctx := timeout(b, 30*time.Minute)
	s.waitPool(2, 5*time.Minute, nil)
	var p50, p95, ratio, hitPct, rowMs, targets samples
	for b.Loop() {
		var ttis durations
		hits := 0
		for range row {
			b.StopTimer()
			if waitRefill {
				s.waitPool(2, 5*time.Minute, nil)
			}
			if s.ready() > 0 {
				hits++
			}
			b.StartTimer()
			t0 := time.Now()
			sb := s.create(ctx, "small")
			res, err := sb.Exec(ctx, *ttiCommand, orkestr.ExecOptions{})
			d := time.Since(t0)
			b.StopTimer()
			if err != nil {
				b.Fatalf("exec: %v", err)
			}
			if err := checkTTI(res); err != nil {
				b.Fatal(err)
			}
			s.terminate(sb)
			ttis.add(d)
			b.StartTimer()
		}
		b.StopTimer()
		var sum time.Duration
		for _, d := range ttis {
			sum += d
		}
		rowMs.add(float64(sum) / 1e6)
		targets.add(float64(s.peakPoolTarget()))
		b.StartTimer()
		m, q := ttis.median(), ttis.quantile(0.95)
		p50.add(float64(m) / 1e6)
		p95.add(float64(q) / 1e6)
		ratio.add(float64(q) / float64(m))
		hitPct.add(100 * float64(hits) / row)
		b.Logf("row: p50 %v, p95 %v, pool hits %d of %d; TTIs in order (ms): %s", m, q, hits, row, ttis.msList())
	}
	b.ReportMetric(p50.median(), "p50-ms")
	b.ReportMetric(p95.median(), "p95-ms")
	b.ReportMetric(ratio.median(), "p95/p50")
	b.ReportMetric(hitPct.median(), "pool-hit-%")
	b.ReportMetric(rowMs.median(), "row-ms")
	b.ReportMetric(targets.median(), "peak-target")
}

// quantile is the nearest-rank q-quantile.
func (ds durations) quantile(q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append(durations(nil), ds...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// msList is the durations in order, in whole milliseconds.
func (ds durations) msList() string {
	var sb strings.Builder
	for i, d := range ds {
		if i > 0 {
			sb.WriteByte(' ')
		}
		fmt.Fprintf(&sb, "%d", d.Milliseconds())
	}
	return sb.String()
}
