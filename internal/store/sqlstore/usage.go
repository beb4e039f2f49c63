package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
)

// usageBatch bounds the rows of one multi-row upsert (6 parameters each).
const usageBatch = 100

type usageKey struct {
	sandbox string
	hour    int64
}

// AddUsage adds the deltas to their hourly buckets in one transaction.
// Deltas for the same sandbox and hour are merged first: one statement
// may not upsert a row twice on PostgreSQL.
func (s *Store) AddUsage(ctx context.Context, deltas []store.UsageDelta) error {
	merged := map[usageKey]*store.UsageDelta{}
	var keys []usageKey
	for _, d := range deltas {
		if d.SandboxID == "" || d.AccountID == "" {
			return fmt.Errorf("usage delta without sandbox or account id: %w", store.ErrNotFound)
		}
		if d.MemMBSeconds < 0 || d.CPUMS < 0 || d.RunningSeconds < 0 {
			return fmt.Errorf("usage delta of sandbox %q is negative (%+v); usage only grows", d.SandboxID, d.Usage)
		}
		h := d.HourStart.UTC()
		if !h.Equal(h.Truncate(time.Hour)) {
			return fmt.Errorf("usage delta of sandbox %q starts at %s, not at a whole hour", d.SandboxID, h.Format(time.RFC3339Nano))
		}
		if d.Usage.IsZero() {
			continue
		}
		k := usageKey{d.SandboxID, toMS(h)}
		if m, ok := merged[k]; ok {
			if m.AccountID != d.AccountID {
				return fmt.Errorf("usage deltas of sandbox %q name two accounts", d.SandboxID)
			}
			m.Usage = m.Usage.Add(d.Usage)
			continue
		}
		d := d
		merged[k] = &d
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil
	}
	// A fixed order keeps concurrent flushes from deadlocking on
	// PostgreSQL's row locks.
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].sandbox != keys[j].sandbox {
			return keys[i].sandbox < keys[j].sandbox
		}
		return keys[i].hour < keys[j].hour
	})
	err := s.tx(ctx, func(tx *sql.Tx) error {
		for start := 0; start < len(keys); start += usageBatch {
			chunk := keys[start:min(start+usageBatch, len(keys))]
			marks := make([]string, len(chunk))
			args := make([]any, 0, 6*len(chunk))
			for i, k := range chunk {
				d := merged[k]
				marks[i] = "(?, ?, ?, ?, ?, ?)"
				args = append(args, d.SandboxID, d.AccountID, k.hour, d.MemMBSeconds, d.CPUMS, d.RunningSeconds)
			}
			_, err := s.exec(ctx, tx, `INSERT INTO usage_hourly (sandbox_id, account_id, hour_start, mem_mb_seconds, cpu_ms, running_seconds)
				VALUES `+strings.Join(marks, ", ")+`
				ON CONFLICT (sandbox_id, hour_start) DO UPDATE SET
					mem_mb_seconds = usage_hourly.mem_mb_seconds + excluded.mem_mb_seconds,
					cpu_ms = usage_hourly.cpu_ms + excluded.cpu_ms,
					running_seconds = usage_hourly.running_seconds + excluded.running_seconds`, args...)
			if err != nil {
				return err
			}
		}
		return nil
	})
	if isForeignKey(err) {
		return fmt.Errorf("usage for an unknown sandbox or account: %w", store.ErrNotFound)
	}
	return err
}

const usageSums = `CAST(COALESCE(SUM(mem_mb_seconds), 0) AS BIGINT), CAST(COALESCE(SUM(cpu_ms), 0) AS BIGINT),
	CAST(COALESCE(SUM(running_seconds), 0) AS BIGINT)`

func scanUsage(sc interface{ Scan(...any) error }, extra ...any) (store.Usage, error) {
	var u store.Usage
	err := sc.Scan(append(extra, &u.MemMBSeconds, &u.CPUMS, &u.RunningSeconds)...)
	return u, err
}

// AccountUsage sums the account's buckets with hour in [from, to).
func (s *Store) AccountUsage(ctx context.Context, accountID string, from, to time.Time) (store.Usage, error) {
	return scanUsage(s.queryRow(ctx, s.db, "SELECT "+usageSums+` FROM usage_hourly
		WHERE account_id = ? AND hour_start >= ? AND hour_start < ?`, accountID, toMS(from), toMS(to)))
}

// SandboxUsage sums every bucket of the account's sandbox.
func (s *Store) SandboxUsage(ctx context.Context, accountID, sandboxID string) (store.Usage, error) {
	return scanUsage(s.queryRow(ctx, s.db, "SELECT "+usageSums+` FROM usage_hourly
		WHERE sandbox_id = ? AND account_id = ?`, sandboxID, accountID))
}

// UsageReport sums the account's buckets per sandbox and period.
func (s *Store) UsageReport(ctx context.Context, accountID string, from, to time.Time, period time.Duration) ([]store.UsageRow, error) {
	if period < time.Hour || period%time.Hour != 0 || (period < 24*time.Hour && (24*time.Hour)%period != 0) {
		return nil, fmt.Errorf("usage report period %v: use whole hours that divide a day, or whole days", period)
	}
	p := period.Milliseconds()
	rows, err := s.query(ctx, s.db, `SELECT (hour_start / ?) * ? AS period_start, sandbox_id, `+usageSums+`
		FROM usage_hourly WHERE account_id = ? AND hour_start >= ? AND hour_start < ?
		GROUP BY period_start, sandbox_id ORDER BY period_start, sandbox_id`, p, p, accountID, toMS(from), toMS(to))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.UsageRow
	for rows.Next() {
		var r store.UsageRow
		var start int64
		if r.Usage, err = scanUsage(rows, &start, &r.SandboxID); err != nil {
			return nil, err
		}
		r.PeriodStart = fromMS(start)
		out = append(out, r)
	}
	return out, rows.Err()
}

// CountSandboxes counts every sandbox by status.
func (s *Store) CountSandboxes(ctx context.Context) (map[store.Status]int, error) {
	rows, err := s.query(ctx, s.db, "SELECT status, COUNT(*) FROM sandboxes GROUP BY status")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[store.Status]int{}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		out[store.Status(st)] = n
	}
	return out, rows.Err()
}
