package orkestr

import (
	"context"
	"net/http"
	"reflect"
	"testing"
	"time"
)

func TestLimitsDecode(t *testing.T) {
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/limits" {
			t.Errorf("path %s", r.URL.Path)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"plan": "free", "allowed_sizes": ["small"], "max_concurrent": 1, "snapshot_cap": 1,
 "usage_gb_hours_used": 2.5, "usage_gb_hours_included": 10.0,
 "usage_cpu_hours_used": 0.42, "usage_cpu_hours_included": 2.0,
 "usage_resets_at": "2026-12-01T00:00:00.000Z",
 "sizes": [{"size": "small", "cpu": 0.5, "memory_mb": 512, "allowed": true},
           {"size": "medium", "cpu": 2, "memory_mb": 4096, "allowed": false}]}`))
	})
	l, err := c.Limits(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{
		Plan: "free", AllowedSizes: []string{"small"}, MaxConcurrent: 1, SnapshotCap: 1,
		UsageGBHoursUsed: 2.5, UsageGBHoursIncluded: 10, UsageCPUHoursUsed: 0.42, UsageCPUHoursIncluded: 2,
		UsageResetsAt: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
		Sizes:         []SizeInfo{{"small", 0.5, 512, true}, {"medium", 2, 4096, false}},
	}
	if !reflect.DeepEqual(*l, want) {
		t.Errorf("limits = %+v\nwant     %+v", *l, want)
	}
	if !l.SizeAllowed("small") || l.SizeAllowed("medium") {
		t.Error("SizeAllowed")
	}
}

func TestTemplatesDecode(t *testing.T) {
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"data": []any{
			map[string]any{"name": "python-3.12", "description": "CPython 3.12", "default": true},
			map[string]any{"name": "node-22", "description": "Node 22", "default": false, "built": true},
		}})
	})
	got, err := c.Templates(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []Template{{"python-3.12", "CPython 3.12", true}, {"node-22", "Node 22", false}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("templates = %+v", got)
	}
}

func TestMetricsDecode(t *testing.T) {
	var since string
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		since = r.URL.Query().Get("since")
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/v1/sandboxes/sbx_paused/metrics" {
			_, _ = w.Write([]byte(`{"sandbox_id": "sbx_paused", "sandbox_status": "paused", "sample_interval_seconds": 1,
 "cpu": null, "memory": null,
 "lifetime": {"cpu_seconds": 3.5, "mem_mb_seconds": 1024, "running_seconds": 2}, "samples": []}`))
			return
		}
		_, _ = w.Write([]byte(`{"sandbox_id": "sbx_1", "sandbox_status": "running", "sample_interval_seconds": 1,
 "cpu": {"cores": 2, "usage_cores": 0.94, "usage_percent": 47.0},
 "memory": {"limit_bytes": 4294967296, "usage_bytes": 1879048192, "usage_percent": 43.7},
 "lifetime": {"cpu_seconds": 1284.31, "mem_mb_seconds": 90112, "running_seconds": 2710},
 "samples": [{"t": "2026-05-01T10:00:00.000Z", "cpu_percent": 47.0, "mem_bytes": 1879048192}]}`))
	})
	ctx := context.Background()
	since0 := time.Date(2026, 5, 1, 9, 59, 0, 500e6, time.FixedZone("CEST", 7200))
	m, err := c.Sandbox("sbx_1").Metrics(ctx, &since0)
	if err != nil {
		t.Fatal(err)
	}
	if since != "2026-05-01T07:59:00.5Z" {
		t.Errorf("since = %q, want UTC RFC 3339", since)
	}
	want := Metrics{
		SandboxID: "sbx_1", SandboxStatus: StatusRunning, SampleIntervalSeconds: 1,
		CPU:      &CPUUsage{Cores: 2, UsageCores: 0.94, UsagePercent: 47},
		Memory:   &MemoryUsage{LimitBytes: 4294967296, UsageBytes: 1879048192, UsagePercent: 43.7},
		Lifetime: Lifetime{CPUSeconds: 1284.31, MemMBSeconds: 90112, RunningSeconds: 2710},
		Samples:  []MetricSample{{T: time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC), CPUPercent: 47, MemBytes: 1879048192}},
	}
	if !reflect.DeepEqual(*m, want) {
		t.Errorf("metrics = %+v\nwant      %+v", *m, want)
	}
	m, err = c.Sandbox("sbx_paused").Metrics(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if since != "" || m.CPU != nil || m.Memory != nil || len(m.Samples) != 0 || m.Samples == nil || m.Lifetime.CPUSeconds != 3.5 || m.SandboxStatus != StatusPaused {
		t.Errorf("paused metrics = %+v (since %q)", m, since)
	}
}

func TestUsageDecode(t *testing.T) {
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/usage" || r.URL.Query().Get("from") != "2026-11-01T00:00:00Z" || r.URL.Query().Get("granularity") != "hour" || r.URL.Query().Has("to") {
			t.Errorf("request %s", r.URL)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"account_id": "acc_1", "from": "2026-11-01T00:00:00.000Z", "to": "2026-12-01T00:00:00.000Z", "granularity": "hour",
 "total": {"mem_mb_seconds": 1024, "cpu_ms": 5, "running_seconds": 2, "gb_hours": 0.000278, "cpu_hours": 0.000001},
 "sandboxes": [{"sandbox_id": "sbx_1", "mem_mb_seconds": 1024, "cpu_ms": 5, "running_seconds": 2, "gb_hours": 0.000278, "cpu_hours": 0.000001}],
 "periods": [{"start": "2026-11-03T10:00:00.000Z", "end": "2026-11-03T11:00:00.000Z", "mem_mb_seconds": 1024, "cpu_ms": 5, "running_seconds": 2, "gb_hours": 0.000278, "cpu_hours": 0.000001,
   "sandboxes": [{"sandbox_id": "sbx_1", "mem_mb_seconds": 1024, "cpu_ms": 5, "running_seconds": 2, "gb_hours": 0.000278, "cpu_hours": 0.000001}]}]}`))
	})
	u, err := c.Usage(context.Background(), UsageParams{From: time.Date(2026, 11, 1, 1, 0, 0, 0, time.FixedZone("CET", 3600)), Granularity: "hour"})
	if err != nil {
		t.Fatal(err)
	}
	one := Usage{MemMBSeconds: 1024, CPUMS: 5, RunningSeconds: 2, GBHours: 0.000278, CPUHours: 0.000001}
	if u.Total != one || len(u.Sandboxes) != 1 || u.Sandboxes[0] != (SandboxUsage{"sbx_1", one}) || len(u.Periods) != 1 ||
		!u.Periods[0].Start.Equal(time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)) || u.Periods[0].Usage != one || u.Granularity != "hour" {
		t.Errorf("usage = %+v", u)
	}
}
