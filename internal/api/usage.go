package api

import (
	"context"
	"encoding/csv"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
)

// Units: GB-hours are MB·s / (1024 × 3600), CPU-hours are CPU·ms / 3.6e6.
// Both are rounded the same way everywhere (limits, usage reports), so a
// client summing the integers gets exactly the figures it is shown.
const (
	mbSecondsPerGBHour = 1024 * 3600
	cpuMSPerCPUHour    = 3600 * 1000
)

func gbHours(u store.Usage) float64  { return round(float64(u.MemMBSeconds)/mbSecondsPerGBHour, 6) }
func cpuHours(u store.Usage) float64 { return round(float64(u.CPUMS)/cpuMSPerCPUHour, 6) }

// monthUsage is the account's usage in the plan month of now (UTC calendar
// month) and when that month ends.
func (s *Server) monthUsage(ctx context.Context, account string) (store.Usage, time.Time, error) {
	start := monthStart(s.now())
	end := start.AddDate(0, 1, 0)
	u, err := s.store.AccountUsage(ctx, account, start, end)
	return u, end, err
}

// usageCacheTTL bounds how old the month's usage may be when create and
// resume check the budget: usage reaches the store every few seconds
// anyway, and a burst of creates then costs one sum, not one each.
const usageCacheTTL = time.Second

type cachedUsage struct {
	month time.Time
	at    time.Time
	used  store.Usage
}

// checkUsage refuses to start compute (create, resume) for an account
// that has used its plan's monthly memory or CPU budget. A budget of 0 is
// no budget (unmetered). Sandboxes already running keep running.
func (s *Server) checkUsage(ctx context.Context, p *principal) error {
	gb, cpu := p.plan.UsageGBHoursIncluded, p.plan.UsageCPUHoursIncluded
	if gb <= 0 && cpu <= 0 {
		return nil
	}
	now := s.now()
	month := monthStart(now)
	resets := month.AddDate(0, 1, 0)
	var used store.Usage
	if c, ok := s.usageCache.Load(p.account.ID); ok && c.(cachedUsage).month.Equal(month) && now.Sub(c.(cachedUsage).at) < usageCacheTTL {
		used = c.(cachedUsage).used
	} else {
		var err error
		if used, err = s.store.AccountUsage(ctx, p.account.ID, month, resets); err != nil {
			return err
		}
		s.usageCache.Store(p.account.ID, cachedUsage{month: month, at: now, used: used})
	}
	var what string
	switch {
	case gb > 0 && float64(used.MemMBSeconds) >= gb*mbSecondsPerGBHour:
		what = "memory (" + strconv.FormatFloat(gb, 'f', -1, 64) + " GB-hours)"
	case cpu > 0 && float64(used.CPUMS) >= cpu*cpuMSPerCPUHour:
		what = "CPU (" + strconv.FormatFloat(cpu, 'f', -1, 64) + " CPU-hours)"
	default:
		return nil
	}
	return apiErr(http.StatusPaymentRequired, "usage_exhausted",
		"Your %s plan's %s for this month is used up; running sandboxes keep running, new ones can start from %s (UTC) or on a larger plan.",
		p.account.Plan, what, fmtTime(resets)).
		with("resets_at", fmtTime(resets)).
		with("usage_gb_hours_used", gbHours(used)).with("usage_cpu_hours_used", cpuHours(used))
}

// Report ranges are bounded so one request cannot ask for years of hours.
const (
	maxHourRange = 31 * 24 * time.Hour
	maxDayRange  = 366 * 24 * time.Hour
)

type usageJSON struct {
	MemMBSeconds   int64   `json:"mem_mb_seconds"`
	CPUMS          int64   `json:"cpu_ms"`
	RunningSeconds int64   `json:"running_seconds"`
	GBHours        float64 `json:"gb_hours"`
	CPUHours       float64 `json:"cpu_hours"`
}

func toUsageJSON(u store.Usage) usageJSON {
	return usageJSON{MemMBSeconds: u.MemMBSeconds, CPUMS: u.CPUMS, RunningSeconds: u.RunningSeconds, GBHours: gbHours(u), CPUHours: cpuHours(u)}
}

type sandboxUsageJSON struct {
	SandboxID string `json:"sandbox_id"`
	usageJSON
}

type periodJSON struct {
	Start string `json:"start"`
	End   string `json:"end"`
	usageJSON
	Sandboxes []sandboxUsageJSON `json:"sandboxes"`
}

// parseUsageTime reads an RFC 3339 time or a YYYY-MM-DD date (midnight
// UTC).
func parseUsageTime(field, v string) (time.Time, error) {
	if len(v) > 40 {
		return time.Time{}, invalid(field, "%s is too long; give an RFC 3339 time (2026-11-01T00:00:00Z) or a date (2026-11-01).", field)
	}
	if t, err := time.Parse(time.DateOnly, v); err == nil {
		return t, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, invalid(field, "%s must be an RFC 3339 UTC time (2026-11-01T00:00:00Z) or a date (2026-11-01).", field)
	}
	return t.UTC(), nil
}

// getUsage reports the caller's account's metered usage per period and
// sandbox, summed from the same hourly buckets as GET /v1/limits.
func (s *Server) getUsage(w http.ResponseWriter, r *http.Request) error {
	p := caller(r)
	q := r.URL.Query()
	if err := noEmptyQuery(q, "granularity", "format", "from", "to"); err != nil {
		return err
	}
	gran := q.Get("granularity")
	var period, maxRange time.Duration
	switch gran {
	case "", "day":
		gran, period, maxRange = "day", 24*time.Hour, maxDayRange
	case "hour":
		period, maxRange = time.Hour, maxHourRange
	default:
		return invalid("granularity", "granularity must be \"day\" or \"hour\".")
	}
	asCSV := false
	switch q.Get("format") {
	case "csv":
		asCSV = true
	case "json":
	case "":
		asCSV = strings.Contains(r.Header.Get("Accept"), "text/csv")
	default:
		return invalid("format", "format must be \"json\" or \"csv\" (or send Accept: text/csv).")
	}
	from := monthStart(s.now())
	to := from.AddDate(0, 1, 0)
	var err error
	if v := q.Get("from"); v != "" {
		if from, err = parseUsageTime("from", v); err != nil {
			return err
		}
	}
	if v := q.Get("to"); v != "" {
		if to, err = parseUsageTime("to", v); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		name string
		t    time.Time
	}{{"from", from}, {"to", to}} {
		if f.t.Year() < 2000 || f.t.Year() > 9999 {
			return invalid(f.name, "%s must be between the years 2000 and 9999.", f.name)
		}
		if !f.t.Equal(f.t.Truncate(period)) {
			return invalid(f.name, "%s must fall on a whole %s (UTC) for granularity=%s, e.g. %s.", f.name, gran, gran, fmtTime(f.t.Truncate(period)))
		}
	}
	if !to.After(from) {
		return invalid("to", "to must be after from.")
	}
	if to.Sub(from) > maxRange {
		return invalid("to", "The range from %s to %s is longer than %d days, the most granularity=%s allows; give a closer to (it defaults to the 1st of next month) or split the range.", fmtTime(from), fmtTime(to), int(maxRange/(24*time.Hour)), gran)
	}
	rows, err := s.store.UsageReport(r.Context(), p.account.ID, from, to, period)
	if err != nil {
		return err
	}
	if asCSV {
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		w.Header().Set("Content-Disposition", `attachment; filename="usage-`+from.Format("20060102T15")+"-"+to.Format("20060102T15")+`.csv"`)
		w.WriteHeader(http.StatusOK)
		cw := csv.NewWriter(w)
		_ = cw.Write([]string{"period_start", "period_end", "sandbox_id", "mem_mb_seconds", "cpu_ms", "running_seconds"})
		for _, row := range rows {
			_ = cw.Write([]string{fmtTime(row.PeriodStart), fmtTime(row.PeriodStart.Add(period)), row.SandboxID,
				strconv.FormatInt(row.MemMBSeconds, 10), strconv.FormatInt(row.CPUMS, 10), strconv.FormatInt(row.RunningSeconds, 10)})
		}
		cw.Flush()
		return nil
	}
	var total store.Usage
	perSandbox := map[string]store.Usage{}
	var order []string
	periods := []periodJSON{}
	for _, row := range rows {
		total = total.Add(row.Usage)
		if _, ok := perSandbox[row.SandboxID]; !ok {
			order = append(order, row.SandboxID)
		}
		perSandbox[row.SandboxID] = perSandbox[row.SandboxID].Add(row.Usage)
		start := fmtTime(row.PeriodStart)
		if n := len(periods); n == 0 || periods[n-1].Start != start {
			periods = append(periods, periodJSON{Start: start, End: fmtTime(row.PeriodStart.Add(period)), Sandboxes: []sandboxUsageJSON{}})
		}
		last := &periods[len(periods)-1]
		sum := store.Usage{MemMBSeconds: last.MemMBSeconds, CPUMS: last.CPUMS, RunningSeconds: last.RunningSeconds}.Add(row.Usage)
		last.usageJSON = toUsageJSON(sum)
		last.Sandboxes = append(last.Sandboxes, sandboxUsageJSON{SandboxID: row.SandboxID, usageJSON: toUsageJSON(row.Usage)})
	}
	sandboxes := make([]sandboxUsageJSON, 0, len(order))
	slices.Sort(order)
	for _, id := range order {
		sandboxes = append(sandboxes, sandboxUsageJSON{SandboxID: id, usageJSON: toUsageJSON(perSandbox[id])})
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"account_id": p.account.ID, "from": fmtTime(from), "to": fmtTime(to), "granularity": gran,
		"total": toUsageJSON(total), "sandboxes": sandboxes, "periods": periods,
	})
	return nil
}
