package api

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
)

func num(t *testing.T, m map[string]any, path ...string) float64 {
	t.Helper()
	var cur any = m
	for _, p := range path {
		mm, ok := cur.(map[string]any)
		if !ok {
			t.Fatalf("%v: %s is not an object in %v", path, p, m)
		}
		cur = mm[p]
	}
	f, ok := cur.(float64)
	if !ok {
		t.Fatalf("%v is %v, not a number, in %v", path, cur, m)
	}
	return f
}

// waitFor polls cond every 200 ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestLiveMetricsAndMetering runs real sandboxes and checks what the
// sampler reads and what the meter accrues: a busy loop at its 0.5-vCPU
// allocation, a 200 MB allocation, nothing at all while paused, and
// per-sandbox usage that adds up exactly to the account's and to
// /v1/limits.
func TestLiveMetricsAndMetering(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("meter", "team")

	id := h.create(key)
	t0 := time.Now()
	h.exec(key, id, "setsid sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 & echo $! > /tmp/busy.pid")

	// CPU: the loop pegs its 0.5 cores, i.e. 100 % of the allocation. On
	// a host busy with other work a second may give it less than its
	// quota, so this waits for a reading taken while the host had room;
	// no reading may ever exceed the quota by more than the lumpiness of
	// CFS periods and the burst of one period's quota saved before.
	var m map[string]any
	waitFor(t, 30*time.Second, "a reading of the busy loop at ≈100 %", func() bool {
		m = h.do("GET", "/v1/sandboxes/"+id+"/metrics", key, nil).json(t)
		for _, s := range m["samples"].([]any) {
			// CFS periods make a 1 s reading lumpy by up to one period
			// (50 ms of 500) and the burst may add one period's quota
			// once: 120 %; samples cover ≥ 0.5 s, 140 %.
			if p := s.(map[string]any)["cpu_percent"].(float64); p > 145 {
				t.Fatalf("a 0.5-vCPU sandbox read %.1f %% of its allocation: %v", p, m)
			}
		}
		if m["cpu"] == nil {
			return false
		}
		// One reading may land a CFS period high or low; the loop must
		// settle at its allocation.
		pct := num(t, m, "cpu", "usage_percent")
		return pct >= 90 && pct <= 110
	})
	cores := num(t, m, "cpu", "usage_cores")
	t.Logf("busy loop: cpu %v", m["cpu"])
	if pct := num(t, m, "cpu", "usage_percent"); pct > 110 || cores < 0.45 || cores > 0.55 || num(t, m, "cpu", "cores") != 0.5 {
		t.Fatalf("a busy loop in a 0.5-vCPU sandbox should read ≈100 %% and ≈0.5 cores: %v", m["cpu"])
	}
	if lim := num(t, m, "memory", "limit_bytes"); lim != 512<<20 {
		t.Fatalf("memory limit %v, want 512 MiB", lim)
	}
	h.exec(key, id, "kill $(cat /tmp/busy.pid)")

	// Memory: 200 MB written to the sandbox's tmpfs is in the working set.
	before := num(t, m, "memory", "usage_bytes")
	h.exec(key, id, "head -c 209715200 /dev/zero > /tmp/blob")
	var after float64
	waitFor(t, 10*time.Second, "200 MB in usage_bytes", func() bool {
		m = h.do("GET", "/v1/sandboxes/"+id+"/metrics", key, nil).json(t)
		after = num(t, m, "memory", "usage_bytes")
		return after-before >= 190<<20
	})
	t.Logf("memory: usage_bytes %.0f MiB before, %.0f MiB after writing 200 MiB (%.1f %%)", before/(1<<20), after/(1<<20), num(t, m, "memory", "usage_percent"))
	if after > 512<<20 {
		t.Fatalf("usage_bytes %v is above the limit", after)
	}

	// A second sandbox of the same account, for the sums.
	id2 := h.create(key)

	// Pause: the metrics go quiet and exactly nothing accrues for 10 s.
	if r := h.do("POST", "/v1/sandboxes/"+id+"/pause", key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	ranFor := time.Since(t0)
	pm := h.do("GET", "/v1/sandboxes/"+id+"/metrics", key, nil).json(t)
	if pm["cpu"] != nil || pm["memory"] != nil || len(pm["samples"].([]any)) != 0 || pm["sandbox_status"] != "paused" {
		t.Fatalf("metrics while paused: %v", pm)
	}
	life := pm["lifetime"].(map[string]any)
	run := life["running_seconds"].(float64)
	t.Logf("paused after %v: lifetime %v", ranFor, life)
	if run < ranFor.Seconds()-3 || run > ranFor.Seconds()+1 {
		t.Fatalf("lifetime running_seconds %v after running %v", run, ranFor)
	}
	if life["mem_mb_seconds"].(float64) != 512*run {
		t.Fatalf("mem_mb_seconds %v, want 512 MB × %v s", life["mem_mb_seconds"], run)
	}
	if cpu := life["cpu_seconds"].(float64); cpu < 1 || cpu > 0.5*ranFor.Seconds()+0.5 {
		t.Fatalf("lifetime cpu_seconds %v after a ~4 s busy loop at 0.5 cores", cpu)
	}
	usage1, _ := h.store.SandboxUsage(context.Background(), accountOf(t, h, key), id)
	time.Sleep(10 * time.Second)
	usage2, _ := h.store.SandboxUsage(context.Background(), accountOf(t, h, key), id)
	pm2 := h.do("GET", "/v1/sandboxes/"+id+"/metrics", key, nil).json(t)
	if fmt.Sprint(pm2["lifetime"]) != fmt.Sprint(life) || usage1 != usage2 || usage1.IsZero() {
		t.Fatalf("a paused sandbox accrued: lifetime %v → %v, store %+v → %+v", life, pm2["lifetime"], usage1, usage2)
	}

	// Resume: it accrues again from where it was.
	if r := h.do("POST", "/v1/sandboxes/"+id+"/resume", key, nil); r.status != 200 {
		t.Fatalf("resume: %d %s", r.status, r.body)
	}
	time.Sleep(2500 * time.Millisecond)
	for _, sb := range []string{id, id2} {
		if r := h.do("DELETE", "/v1/sandboxes/"+sb, key, nil); r.status != 200 {
			t.Fatalf("delete: %d %s", r.status, r.body)
		}
	}
	final := h.do("GET", "/v1/sandboxes/"+id+"/metrics", key, nil).json(t)["lifetime"].(map[string]any)
	if final["running_seconds"].(float64) < run+1 {
		t.Fatalf("after resuming for 2.5 s: lifetime %v, before the pause %v", final, life)
	}

	// The sums: per sandbox = account total = /v1/limits, per hour and per
	// day, JSON and CSV; each sandbox's usage is its lifetime.
	lim := h.do("GET", "/v1/limits", key, nil).json(t)
	for _, gran := range []string{"hour", "day"} {
		start := time.Now().UTC().Truncate(24 * time.Hour)
		if gran == "hour" {
			start = time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)
		}
		q := url.Values{"granularity": {gran}, "from": {start.Format(time.RFC3339)}, "to": {start.Add(48 * time.Hour).Format(time.RFC3339)}}
		u := h.do("GET", "/v1/usage?"+q.Encode(), key, nil).json(t)
		var sum store.Usage
		for _, s := range u["sandboxes"].([]any) {
			sm := s.(map[string]any)
			su := store.Usage{MemMBSeconds: int64(sm["mem_mb_seconds"].(float64)), CPUMS: int64(sm["cpu_ms"].(float64)), RunningSeconds: int64(sm["running_seconds"].(float64))}
			sum = sum.Add(su)
			lt := h.do("GET", "/v1/sandboxes/"+sm["sandbox_id"].(string)+"/metrics", key, nil).json(t)["lifetime"].(map[string]any)
			if lt["mem_mb_seconds"].(float64) != float64(su.MemMBSeconds) || lt["running_seconds"].(float64) != float64(su.RunningSeconds) ||
				lt["cpu_seconds"].(float64) != round(float64(su.CPUMS)/1000, 2) {
				t.Fatalf("%s: lifetime %v, usage %+v", sm["sandbox_id"], lt, su)
			}
		}
		var periods store.Usage
		for _, p := range u["periods"].([]any) {
			pm := p.(map[string]any)
			periods = periods.Add(store.Usage{MemMBSeconds: int64(pm["mem_mb_seconds"].(float64)), CPUMS: int64(pm["cpu_ms"].(float64)), RunningSeconds: int64(pm["running_seconds"].(float64))})
		}
		tot := u["total"].(map[string]any)
		want := store.Usage{MemMBSeconds: int64(tot["mem_mb_seconds"].(float64)), CPUMS: int64(tot["cpu_ms"].(float64)), RunningSeconds: int64(tot["running_seconds"].(float64))}
		if len(u["sandboxes"].([]any)) != 2 || sum != want || periods != want || want.IsZero() {
			t.Fatalf("%s: sandboxes sum to %+v, periods to %+v, total %+v: %v", gran, sum, periods, want, u)
		}
		if tot["gb_hours"] != lim["usage_gb_hours_used"] || tot["cpu_hours"] != lim["usage_cpu_hours_used"] {
			t.Fatalf("%s: total %v, limits used %v GB-h, %v CPU-h", gran, tot, lim["usage_gb_hours_used"], lim["usage_cpu_hours_used"])
		}
		r := h.do("GET", "/v1/usage?"+q.Encode(), key, nil, "Accept", "text/csv")
		recs, err := csv.NewReader(strings.NewReader(string(r.body))).ReadAll()
		if err != nil || !strings.HasPrefix(r.header.Get("Content-Type"), "text/csv") || len(recs) < 3 ||
			strings.Join(recs[0], ",") != "period_start,period_end,sandbox_id,mem_mb_seconds,cpu_ms,running_seconds" {
			t.Fatalf("%s CSV: %v %v %q", gran, err, r.header, r.body)
		}
		var csvSum store.Usage
		for _, rec := range recs[1:] {
			a, _ := strconv.ParseInt(rec[3], 10, 64)
			b, _ := strconv.ParseInt(rec[4], 10, 64)
			c, _ := strconv.ParseInt(rec[5], 10, 64)
			csvSum = csvSum.Add(store.Usage{MemMBSeconds: a, CPUMS: b, RunningSeconds: c})
		}
		if csvSum != want {
			t.Fatalf("%s CSV sums to %+v, JSON total %+v", gran, csvSum, want)
		}
	}
	t.Logf("limits: %v GB-h, %v CPU-h used", lim["usage_gb_hours_used"], lim["usage_cpu_hours_used"])
}

func accountOf(t *testing.T, h *harness, key string) string {
	t.Helper()
	return h.do("GET", "/v1/usage", key, nil).json(t)["account_id"].(string)
}

// TestUsageExhaustedUntilReset: once the month's GB-hours are used, create
// and resume are refused with 402 usage_exhausted (running sandboxes keep
// running) until the clock reaches the 1st of next month.
func TestUsageExhaustedUntilReset(t *testing.T) {
	cfg := testConfig()
	p := cfg.Plans["free"]
	p.UsageGBHoursIncluded = 0.0005 // 1843.2 MB·s: a small sandbox for 3.6 s
	p.UsageCPUHoursIncluded = 0
	p.MaxConcurrent, p.SnapshotCap = 5, 5
	cfg.Plans["free"] = p
	h := newHarness(t, cfg, true)
	_, key := h.account("tiny", "free")

	a := h.create(key)
	waitFor(t, 30*time.Second, "the GB-hours to run out", func() bool {
		l := h.do("GET", "/v1/limits", key, nil).json(t)
		return num(t, l, "usage_gb_hours_used") >= 0.0005
	})
	l := h.do("GET", "/v1/limits", key, nil).json(t)
	resets := l["usage_resets_at"].(string)
	wantReset := monthStart(h.clock.Now()).AddDate(0, 1, 0)
	if resets != fmtTime(wantReset) {
		t.Fatalf("usage_resets_at %s, want %s", resets, fmtTime(wantReset))
	}
	r := h.do("POST", "/v1/sandboxes", key, map[string]any{"template": "debian-12"})
	if r.status != 402 || r.code() != "usage_exhausted" || r.json(t)["error"].(map[string]any)["details"].(map[string]any)["resets_at"] != resets {
		t.Fatalf("create with the budget used: %d %s", r.status, r.body)
	}
	// The running sandbox is not touched.
	if out := h.exec(key, a, "echo still"); out != "still\n" {
		t.Fatalf("exec in the running sandbox: %q", out)
	}
	if r := h.do("POST", "/v1/sandboxes/"+a+"/pause", key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	if r := h.do("POST", "/v1/sandboxes/"+a+"/resume", key, nil); r.status != 402 || r.code() != "usage_exhausted" {
		t.Fatalf("resume with the budget used: %d %s", r.status, r.body)
	}

	// The 1st of next month, 00:00:01 UTC: a fresh budget.
	h.clock.JumpTo(wantReset.Add(time.Second))
	l = h.do("GET", "/v1/limits", key, nil).json(t)
	if num(t, l, "usage_gb_hours_used") != 0 || l["usage_resets_at"] != fmtTime(wantReset.AddDate(0, 1, 0)) {
		t.Fatalf("limits after the reset: %v", l)
	}
	if r := h.do("POST", "/v1/sandboxes/"+a+"/resume", key, nil); r.status != 200 {
		t.Fatalf("resume after the reset: %d %s", r.status, r.body)
	}
	b := h.create(key)
	// Both now accrue into the new month's buckets.
	time.Sleep(2500 * time.Millisecond)
	for _, id := range []string{a, b} {
		h.do("DELETE", "/v1/sandboxes/"+id, key, nil)
	}
	l = h.do("GET", "/v1/limits", key, nil).json(t)
	if num(t, l, "usage_gb_hours_used") <= 0 {
		t.Fatalf("no usage in the new month: %v", l)
	}
	u := h.do("GET", "/v1/usage?granularity=hour&from="+url.QueryEscape(fmtTime(wantReset))+"&to="+url.QueryEscape(fmtTime(wantReset.Add(24*time.Hour))), key, nil).json(t)
	if u["total"].(map[string]any)["gb_hours"] != l["usage_gb_hours_used"] || u["periods"].([]any)[0].(map[string]any)["start"] != fmtTime(wantReset) {
		t.Fatalf("new month's usage %v, limits %v", u, l)
	}
}

// TestUsageHostileInput: /v1/usage validates every parameter and shows
// only the caller's account.
func TestUsageHostileInput(t *testing.T) {
	h := newHarness(t, testConfig(), false)
	acctA, keyA := h.account("a", "team")
	_, keyB := h.account("b", "team")
	ctx := context.Background()
	now := time.Now().UTC()
	sb := store.Sandbox{ID: newSandboxID(), AccountID: acctA.ID, Status: store.StatusTerminated, Template: "debian-12", Size: "small",
		CPU: 0.5, MemoryMB: 512, Network: "off", Region: "fsn1", TimeoutSeconds: 60, CreatedAt: now, UpdatedAt: now}
	if err := h.store.CreateSandbox(ctx, sb, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.store.AddUsage(ctx, []store.UsageDelta{{SandboxID: sb.ID, AccountID: acctA.ID, HourStart: now.Truncate(time.Hour),
		Usage: store.Usage{MemMBSeconds: 512 * 7, CPUMS: 1234, RunningSeconds: 7}}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ query, field string }{
		{"granularity=week", "granularity"},
		{"granularity=", "granularity"}, // empty is a mistake, not the default (docs/api.md, One contract)
		{"format=xml", "format"},
		{"from=yesterday", "from"},
		{"from=2026-13-01", "from"},
		{"from=" + url.QueryEscape("2026-11-01T00:00:00+25:00"), "from"},
		{"from=" + strings.Repeat("9", 100), "from"},
		{"from=" + url.QueryEscape("2026-11-01T10:30:00Z") + "&granularity=hour", "from"},
		{"from=" + url.QueryEscape("2026-11-01T10:00:00Z"), "from"}, // not a whole day
		{"from=2026-11-02&to=2026-11-01", "to"},
		{"from=2026-11-01&to=2026-11-01", "to"},
		{"from=2000-01-01&to=2026-01-01", "to"},
		{"granularity=hour&from=2026-01-01&to=2026-03-01", "to"},
		{"from=1969-12-01&to=1970-01-01", "from"},
		{"from=9999-12-31&to=" + url.QueryEscape("9999-12-31T23:00:00Z"), "to"},
		{"from=0001-01-01", "from"},
		{"to=" + url.QueryEscape("2026-11-01T00:00:00.5Z"), "to"},
	} {
		r := h.do("GET", "/v1/usage?"+c.query, keyA, nil)
		if c.field == "" {
			if r.status != 200 {
				t.Errorf("%s: %d %s", c.query, r.status, r.body)
			}
			continue
		}
		m := r.json(t)
		if r.status != 400 || r.code() != "invalid_request" || m["error"].(map[string]any)["details"].(map[string]any)["field"] != c.field {
			t.Errorf("%s: %d %s, want 400 invalid_request on %s", c.query, r.status, r.body, c.field)
		}
	}
	// Both formats; tenancy: B sees none of A's usage.
	q := "granularity=hour&from=" + url.QueryEscape(fmtTime(now.Truncate(time.Hour))) + "&to=" + url.QueryEscape(fmtTime(now.Truncate(time.Hour).Add(time.Hour)))
	a := h.do("GET", "/v1/usage?"+q, keyA, nil).json(t)
	if a["total"].(map[string]any)["mem_mb_seconds"] != 3584.0 || a["sandboxes"].([]any)[0].(map[string]any)["sandbox_id"] != sb.ID {
		t.Fatalf("A's usage: %v", a)
	}
	b := h.do("GET", "/v1/usage?"+q, keyB, nil).json(t)
	if b["total"].(map[string]any)["mem_mb_seconds"] != 0.0 || len(b["sandboxes"].([]any)) != 0 || len(b["periods"].([]any)) != 0 {
		t.Fatalf("B sees usage: %v", b)
	}
	if r := h.do("GET", "/v1/usage?format=csv&"+q, keyB, nil); r.status != 200 || strings.Count(string(r.body), "\n") != 1 {
		t.Fatalf("B's CSV: %d %q", r.status, r.body)
	}
	if r := h.do("GET", "/v1/sandboxes/"+sb.ID+"/metrics", keyB, nil); r.status != 404 {
		t.Fatalf("B reads A's metrics: %d %s", r.status, r.body)
	}
	if r := h.do("GET", "/v1/usage", "ork_"+strings.Repeat("x", 43), nil); r.status != 401 {
		t.Fatalf("usage without a valid key: %d", r.status)
	}
	lim := h.do("GET", "/v1/limits", keyA, nil).json(t)
	if lim["usage_gb_hours_used"] != round(3584.0/3686400, 6) {
		t.Fatalf("limits: %v", lim)
	}
}

// TestOperatorMetrics scrapes the Prometheus handler: sandboxes by status
// from the store, latency histograms labelled by outcome.
func TestOperatorMetrics(t *testing.T) {
	h := newHarness(t, testConfig(), false)
	acct, key := h.account("ops", "team")
	now := time.Now().UTC()
	for _, st := range []store.Status{store.StatusRunning, store.StatusPaused, store.StatusPaused} {
		sb := store.Sandbox{ID: newSandboxID(), AccountID: acct.ID, Status: st, Template: "debian-12", Size: "small",
			CPU: 0.5, MemoryMB: 512, Network: "off", Region: "fsn1", TimeoutSeconds: 60, CreatedAt: now, UpdatedAt: now}
		if err := h.store.CreateSandbox(context.Background(), sb, 0); err != nil {
			t.Fatal(err)
		}
	}
	if r := h.do("POST", "/v1/sandboxes", key, map[string]any{"template": "no-such"}); r.code() != "unknown_template" {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	if r := h.do("POST", "/v1/sandboxes/sbx_01HXYZ7K9Q4R2M8N5P3T6V1W0A/exec", key, map[string]any{"command": "true"}); r.status != 404 {
		t.Fatalf("exec: %d %s", r.status, r.body)
	}
	srv := httptest.NewServer(h.srv.MetricsHandler())
	defer srv.Close()
	res, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	text := string(b)
	for _, line := range []string{
		`orkestr_sandboxes{status="running"} 1`,
		`orkestr_sandboxes{status="paused"} 2`,
		`orkestr_sandboxes{status="terminated"} 0`,
		`orkestr_store_up 1`,
		`orkestr_sandbox_create_seconds_count{outcome="unknown_template"} 1`,
		`orkestr_exec_seconds_count{mode="sync",outcome="sandbox_not_found"} 1`,
	} {
		if !strings.Contains(text, "\n"+line+"\n") {
			t.Errorf("/metrics lacks %q", line)
		}
	}
	if !strings.HasPrefix(res.Header.Get("Content-Type"), "text/plain") || t.Failed() {
		t.Fatalf("Content-Type %q; /metrics:\n%s", res.Header.Get("Content-Type"), text)
	}
}
