package store

import (
	"context"
	"time"
)

// Usage is metered consumption, in the integer units invoices are made
// of: memory held in MB·seconds (the size's memory for every second the
// sandbox ran), CPU used in milliseconds, and seconds run.
type Usage struct {
	MemMBSeconds   int64
	CPUMS          int64
	RunningSeconds int64
}

// Add returns u + v.
func (u Usage) Add(v Usage) Usage {
	return Usage{u.MemMBSeconds + v.MemMBSeconds, u.CPUMS + v.CPUMS, u.RunningSeconds + v.RunningSeconds}
}

// IsZero reports whether nothing was used.
func (u Usage) IsZero() bool { return u == Usage{} }

// UsageDelta is usage to add to one sandbox's hour.
type UsageDelta struct {
	SandboxID string
	AccountID string
	HourStart time.Time // a whole UTC hour
	Usage
}

// UsageRow is one sandbox's usage in one period of a report.
type UsageRow struct {
	PeriodStart time.Time
	SandboxID   string
	Usage
}

// UsageStore keeps metering in hourly buckets per sandbox. Every figure is
// a sum of buckets, so hours, days and months add up exactly.
type UsageStore interface {
	// AddUsage adds every delta to its bucket, all in one transaction
	// (nothing is added on error). Deltas must be non-negative and their
	// HourStart a whole UTC hour; the sandbox must exist.
	AddUsage(ctx context.Context, deltas []UsageDelta) error
	// AccountUsage sums the account's buckets whose hour starts in
	// [from, to).
	AccountUsage(ctx context.Context, accountID string, from, to time.Time) (Usage, error)
	// SandboxUsage sums every bucket of the account's sandbox (its
	// lifetime); a sandbox without usage (or of another account) has zero.
	SandboxUsage(ctx context.Context, accountID, sandboxID string) (Usage, error)
	// UsageReport sums the account's buckets with hour in [from, to) per
	// sandbox and period (period is a whole number of hours dividing a
	// day, or a day; periods are aligned to the Unix epoch, so days are
	// UTC days), ordered by period start and sandbox id. Empty periods
	// have no rows.
	UsageReport(ctx context.Context, accountID string, from, to time.Time, period time.Duration) ([]UsageRow, error)
	// CountSandboxes counts every sandbox of all accounts by status.
	CountSandboxes(ctx context.Context) (map[Status]int, error)
}
