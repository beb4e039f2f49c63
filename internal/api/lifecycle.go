package api

import (
	"context"

	"github.com/orkestr-eu/orkestr/internal/lifecycle"
	"github.com/orkestr-eu/orkestr/internal/store"
)

// reconcile makes the in-process node and the store agree at start (see
// lifecycle.Reconcile); a fleet's nodes do it themselves.
func (s *Server) reconcile(ctx context.Context) error {
	if s.local == nil {
		return nil
	}
	return lifecycle.Reconcile(ctx, s.store, s.local, func(store.Sandbox) bool { return true }, nil, s.now, s.log)
}
