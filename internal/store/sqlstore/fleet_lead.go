package sqlstore

import (
	"context"

	"github.com/orkestr-eu/orkestr/internal/store"
)

// EndSandbox records that a running (or starting) sandbox with that
// runtime id stopped on its own.
func (s *Store) EndSandbox(ctx context.Context, sandboxID, runtimeID string, status store.Status, reason string) (bool, error) {
	now := toMS(s.now())
	res, err := s.exec(ctx, s.db, `UPDATE sandboxes SET status = ?, error_message = ?, runtime_id = '', expires_at = NULL,
		terminated_at = ?, updated_at = ?, version = version + 1
		WHERE id = ? AND runtime_id = ? AND status IN (?, ?)`,
		string(status), reason, now, now, sandboxID, runtimeID, string(store.StatusRunning), string(store.StatusStarting))
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}
