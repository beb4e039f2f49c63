package orkestr

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"time"
)

// Limits are the sizes, caps and monthly usage of the API key's plan.
type Limits struct {
	Plan                  string     `json:"plan"`
	AllowedSizes          []string   `json:"allowed_sizes"`
	MaxConcurrent         int        `json:"max_concurrent"`
	SnapshotCap           int        `json:"snapshot_cap"`
	MaxFork               int        `json:"max_fork"`                 // clones one fork may make
	UsageGBHoursUsed      float64    `json:"usage_gb_hours_used"`      // memory consumed this month
	UsageGBHoursIncluded  float64    `json:"usage_gb_hours_included"`  // memory budget of the month
	UsageCPUHoursUsed     float64    `json:"usage_cpu_hours_used"`     // CPU consumed this month
	UsageCPUHoursIncluded float64    `json:"usage_cpu_hours_included"` // CPU budget of the month
	UsageResetsAt         time.Time  `json:"usage_resets_at"`          // 1st of next month, UTC
	Sizes                 []SizeInfo `json:"sizes"`                    // the full menu, each with Allowed
}

// SizeInfo is one size of the menu.
type SizeInfo struct {
	Size     string  `json:"size"`
	CPU      float64 `json:"cpu"`
	MemoryMB int     `json:"memory_mb"`
	Allowed  bool    `json:"allowed"`
}

// SizeAllowed reports whether the plan allows sandboxes of this size.
func (l *Limits) SizeAllowed(size string) bool { return slices.Contains(l.AllowedSizes, size) }

// Limits returns the plan limits and usage of the client's API key.
func (c *Client) Limits(ctx context.Context) (*Limits, error) {
	l := &Limits{}
	if err := c.call(ctx, &request{method: http.MethodGet, path: "/limits"}, l); err != nil {
		return nil, err
	}
	return l, nil
}

// Template is a sandbox template of the catalog.
type Template struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Default     bool   `json:"default"`
}

// Templates returns the catalog of templates.
func (c *Client) Templates(ctx context.Context) ([]Template, error) {
	var out struct {
		Data []Template `json:"data"`
	}
	if err := c.call(ctx, &request{method: http.MethodGet, path: "/templates"}, &out); err != nil {
		return nil, err
	}
	if out.Data == nil {
		out.Data = []Template{}
	}
	return out.Data, nil
}

// Metrics is a sandbox's live CPU and memory, a rolling window of samples
// and its lifetime totals. CPU and Memory are nil unless it is running.
type Metrics struct {
	SandboxID             string         `json:"sandbox_id"`
	SandboxStatus         SandboxStatus  `json:"sandbox_status"`
	SampleIntervalSeconds int            `json:"sample_interval_seconds"` // poll no faster than this
	CPU                   *CPUUsage      `json:"cpu"`
	Memory                *MemoryUsage   `json:"memory"`
	Lifetime              Lifetime       `json:"lifetime"`
	Samples               []MetricSample `json:"samples"` // the last ~60 s, oldest first
}

// CPUUsage is the latest CPU reading.
type CPUUsage struct {
	Cores        float64 `json:"cores"`         // allocated
	UsageCores   float64 `json:"usage_cores"`   // in use
	UsagePercent float64 `json:"usage_percent"` // of the allocated cores; one pegged core of 1 = 100
}

// MemoryUsage is the latest memory reading.
type MemoryUsage struct {
	LimitBytes   int64   `json:"limit_bytes"`
	UsageBytes   int64   `json:"usage_bytes"` // working set, reclaimable cache excluded
	UsagePercent float64 `json:"usage_percent"`
}

// Lifetime are the totals since the sandbox started.
type Lifetime struct {
	CPUSeconds     float64 `json:"cpu_seconds"`
	MemMBSeconds   int64   `json:"mem_mb_seconds"`
	RunningSeconds int64   `json:"running_seconds"`
}

// MetricSample is one reading of the window.
type MetricSample struct {
	T          time.Time `json:"t"`
	CPUPercent float64   `json:"cpu_percent"`
	MemBytes   int64     `json:"mem_bytes"`
}

// Metrics returns the sandbox's metrics. With since non-nil, Samples holds
// only the readings newer than it, e.g. the T of the last sample seen.
func (s *Sandbox) Metrics(ctx context.Context, since *time.Time) (*Metrics, error) {
	path, err := sandboxPath(s.ID, "/metrics")
	if err != nil {
		return nil, err
	}
	var q url.Values
	if since != nil {
		q = url.Values{"since": {since.UTC().Format(time.RFC3339Nano)}}
	}
	m := &Metrics{}
	if err := s.client.call(ctx, &request{method: http.MethodGet, path: path, query: q}, m); err != nil {
		return nil, err
	}
	if m.Samples == nil {
		m.Samples = []MetricSample{}
	}
	return m, nil
}

// Usage is metered consumption in the integer units of an invoice.
type Usage struct {
	MemMBSeconds   int64   `json:"mem_mb_seconds"` // the size's memory × seconds run
	CPUMS          int64   `json:"cpu_ms"`         // CPU used, milliseconds
	RunningSeconds int64   `json:"running_seconds"`
	GBHours        float64 `json:"gb_hours"`  // MemMBSeconds / 3 686 400, 6 decimals
	CPUHours       float64 `json:"cpu_hours"` // CPUMS / 3 600 000, 6 decimals
}

// SandboxUsage is one sandbox's usage.
type SandboxUsage struct {
	SandboxID string `json:"sandbox_id"`
	Usage
}

// UsagePeriod is the usage of one hour or day, per sandbox.
type UsagePeriod struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	Usage
	Sandboxes []SandboxUsage `json:"sandboxes"`
}

// UsageReport is the account's usage over a range; Total is the sum of
// Sandboxes and of Periods, exactly.
type UsageReport struct {
	AccountID   string         `json:"account_id"`
	From        time.Time      `json:"from"`
	To          time.Time      `json:"to"`
	Granularity string         `json:"granularity"`
	Total       Usage          `json:"total"`
	Sandboxes   []SandboxUsage `json:"sandboxes"`
	Periods     []UsagePeriod  `json:"periods"` // those with usage, oldest first
}

// UsageParams select a usage report. Zero From and To mean this month;
// Granularity is "day" (default) or "hour".
type UsageParams struct {
	From, To    time.Time
	Granularity string
}

// Usage returns the account's metered usage per period and sandbox.
func (c *Client) Usage(ctx context.Context, p UsageParams) (*UsageReport, error) {
	q := url.Values{}
	if !p.From.IsZero() {
		q.Set("from", p.From.UTC().Format(time.RFC3339))
	}
	if !p.To.IsZero() {
		q.Set("to", p.To.UTC().Format(time.RFC3339))
	}
	if p.Granularity != "" {
		q.Set("granularity", p.Granularity)
	}
	u := &UsageReport{}
	if err := c.call(ctx, &request{method: http.MethodGet, path: "/usage", query: q}, u); err != nil {
		return nil, err
	}
	return u, nil
}
