package sqlstore

import (
	"context"

	"github.com/orkestr-eu/orkestr/internal/store"
)

// AsOlderBinary makes Open know only the first n migrations until the
// returned func is called, as an orkestrd built before the others would.
func AsOlderBinary(n int) (restore func()) {
	knownMigrations = n
	return func() { knownMigrations = 0 }
}

// CreateSandboxAsTx is CreateSandbox as it was before the pipelined
// PostgreSQL path: lock, count and insert as a transaction of separate
// statements (the baseline of BenchmarkCreateSandbox).
func (s *Store) CreateSandboxAsTx(ctx context.Context, sb store.Sandbox, maxActive int) error {
	envKeys, _ := toJSON(sb.EnvKeys)
	metadata, _ := toJSON(sb.Metadata)
	return s.createSandboxTx(ctx, sb.AccountID, maxActive, []any{sb.ID, sb.AccountID, string(sb.Status), sb.Template, sb.Size, sb.CPU,
		int64(sb.MemoryMB), sb.Network, sb.Region, int64(sb.TimeoutSeconds), toNullMS(sb.ExpiresAt), sb.RemainingMS, envKeys, metadata,
		sb.Node, sb.RuntimeID, sb.SnapshotDir, sb.SnapshotBytes, sb.ErrorMessage, toMS(sb.CreatedAt), toMS(sb.UpdatedAt),
		toNullMS(sb.PausedAt), toNullMS(sb.TerminatedAt), sb.Version})
}
