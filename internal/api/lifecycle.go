package api

import (
	"context"
	"time"

	"github.com/orkestr-eu/orkestr/internal/lifecycle"
	"github.com/orkestr-eu/orkestr/internal/store"
)

// reconcile makes the in-process node and the store agree at start (see
// lifecycle.Reconcile); a fleet's nodes do it themselves.
func (s *Server) reconcile(ctx context.Context) error {
	if s.local == nil {
		return nil
	}
	return lifecycle.Reconcile(ctx, s.store, s.local, func(store.Sandbox) bool { return true }, s.now, s.log)
}

// deadlineLoop terminates running sandboxes whose running time is used up.
func (s *Server) deadlineLoop(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.leader != nil && !s.leader() {
			continue
		}
		rows, err := s.store.SandboxesByStatus(ctx, store.StatusRunning)
		if err != nil {
			continue
		}
		now := s.now()
		for _, row := range rows {
			if row.ExpiresAt != nil && !now.Before(*row.ExpiresAt) {
				if _, err := s.terminate(ctx, row, reasonExpired); err != nil {
					s.log.Warn("terminating an expired sandbox", "sandbox", row.ID, "err", err)
				}
			}
		}
	}
}
