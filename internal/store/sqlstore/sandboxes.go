package sqlstore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/orkestr-eu/orkestr/internal/store"
)

// List page sizes: ListFilter.Limit <= 0 means DefaultListLimit, above
// MaxListLimit is clamped to it (the API validates 1..200 itself).
const (
	DefaultListLimit = 50
	MaxListLimit     = 200
)

const sandboxCols = `id, account_id, status, template, size, cpu, memory_mb, network, region, timeout_seconds,
	expires_at, remaining_ms, env_keys, metadata, node, runtime_id, snapshot_dir, snapshot_bytes, error_message,
	created_at, updated_at, paused_at, terminated_at, version`

func scanSandbox(sc interface{ Scan(...any) error }) (store.Sandbox, error) {
	var sb store.Sandbox
	var status, envKeys, metadata string
	var memoryMB, timeoutSeconds, created, updated int64
	var expires, paused, terminated sql.NullInt64
	if err := sc.Scan(&sb.ID, &sb.AccountID, &status, &sb.Template, &sb.Size, &sb.CPU, &memoryMB, &sb.Network,
		&sb.Region, &timeoutSeconds, &expires, &sb.RemainingMS, &envKeys, &metadata, &sb.Node, &sb.RuntimeID,
		&sb.SnapshotDir, &sb.SnapshotBytes, &sb.ErrorMessage, &created, &updated, &paused, &terminated, &sb.Version); err != nil {
		return store.Sandbox{}, err
	}
	sb.Status = store.Status(status)
	sb.MemoryMB, sb.TimeoutSeconds = int(memoryMB), int(timeoutSeconds)
	if err := json.Unmarshal([]byte(envKeys), &sb.EnvKeys); err != nil {
		return store.Sandbox{}, fmt.Errorf("sandbox %q: decoding env_keys: %w", sb.ID, err)
	}
	if err := json.Unmarshal([]byte(metadata), &sb.Metadata); err != nil {
		return store.Sandbox{}, fmt.Errorf("sandbox %q: decoding metadata: %w", sb.ID, err)
	}
	sb.ExpiresAt, sb.PausedAt, sb.TerminatedAt = fromNullMS(expires), fromNullMS(paused), fromNullMS(terminated)
	sb.CreatedAt, sb.UpdatedAt = fromMS(created), fromMS(updated)
	return sb, nil
}

func (s *Store) scanSandboxes(rows *sql.Rows) ([]store.Sandbox, error) {
	defer rows.Close()
	var out []store.Sandbox
	for rows.Next() {
		sb, err := scanSandbox(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, sb)
	}
	return out, rows.Err()
}

// normalize returns sb as it reads back: times truncated to milliseconds
// in UTC.
func normalize(sb store.Sandbox) store.Sandbox {
	sb.ExpiresAt, sb.PausedAt, sb.TerminatedAt = truncMSPtr(sb.ExpiresAt), truncMSPtr(sb.PausedAt), truncMSPtr(sb.TerminatedAt)
	sb.CreatedAt, sb.UpdatedAt = truncMS(sb.CreatedAt), truncMS(sb.UpdatedAt)
	return sb
}

// lockAccount serializes the account's conditional writes for the rest of
// tx (PostgreSQL: row lock; SQLite: tx already holds the write lock) and
// reports store.ErrNotFound for an unknown account.
func (s *Store) lockAccount(ctx context.Context, tx *sql.Tx, accountID string) error {
	var id string
	err := s.queryRow(ctx, tx, "SELECT id FROM accounts WHERE id = ?"+s.d.lockAccount, accountID).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("account %q: %w", accountID, store.ErrNotFound)
	}
	return err
}

func (s *Store) count(ctx context.Context, tx *sql.Tx, query string, args ...any) (int, error) {
	var n int
	err := s.queryRow(ctx, tx, query, args...).Scan(&n)
	return n, err
}

// CreateSandbox inserts sb unless the account already has maxActive or
// more sandboxes starting or running (store.ErrLimit); maxActive <= 0 is
// no limit. sb is stored as given, Version included (a zero UpdatedAt
// becomes CreatedAt, a zero CreatedAt now). A duplicate id is
// store.ErrConflict, an unknown account store.ErrNotFound.
func (s *Store) CreateSandbox(ctx context.Context, sb store.Sandbox, maxActive int) error {
	args, err := s.insertArgs(sb)
	if err != nil {
		return err
	}
	if s.d.dollar {
		err = s.createSandboxPipelined(ctx, sb.AccountID, maxActive, args)
	} else {
		err = s.createSandboxTx(ctx, sb.AccountID, maxActive, args)
	}
	if isUnique(err) {
		return fmt.Errorf("sandbox %q: %w", sb.ID, store.ErrConflict)
	}
	return err
}

// CreateSandboxes implements store.Store: all of sbs (one account's) or
// none, in one transaction under the plan's limit counted for all of them
// (a fork's clones). A single create goes through CreateSandbox's faster
// path.
func (s *Store) CreateSandboxes(ctx context.Context, sbs []store.Sandbox, maxActive int) error {
	if len(sbs) == 0 {
		return nil
	}
	account := sbs[0].AccountID
	rows := make([][]any, len(sbs))
	for i, sb := range sbs {
		if sb.AccountID != account {
			return fmt.Errorf("CreateSandboxes: sandboxes of two accounts (%q, %q)", account, sb.AccountID)
		}
		args, err := s.insertArgs(sb)
		if err != nil {
			return err
		}
		rows[i] = args
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if err := s.lockAccount(ctx, tx, account); err != nil {
			return err
		}
		if maxActive > 0 {
			n, err := s.count(ctx, tx, "SELECT COUNT(*) FROM sandboxes WHERE account_id = ? AND status IN (?, ?)",
				account, string(store.StatusStarting), string(store.StatusRunning))
			if err != nil {
				return err
			}
			if n+len(rows) > maxActive {
				return fmt.Errorf("account %q has %d active sandboxes (limit %d; %d more asked for): %w", account, n, maxActive, len(rows), store.ErrLimit)
			}
		}
		for _, args := range rows {
			if _, err := s.exec(ctx, tx, "INSERT INTO sandboxes ("+sandboxCols+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, args...); err != nil {
				return err
			}
		}
		return nil
	})
	if isUnique(err) {
		return fmt.Errorf("sandbox %q: %w", sbs[0].ID, store.ErrConflict)
	}
	return err
}

// insertArgs are sb's values in sandboxCols' order (a zero CreatedAt is
// now, a zero UpdatedAt CreatedAt).
func (s *Store) insertArgs(sb store.Sandbox) ([]any, error) {
	if sb.CreatedAt.IsZero() {
		sb.CreatedAt = s.now()
	}
	if sb.UpdatedAt.IsZero() {
		sb.UpdatedAt = sb.CreatedAt
	}
	envKeys, err := toJSON(sb.EnvKeys)
	if err != nil {
		return nil, err
	}
	metadata, err := toJSON(sb.Metadata)
	if err != nil {
		return nil, err
	}
	return []any{sb.ID, sb.AccountID, string(sb.Status), sb.Template, sb.Size, sb.CPU, int64(sb.MemoryMB), sb.Network,
		sb.Region, int64(sb.TimeoutSeconds), toNullMS(sb.ExpiresAt), sb.RemainingMS, envKeys, metadata, sb.Node,
		sb.RuntimeID, sb.SnapshotDir, sb.SnapshotBytes, sb.ErrorMessage, toMS(sb.CreatedAt), toMS(sb.UpdatedAt),
		toNullMS(sb.PausedAt), toNullMS(sb.TerminatedAt), sb.Version}, nil
}

// createSandboxTx is CreateSandbox as a transaction of its own: lock the
// account, count, insert (SQLite, in process: statements cost no round
// trip).
func (s *Store) createSandboxTx(ctx context.Context, accountID string, maxActive int, args []any) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if err := s.lockAccount(ctx, tx, accountID); err != nil {
			return err
		}
		if maxActive > 0 {
			n, err := s.count(ctx, tx, "SELECT COUNT(*) FROM sandboxes WHERE account_id = ? AND status IN (?, ?)",
				accountID, string(store.StatusStarting), string(store.StatusRunning))
			if err != nil {
				return err
			}
			if n >= maxActive {
				return fmt.Errorf("account %q has %d active sandboxes (limit %d): %w", accountID, n, maxActive, store.ErrLimit)
			}
		}
		_, err := s.exec(ctx, tx, "INSERT INTO sandboxes ("+sandboxCols+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, args...)
		return err
	})
}

// pgCreateLock takes the account's row lock for the rest of the pipeline's
// transaction and says how many sandboxes it has active (for the error
// message only: it may be stale by the time the lock is granted).
const pgCreateLock = `SELECT (SELECT COUNT(*) FROM sandboxes WHERE account_id = $1 AND status IN ($2, $3))
	FROM accounts WHERE id = $1 FOR NO KEY UPDATE`

// pgCreateInsert inserts the row if the account exists and has fewer than
// $25 active sandboxes ($25 <= 0: no limit). It runs after pgCreateLock in
// the same transaction, and under READ COMMITTED each statement takes a
// new snapshot, so the count sees every create that held the lock before.
// The casts give the parameters the columns' types (an INSERT ... SELECT
// does not infer them).
const pgCreateInsert = `INSERT INTO sandboxes (` + sandboxCols + `)
	SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::double precision, $7::bigint, $8::text,
		$9::text, $10::bigint, $11::bigint, $12::bigint, $13::text, $14::text, $15::text,
		$16::text, $17::text, $18::bigint, $19::text, $20::bigint, $21::bigint, $22::bigint, $23::bigint, $24::bigint
	WHERE EXISTS (SELECT 1 FROM accounts WHERE id = $2)
		AND ($25::bigint <= 0 OR (SELECT COUNT(*) FROM sandboxes WHERE account_id = $2 AND status IN ($26, $27)) < $25::bigint)
	RETURNING id`

// pgUnflushed lets the rest of a pipelined batch's transaction commit
// without waiting for its WAL to reach the disk (for that transaction
// only; see store.Unflushed). The row is visible to other transactions
// at commit either way. What it saves is a wait for the disk: at load 40
// on this host a round trip took 0.3–0.7 ms and a durable write 2.4–3.7
// ms (pgbench, docs/benchmarks.md).
const pgUnflushed = `SELECT set_config('synchronous_commit', 'off', true)`

// createSandboxPipelined is CreateSandbox on PostgreSQL in one round trip:
// the lock and the conditional insert go out together as one pipelined
// batch, which PostgreSQL runs as one implicit transaction (a failed
// statement rolls back both; with store.Unflushed, committed without
// waiting for the disk). As separate statements of a transaction it took
// five round trips (BEGIN, lock, count, insert, COMMIT), each a wake-up
// of a PostgreSQL backend.
func (s *Store) createSandboxPipelined(ctx context.Context, accountID string, maxActive int, args []any) error {
	starting, running := string(store.StatusStarting), string(store.StatusRunning)
	var active int64
	var lockErr, insErr error
	err := s.pipeline(ctx, func(b *pgx.Batch) {
		b.Queue(pgCreateLock, accountID, starting, running)
		b.Queue(pgCreateInsert, append(args, int64(maxActive), starting, running)...)
	}, func(br pgx.BatchResults) {
		lockErr = br.QueryRow().Scan(&active)
		var id string
		insErr = br.QueryRow().Scan(&id)
	})
	if err != nil {
		return err
	}
	switch {
	case errors.Is(lockErr, pgx.ErrNoRows):
		return fmt.Errorf("account %q: %w", accountID, store.ErrNotFound)
	case lockErr != nil:
		return lockErr
	case errors.Is(insErr, pgx.ErrNoRows):
		return fmt.Errorf("account %q has %d active sandboxes (limit %d): %w", accountID, active, maxActive, store.ErrLimit)
	}
	return insErr
}

// pipeline sends what queue puts in a batch to PostgreSQL in one round
// trip, as one implicit transaction (a failed statement rolls back all),
// committed without waiting for the disk when ctx is store.Unflushed,
// and gives read the statements' results in order.
func (s *Store) pipeline(ctx context.Context, queue func(*pgx.Batch), read func(pgx.BatchResults)) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		var b pgx.Batch
		unflushed := store.IsUnflushed(ctx)
		if unflushed {
			b.Queue(pgUnflushed)
		}
		queue(&b)
		br := dc.(*stdlib.Conn).Conn().SendBatch(ctx, &b)
		if unflushed {
			var off string
			if err := br.QueryRow().Scan(&off); err != nil {
				_ = br.Close()
				return err
			}
		}
		read(br)
		return br.Close()
	})
}

// GetSandbox returns the account's sandbox; another account's sandbox is
// store.ErrNotFound, exactly like a missing one.
func (s *Store) GetSandbox(ctx context.Context, accountID, id string) (store.Sandbox, error) {
	sb, err := scanSandbox(s.queryRow(ctx, s.db, "SELECT "+sandboxCols+" FROM sandboxes WHERE id = ? AND account_id = ?", id, accountID))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Sandbox{}, fmt.Errorf("sandbox %q: %w", id, store.ErrNotFound)
	}
	return sb, err
}

// Cursors are base64url("v1:" + created_at unix ms + ":" + id) of the last
// row of a page; the next page continues strictly after that position in
// (created_at desc, id desc) order, so rows created meanwhile (newer) never
// shift or repeat a later page.

func encodeCursor(sb store.Sandbox) string {
	return base64.RawURLEncoding.EncodeToString([]byte("v1:" + strconv.FormatInt(toMS(sb.CreatedAt), 10) + ":" + sb.ID))
}

func decodeCursor(c string) (int64, string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return 0, "", fmt.Errorf("%w: not base64url", store.ErrBadCursor)
	}
	rest, ok := strings.CutPrefix(string(raw), "v1:")
	if !ok {
		return 0, "", fmt.Errorf("%w: unknown version", store.ErrBadCursor)
	}
	msText, id, ok := strings.Cut(rest, ":")
	if !ok || id == "" {
		return 0, "", fmt.Errorf("%w: malformed", store.ErrBadCursor)
	}
	ms, err := strconv.ParseInt(msText, 10, 64)
	if err != nil {
		return 0, "", fmt.Errorf("%w: malformed time", store.ErrBadCursor)
	}
	return ms, id, nil
}

// ListSandboxes returns a page of the account's sandboxes, newest first
// (created_at, then id, descending), optionally of one status. f.Limit <= 0
// is DefaultListLimit and above MaxListLimit is clamped. nextCursor is ""
// on the last page. A cursor that no list returned is an error wrapping
// store.ErrBadCursor.
func (s *Store) ListSandboxes(ctx context.Context, accountID string, f store.ListFilter) ([]store.Sandbox, string, error) {
	limit := f.Limit
	switch {
	case limit <= 0:
		limit = DefaultListLimit
	case limit > MaxListLimit:
		limit = MaxListLimit
	}
	where := "account_id = ?"
	args := []any{accountID}
	if f.Status != "" {
		where += " AND status = ?"
		args = append(args, string(f.Status))
	}
	if f.Cursor != "" {
		ms, id, err := decodeCursor(f.Cursor)
		if err != nil {
			return nil, "", err
		}
		where += " AND (created_at < ? OR (created_at = ? AND id < ?))"
		args = append(args, ms, ms, id)
	}
	args = append(args, limit+1)
	rows, err := s.query(ctx, s.db, "SELECT "+sandboxCols+" FROM sandboxes WHERE "+where+
		" ORDER BY created_at DESC, id DESC LIMIT ?", args...)
	if err != nil {
		return nil, "", err
	}
	page, err := s.scanSandboxes(rows)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(page) > limit {
		page = page[:limit]
		next = encodeCursor(page[limit-1])
	}
	return page, next, nil
}

// UpdateSandbox writes sb (all but ID, AccountID and CreatedAt) if its
// Version still matches the stored one, and returns it as stored: Version
// incremented, UpdatedAt now, times at millisecond precision. A changed
// Version is store.ErrStale; a missing sandbox (or another account's) is
// store.ErrNotFound. With maxPaused > 0 and sb.Status paused, the write is
// refused with store.ErrLimit when the account already has maxPaused or
// more other paused sandboxes; that check and the write are atomic with
// respect to the account's other conditional writes.
func (s *Store) UpdateSandbox(ctx context.Context, sb store.Sandbox, limit int) (store.Sandbox, error) {
	envKeys, err := toJSON(sb.EnvKeys)
	if err != nil {
		return store.Sandbox{}, err
	}
	metadata, err := toJSON(sb.Metadata)
	if err != nil {
		return store.Sandbox{}, err
	}
	out := sb
	var class []any
	if limit > 0 {
		switch sb.Status {
		case store.StatusPaused:
			class = []any{string(store.StatusPaused), string(store.StatusPaused)}
		case store.StatusStarting, store.StatusRunning:
			class = []any{string(store.StatusStarting), string(store.StatusRunning)}
		}
	}
	update := func(q querier, args []any, created *int64) error {
		return s.queryRow(ctx, q, updateSandboxSQL, args...).Scan(created)
	}
	if class == nil && s.d.dollar && store.IsUnflushed(ctx) {
		update = func(_ querier, args []any, created *int64) error {
			return s.updateUnflushed(ctx, args, created)
		}
	}
	write := func(q querier) error {
		now := toMS(s.now())
		var created int64
		err := update(q, []any{string(sb.Status), sb.Template, sb.Size, sb.CPU, int64(sb.MemoryMB), sb.Network, sb.Region,
			int64(sb.TimeoutSeconds), toNullMS(sb.ExpiresAt), sb.RemainingMS, envKeys, metadata, sb.Node, sb.RuntimeID,
			sb.SnapshotDir, sb.SnapshotBytes, sb.ErrorMessage, now, toNullMS(sb.PausedAt), toNullMS(sb.TerminatedAt),
			sb.ID, sb.AccountID, sb.Version}, &created)
		if err == nil {
			// The caller gets exactly the stored row.
			out.CreatedAt, out.UpdatedAt, out.Version = fromMS(created), fromMS(now), sb.Version+1
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		var version int64
		err = s.queryRow(ctx, q, "SELECT version FROM sandboxes WHERE id = ? AND account_id = ?", sb.ID, sb.AccountID).Scan(&version)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("sandbox %q: %w", sb.ID, store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("sandbox %q is at version %d, not %d: %w", sb.ID, version, sb.Version, store.ErrStale)
	}
	if class == nil {
		// One statement, no transaction: the version check makes it
		// atomic, and a round trip to PostgreSQL is most of its cost (a
		// create, a pause and a resume each make one).
		var unlock func()
		if unlock, err = s.lockWriter(ctx); err == nil {
			err = write(s.db)
			unlock()
		}
	} else {
		err = s.tx(ctx, func(tx *sql.Tx) error {
			if err := s.lockAccount(ctx, tx, sb.AccountID); err != nil {
				return err
			}
			n, err := s.count(ctx, tx, "SELECT COUNT(*) FROM sandboxes WHERE account_id = ? AND status IN (?, ?) AND id <> ?",
				sb.AccountID, class[0], class[1], sb.ID)
			if err != nil {
				return err
			}
			if n >= limit {
				return fmt.Errorf("account %q has %d %s sandboxes (limit %d): %w", sb.AccountID, n, sb.Status, limit, store.ErrLimit)
			}
			return write(tx)
		})
	}
	if err != nil {
		return store.Sandbox{}, err
	}
	return normalize(out), nil
}

const updateSandboxSQL = `UPDATE sandboxes SET status = ?, template = ?, size = ?, cpu = ?, memory_mb = ?,
	network = ?, region = ?, timeout_seconds = ?, expires_at = ?, remaining_ms = ?, env_keys = ?, metadata = ?,
	node = ?, runtime_id = ?, snapshot_dir = ?, snapshot_bytes = ?, error_message = ?, updated_at = ?,
	paused_at = ?, terminated_at = ?, version = version + 1
	WHERE id = ? AND account_id = ? AND version = ?
	RETURNING created_at`

// updateUnflushed runs updateSandboxSQL on PostgreSQL in one round trip
// with ctx store.Unflushed: the setting and the update go out as one
// pipelined batch.
func (s *Store) updateUnflushed(ctx context.Context, args []any, created *int64) error {
	var upErr error
	err := s.pipeline(ctx, func(b *pgx.Batch) {
		b.Queue(s.d.q(updateSandboxSQL), args...)
	}, func(br pgx.BatchResults) {
		upErr = br.QueryRow().Scan(created)
	})
	switch {
	case err != nil:
		return err
	case errors.Is(upErr, pgx.ErrNoRows):
		return sql.ErrNoRows
	}
	return upErr
}

// SandboxesByStatus returns every sandbox, of all accounts, in one of the
// statuses (none given: none returned), oldest first.
func (s *Store) SandboxesByStatus(ctx context.Context, statuses ...store.Status) ([]store.Sandbox, error) {
	if len(statuses) == 0 {
		return nil, nil
	}
	marks := make([]string, len(statuses))
	args := make([]any, len(statuses))
	for i, st := range statuses {
		marks[i], args[i] = "?", string(st)
	}
	rows, err := s.query(ctx, s.db, "SELECT "+sandboxCols+" FROM sandboxes WHERE status IN ("+
		strings.Join(marks, ", ")+") ORDER BY created_at, id", args...)
	if err != nil {
		return nil, err
	}
	return s.scanSandboxes(rows)
}
