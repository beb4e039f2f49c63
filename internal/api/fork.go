package api

import (
	"errors"
	"maps"
	"net/http"
	"slices"

	"github.com/orkestr-eu/orkestr/internal/lifecycle"
	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/store"
)

type forkRequest struct {
	Count *int `json:"count"`
}

// forkSandbox makes count clones of a running or paused sandbox
// (lifecycle.Manager.Fork): all of them or none.
func (s *Server) forkSandbox(w http.ResponseWriter, r *http.Request) error {
	p := caller(r)
	var req forkRequest
	if err := decode(r, &req, true); err != nil {
		return err
	}
	limit := p.plan.ForkLimit()
	count := 1
	if req.Count != nil {
		count = *req.Count
	}
	if count < 1 {
		return invalid("count", "count must be an integer from 1 to %d.", limit)
	}
	// The sandbox is looked up before the plan's fork limit is applied: a
	// malformed or foreign id is a 404 whatever the count.
	row, unlock, err := s.loadLocked(r)
	if err != nil {
		return err
	}
	defer unlock()
	if count > limit {
		return apiErr(http.StatusPaymentRequired, "fork_limit", "Your %s plan makes at most %d clones per fork.", p.account.Plan, limit).
			with("max_fork", limit)
	}
	if row.Status != store.StatusRunning && row.Status != store.StatusPaused {
		return apiErr(http.StatusConflict, "sandbox_not_ready", "The sandbox is %s; only a running or paused sandbox can be forked.", row.Status).with("status", string(row.Status))
	}
	if err := s.checkUsage(r.Context(), p); err != nil {
		return err
	}
	now := s.now().UTC()
	clones := make([]store.Sandbox, count)
	for i := range clones {
		clones[i] = store.Sandbox{
			ID: newSandboxID(), AccountID: row.AccountID, Template: row.Template, Size: row.Size,
			CPU: row.CPU, MemoryMB: row.MemoryMB, Network: row.Network, Region: row.Region,
			TimeoutSeconds: row.TimeoutSeconds, EnvKeys: slices.Clone(row.EnvKeys), Metadata: maps.Clone(row.Metadata),
			CreatedAt: now, UpdatedAt: now,
		}
	}
	made, err := s.life.Fork(r.Context(), row, clones, p.plan.MaxConcurrent)
	switch {
	case err == nil:
	case errors.Is(err, store.ErrLimit):
		return apiErr(http.StatusPaymentRequired, "concurrency_limit", "Your %s plan allows %d sandboxes at once and a fork of %d does not fit; no clone was made. Terminate or pause some first, or fork fewer.", p.account.Plan, p.plan.MaxConcurrent, count).
			with("max_concurrent", p.plan.MaxConcurrent)
	case errors.Is(err, nodeapi.ErrSnapshotStoreUnavailable):
		s.log.Error("fork: the snapshot store is unavailable", "request_id", requestID(r), "sandbox", row.ID, "err", err)
		return apiErr(http.StatusServiceUnavailable, "snapshot_store_unavailable", "The snapshot store could not be reached, so no clone was made; the sandbox is unchanged. Retry shortly.")
	case errors.Is(err, nodeapi.ErrTemplateNotBuilt):
		return notBuilt(row.Template)
	case errors.Is(err, nodeapi.ErrDiskLow):
		return s.diskLow(r, err)
	case errors.Is(err, lifecycle.ErrStartFailed):
		s.log.Error("fork failed", "request_id", requestID(r), "sandbox", row.ID, "count", count, "err", err)
		return apiErr(http.StatusServiceUnavailable, "no_capacity", "The %d clones could not all be started right now; none was kept. The sandbox is unchanged; retry shortly or fork fewer.", count)
	default:
		return s.lifeFailed(r, row, err)
	}
	data := make([]sandboxJSON, len(made))
	for i, c := range made {
		data[i] = toJSON(c)
	}
	writeJSON(w, http.StatusCreated, map[string]any{"data": data})
	return nil
}
