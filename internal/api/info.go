package api

import (
	"errors"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/store"
)

type sizeJSON struct {
	Size     string  `json:"size"`
	CPU      float64 `json:"cpu"`
	MemoryMB int     `json:"memory_mb"`
	DiskMB   int     `json:"disk_mb"`
	Allowed  bool    `json:"allowed"`
}

// monthStart is 00:00 UTC on the 1st of t's month.
func monthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

func (s *Server) getLimits(w http.ResponseWriter, r *http.Request) error {
	p := caller(r)
	sizes := make([]sizeJSON, 0, len(s.cfg.Sizes))
	for _, name := range s.cfg.SizeNames() {
		sz := s.cfg.Sizes[name]
		sizes = append(sizes, sizeJSON{Size: name, CPU: sz.CPU, MemoryMB: sz.MemoryMB, DiskMB: sz.DiskMBOrDefault(), Allowed: contains(p.plan.AllowedSizes, name)})
	}
	allowed := p.plan.AllowedSizes
	if allowed == nil {
		allowed = []string{}
	}
	used, resets, err := s.monthUsage(r.Context(), p.account.ID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"plan": p.account.Plan, "allowed_sizes": allowed, "max_concurrent": p.plan.MaxConcurrent,
		"snapshot_cap":             p.plan.SnapshotCap,
		"max_fork":                 p.plan.ForkLimit(),
		"usage_gb_hours_used":      gbHours(used),
		"usage_gb_hours_included":  p.plan.UsageGBHoursIncluded,
		"usage_cpu_hours_used":     cpuHours(used),
		"usage_cpu_hours_included": p.plan.UsageCPUHoursIncluded,
		"usage_resets_at":          fmtTime(resets),
		"sizes":                    sizes,
	})
	return nil
}

func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request) error {
	type tmpl struct {
		Name        string `json:"name"`
		Description string `json:"description"`
		Default     bool   `json:"default"`
		Built       bool   `json:"built"`
	}
	cat, err := s.nodes.Catalog(r.Context())
	if err != nil {
		return err
	}
	out := make([]tmpl, 0, len(s.cfg.Templates))
	for _, t := range s.cfg.Templates {
		out = append(out, tmpl{Name: t.Name, Description: t.Description, Default: t.Default, Built: cat.HasTemplate(t.Name)})
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
	return nil
}

// listRegions lists the regions of the nodes with their state; the
// operator's default region first.
func (s *Server) listRegions(w http.ResponseWriter, r *http.Request) error {
	cat, err := s.nodes.Catalog(r.Context())
	if err != nil {
		return err
	}
	type region struct {
		Name       string  `json:"name"`
		State      string  `json:"state"`
		Default    bool    `json:"default"`
		Nodes      int     `json:"nodes"`
		NodesAlive int     `json:"nodes_alive"`
		CPUs       float64 `json:"cpus"`
		MemoryMB   int64   `json:"memory_mb"`
		Sandboxes  int     `json:"sandboxes"`
		Slots      int     `json:"slots"`
	}
	out := []region{}
	for _, rs := range cat.Regions {
		out = append(out, region{Name: rs.Name, State: rs.State, Default: rs.Name == s.cfg.Region, Nodes: rs.Nodes, NodesAlive: rs.Alive,
			CPUs: rs.Capacity.CPUs, MemoryMB: rs.Capacity.MemoryBytes >> 20, Sandboxes: rs.Allocated.Slots, Slots: rs.Capacity.Slots})
	}
	slices.SortStableFunc(out, func(a, b region) int {
		if a.Default != b.Default {
			if a.Default {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
	return nil
}

// nodeJSON is a node in GET /v1/nodes.
type nodeJSON struct {
	ID              string  `json:"id"`
	Region          string  `json:"region"`
	Address         string  `json:"address"`
	Version         string  `json:"version"`
	State           string  `json:"state"`
	SlotsUsed       int     `json:"slots_used"`
	Slots           int     `json:"slots"`
	CPUsAllocated   float64 `json:"cpus_allocated"`
	CPUs            float64 `json:"cpus"`
	MemoryMBUsed    int64   `json:"memory_mb_allocated"`
	MemoryMB        int64   `json:"memory_mb"`
	Warm            int     `json:"warm"`
	LastHeartbeatAt string  `json:"last_heartbeat_at"`
	HeartbeatAgeMS  int64   `json:"heartbeat_age_ms"`
}

// listNodes lists every registered node, for the operator's accounts
// only (config operator_accounts): to any other account the endpoint does
// not exist, as addresses and capacity are the operator's business.
func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) error {
	p := caller(r)
	if !s.cfg.IsOperator(p.account.ID, p.account.Name) {
		return apiErr(http.StatusNotFound, "not_found", "No such endpoint: %s %s. See /v1/openapi.yaml.", r.Method, r.URL.Path)
	}
	cat, err := s.nodes.Catalog(r.Context())
	if err != nil {
		return err
	}
	out := []nodeJSON{}
	for _, n := range cat.Nodes {
		out = append(out, nodeJSON{
			ID: n.ID, Region: n.Region, Address: n.Address, Version: n.Version, State: n.State,
			SlotsUsed: n.Allocated.Slots, Slots: n.Capacity.Slots, CPUsAllocated: round(n.Allocated.CPUs, 2), CPUs: n.Capacity.CPUs,
			MemoryMBUsed: n.Allocated.MemoryBytes >> 20, MemoryMB: n.Capacity.MemoryBytes >> 20, Warm: n.Warm,
			LastHeartbeatAt: fmtTime(n.HeartbeatAt), HeartbeatAgeMS: n.HeartbeatAge.Milliseconds(),
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
	return nil
}

func round(v float64, places int) float64 {
	p := math.Pow(10, float64(places))
	return math.Round(v*p) / p
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) error {
	row, err := s.load(r)
	if err != nil {
		return err
	}
	if err := noEmptyQuery(r.URL.Query(), "since"); err != nil {
		return err
	}
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		if since, err = time.Parse(time.RFC3339Nano, v); err != nil {
			return invalid("since", "since must be an RFC 3339 time, e.g. 2026-01-02T15:04:05.000Z.")
		}
	}
	var m nodeapi.Metrics
	running := false
	if row.Status == store.StatusRunning {
		nd, err := s.nodes.Node(r.Context(), row.Node)
		if err == nil {
			m, err = nd.Metrics(r.Context(), row.RuntimeID, since)
		}
		if err != nil && !errors.Is(err, runtime.ErrNotFound) {
			return s.nodeDown(r, row, err)
		}
		running = err == nil
	}
	life := store.Usage{}
	if m.Lifetime != nil {
		life = *m.Lifetime
	} else if life, err = s.store.SandboxUsage(r.Context(), row.AccountID, row.ID); err != nil {
		return err
	}
	interval := m.IntervalSeconds
	if interval == 0 {
		interval = 1
	}
	samples, latest := m.Samples, m.Latest
	body := map[string]any{
		"sandbox_id": row.ID, "sandbox_status": row.Status,
		"sample_interval_seconds": interval,
		"cpu":                     nil, "memory": nil, "disk": nil,
		"lifetime": map[string]any{
			"cpu_seconds": round(float64(life.CPUMS)/1000, 2), "mem_mb_seconds": life.MemMBSeconds, "running_seconds": life.RunningSeconds,
		},
		"samples": []any{},
	}
	if running && row.Status == store.StatusRunning {
		limit := uint64(row.MemoryMB) << 20
		var cores, mem float64
		if latest != nil {
			cores, mem = latest.CPUCores, float64(latest.MemBytes)
			if latest.MemLimit > 0 && latest.MemLimit < limit {
				limit = latest.MemLimit
			}
		}
		body["cpu"] = map[string]any{"cores": row.CPU, "usage_cores": round(cores, 3), "usage_percent": round(cores/row.CPU*100, 1)}
		body["memory"] = map[string]any{"limit_bytes": limit, "usage_bytes": uint64(mem), "usage_percent": round(mem/float64(limit)*100, 1)}
		list := make([]map[string]any, len(samples))
		for i, sm := range samples {
			list[i] = map[string]any{"t": fmtTime(sm.T), "cpu_percent": round(sm.CPUPercent, 1), "mem_bytes": sm.MemBytes}
		}
		body["samples"] = list
		if d := m.Disk; d != nil && d.LimitBytes > 0 {
			body["disk"] = map[string]any{"limit_bytes": d.LimitBytes, "usage_bytes": d.UsedBytes,
				"usage_percent": round(float64(d.UsedBytes)/float64(d.LimitBytes)*100, 1)}
		}
	}
	writeJSON(w, http.StatusOK, body)
	return nil
}
