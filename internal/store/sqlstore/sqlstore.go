// Package sqlstore implements store.Store on SQLite (modernc.org/sqlite, pure
// Go; the embedded default) and PostgreSQL (github.com/jackc/pgx/v5 through
// its database/sql adapter). Both run the same queries and the same embedded
// migrations; the few dialect differences live in the dialect type.
//
// Representation, identical on both databases:
//   - times are BIGINT unix milliseconds, UTC; they round-trip exactly at
//     millisecond precision (finer parts are truncated);
//   - EnvKeys, Scopes and Metadata are JSON text (nil round-trips as nil,
//     empty as empty);
//   - ids compare bytewise (COLLATE "C" on PostgreSQL, BINARY on SQLite).
//
// Serialization of conditional writes (CreateSandbox's active limit,
// UpdateSandbox's paused limit): PostgreSQL locks the account row
// (SELECT ... FOR NO KEY UPDATE) inside a READ COMMITTED transaction; SQLite
// opens every transaction with BEGIN IMMEDIATE (the database write lock),
// and one process additionally queues its own writers on a mutex so they
// do not spin in SQLite's busy handler.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/orkestr-eu/orkestr/internal/store"
)

// Store is a store.Store on SQLite or PostgreSQL. It is safe for
// concurrent use.
type Store struct {
	db *sql.DB
	d  dialect
	// writeMu queues this process's SQLite write transactions (capacity 1);
	// nil on PostgreSQL.
	writeMu chan struct{}
	now     func() time.Time
}

var _ store.Store = (*Store)(nil)

// SQLite connection settings. busy_timeout covers other processes holding
// the write lock (migrations at start, the admin CLI beside the server).
const (
	sqliteBusyTimeoutMS = 15000
	pgMaxOpenConns      = 20
)

// Open opens (creating if need be) and migrates the store named by rawURL:
//
//	sqlite:///abs/path/orkestr.db   SQLite file (sqlite:relative/path also works)
//	/abs/path/orkestr.db            a plain path: SQLite
//	postgres://user:pw@host/db?...  PostgreSQL (also postgresql://)
func Open(ctx context.Context, rawURL string) (*Store, error) {
	switch {
	case strings.HasPrefix(rawURL, "postgres://"), strings.HasPrefix(rawURL, "postgresql://"):
		return OpenPostgres(ctx, rawURL)
	case strings.HasPrefix(rawURL, "sqlite://"):
		return OpenSQLite(ctx, strings.TrimPrefix(rawURL, "sqlite://"))
	case strings.HasPrefix(rawURL, "sqlite:"):
		return OpenSQLite(ctx, strings.TrimPrefix(rawURL, "sqlite:"))
	case strings.Contains(rawURL, "://"):
		scheme, _, _ := strings.Cut(rawURL, "://")
		return nil, fmt.Errorf("sqlstore: unsupported database URL scheme %q (use sqlite:///path/orkestr.db or postgres://...)", scheme)
	case rawURL == "":
		return nil, errors.New("sqlstore: empty database URL")
	default:
		return OpenSQLite(ctx, rawURL)
	}
}

// OpenSQLite opens (creating if need be) and migrates the SQLite database
// file at path. The parent directory is created (0700) and a new file is
// created 0600.
func OpenSQLite(ctx context.Context, path string) (*Store, error) {
	if path == "" || path == ":memory:" || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("sqlstore: SQLite needs a file path, not %q", path)
	}
	if strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("sqlstore: SQLite path %q must not contain '?' or '#'", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("sqlstore: %w", err)
	}
	// Create the file ourselves so it is private; SQLite gives its -wal and
	// -shm files the same mode.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: %w", err)
	}
	f.Close()
	q := url.Values{}
	q.Add("_pragma", "busy_timeout("+strconv.Itoa(sqliteBusyTimeoutMS)+")")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", abs+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("sqlstore: opening SQLite: %w", err)
	}
	db.SetMaxOpenConns(16)
	// Keep every connection: a new one runs its pragmas and reads the schema.
	db.SetMaxIdleConns(16)
	db.SetConnMaxIdleTime(5 * time.Minute)
	s := &Store{db: db, d: sqliteDialect, writeMu: make(chan struct{}, 1), now: time.Now}
	if err := s.sqliteWAL(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.init(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// OpenPostgres connects to and migrates the PostgreSQL database named by a
// postgres:// URL (any libpq-style URL pgx accepts).
func OpenPostgres(ctx context.Context, rawURL string) (*Store, error) {
	cfg, err := pgx.ParseConfig(rawURL)
	if err != nil {
		// pgx redacts the password in its parse errors.
		return nil, fmt.Errorf("sqlstore: parsing the PostgreSQL URL: %w", err)
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(pgMaxOpenConns)
	db.SetMaxIdleConns(pgMaxOpenConns / 2)
	db.SetConnMaxIdleTime(5 * time.Minute)
	s := &Store{db: db, d: postgresDialect, now: time.Now}
	if err := s.init(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// sqliteWAL switches the database to WAL mode (persistent, so once per
// file). It is not in the DSN because on a new file two processes
// converting at once can get SQLITE_BUSY without SQLite's busy handler
// being consulted (both hold a read lock and want the write lock); here that
// is retried until the busy timeout. Once the file is in WAL mode every
// connection finds it so and the pragma takes no lock.
func (s *Store) sqliteWAL(ctx context.Context) error {
	deadline := time.Now().Add(sqliteBusyTimeoutMS * time.Millisecond)
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		var mode string
		err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode = WAL").Scan(&mode)
		if err == nil {
			if !strings.EqualFold(mode, "wal") {
				return fmt.Errorf("sqlstore: SQLite refused WAL mode (journal_mode is %q)", mode)
			}
			return nil
		}
		if !isBusy(err) || time.Now().After(deadline) {
			return fmt.Errorf("sqlstore: setting SQLite WAL mode: %w", err)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *Store) init(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("sqlstore: connecting to %s: %w", s.d.name, err)
	}
	if err := s.migrate(ctx); err != nil {
		return fmt.Errorf("sqlstore: migrating the %s schema: %w", s.d.name, err)
	}
	return nil
}

// Driver names the database: "sqlite" or "postgres".
func (s *Store) Driver() string { return s.d.name }

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// dialect is everything that differs between the two databases.
type dialect struct {
	name string
	// numbered placeholders ($1, $2, ...) instead of '?'.
	dollar bool
	// lockAccount is appended to "SELECT id FROM accounts WHERE id = ?"
	// to serialize an account's conditional writes (and to a SELECT of a
	// node's row in LoseNodeIfLapsed, against its heartbeats).
	lockAccount string
	// binaryCollation replaces {{binary_collation}} in migrations.
	binaryCollation string
	// migrationsTableExists selects one boolean.
	migrationsTableExists string
	// nowMS is the database's clock in unix milliseconds, for what
	// several hosts compare (heartbeats, leases): on PostgreSQL the
	// server's clock, whatever the replicas' clocks say. On SQLite (one
	// host) it is that host's clock, read by SQLite.
	nowMS string
}

var (
	sqliteDialect = dialect{
		name:                  "sqlite",
		binaryCollation:       "COLLATE BINARY",
		migrationsTableExists: "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
		nowMS:                 "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
	}
	postgresDialect = dialect{
		name:                  "postgres",
		dollar:                true,
		lockAccount:           " FOR NO KEY UPDATE",
		binaryCollation:       `COLLATE "C"`,
		migrationsTableExists: "SELECT to_regclass('schema_migrations') IS NOT NULL",
		// now(): the transaction's start, so one statement sees one time.
		nowMS: "CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT)",
	}
)

// q rewrites a query written with '?' placeholders for the dialect. Queries
// in this package never contain '?' other than as placeholders.
func (d dialect) q(query string) string {
	if !d.dollar {
		return query
	}
	var b strings.Builder
	b.Grow(len(query) + 16)
	n := 0
	for i := 0; i < len(query); i++ {
		if query[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(query[i])
	}
	return b.String()
}

// querier is what *sql.DB and *sql.Tx have in common.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (s *Store) exec(ctx context.Context, q querier, query string, args ...any) (sql.Result, error) {
	return q.ExecContext(ctx, s.d.q(query), args...)
}

func (s *Store) query(ctx context.Context, q querier, query string, args ...any) (*sql.Rows, error) {
	return q.QueryContext(ctx, s.d.q(query), args...)
}

func (s *Store) queryRow(ctx context.Context, q querier, query string, args ...any) *sql.Row {
	return q.QueryRowContext(ctx, s.d.q(query), args...)
}

// lockWriter takes this process's SQLite write slot (a no-op on
// PostgreSQL); the returned func releases it.
func (s *Store) lockWriter(ctx context.Context) (func(), error) {
	if s.writeMu == nil {
		return func() {}, nil
	}
	select {
	case s.writeMu <- struct{}{}:
		return func() { <-s.writeMu }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// write runs one autocommit write statement.
func (s *Store) write(ctx context.Context, query string, args ...any) (sql.Result, error) {
	unlock, err := s.lockWriter(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.exec(ctx, s.db, query, args...)
}

// tx runs fn in a write transaction: BEGIN IMMEDIATE on SQLite, READ
// COMMITTED on PostgreSQL. fn's error rolls back and is returned as is.
func (s *Store) tx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	unlock, err := s.lockWriter(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// isUnique reports a unique or primary key violation.
func isUnique(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

// isBusy reports SQLite's SQLITE_BUSY or SQLITE_LOCKED (any extended code).
func isBusy(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		c := se.Code() & 0xff
		return c == sqlite3.SQLITE_BUSY || c == sqlite3.SQLITE_LOCKED
	}
	return false
}

// isForeignKey reports a foreign key violation (an unknown account).
func isForeignKey(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23503"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
	}
	return false
}

// Times: unix milliseconds, UTC.

func toMS(t time.Time) int64 { return t.UnixMilli() }

func fromMS(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

func toNullMS(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UnixMilli()
}

func fromNullMS(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := fromMS(v.Int64)
	return &t
}

// truncMS is what a time reads back as.
func truncMS(t time.Time) time.Time { return fromMS(toMS(t)) }

func truncMSPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := truncMS(*t)
	return &v
}
