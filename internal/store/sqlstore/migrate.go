package sqlstore

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Migrations are migrations/NNNN_name.sql, applied in version order, each
// in the same transaction as its schema_migrations row. They only go
// forward (there are no down migrations): a binary older than the schema
// refuses to open it (ErrSchemaTooNew). The whole run holds
// a lock that makes concurrent starts take turns: a transaction-scoped
// advisory lock on PostgreSQL, the write lock (BEGIN IMMEDIATE) on SQLite.
// A start with nothing pending changes nothing.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrationLockKey is the pg_advisory_xact_lock key ("orkestr" in ASCII).
const migrationLockKey int64 = 0x6f726b65737472

type migration struct {
	version int64
	name    string
	body    string
}

// knownMigrations, when positive, makes this binary know only its first n
// migrations: tests use it to play an older orkestrd.
var knownMigrations int

func loadMigrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		name := strings.TrimSuffix(e.Name(), ".sql")
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.ParseInt(num, 10, 64)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration file %q is not named NNNN_name.sql", e.Name())
		}
		body, err := migrationFiles.ReadFile("migrations/" + e.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: name, body: string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i, m := range out {
		if m.version != int64(i+1) {
			return nil, fmt.Errorf("migration versions must be 1, 2, 3, ... without gaps; %q is out of place", m.name)
		}
	}
	if knownMigrations > 0 && knownMigrations < len(out) {
		out = out[:knownMigrations]
	}
	return out, nil
}

// SchemaVersion is the newest schema version this binary knows (the
// number of its migrations).
func SchemaVersion() int {
	all, err := loadMigrations()
	if err != nil {
		return 0
	}
	return len(all)
}

// ErrSchemaTooNew is returned by Open when the database was migrated by a
// newer orkestrd: migrations are forward-only, and an older binary must
// not write to a schema it does not know.
var ErrSchemaTooNew = errors.New("the database schema is newer than this orkestrd")

// checkApplied refuses a database whose applied migrations this binary
// does not know, or knows under other names.
func checkApplied(applied map[int64]string, all []migration) error {
	var newest int64
	newestName := ""
	for v, name := range applied {
		if v > newest {
			newest, newestName = v, name
		}
	}
	if newest > int64(len(all)) {
		return fmt.Errorf("%w: the schema is at version %d (%s) but this binary knows versions up to %d (%s). "+
			"Migrations only go forward, so this orkestrd refuses to start rather than run on a schema it does not know: "+
			"run the orkestrd that upgraded the database (or a newer one), or restore the backup taken before the upgrade",
			ErrSchemaTooNew, newest, newestName, len(all), all[len(all)-1].name)
	}
	for v, name := range applied {
		if v < 1 {
			return fmt.Errorf("the database has a migration numbered %d (%s), which no orkestrd writes; schema_migrations was edited by hand", v, name)
		}
		if all[v-1].name != name {
			return fmt.Errorf("the database's migration %d is %q but this binary's is %q: the database was migrated by a different build of orkestrd; restore a backup or run that build", v, name, all[v-1].name)
		}
	}
	return nil
}

// statements splits a migration into statements for the dialect: whole-line
// "--" comments dropped, split at ';', {{binary_collation}} substituted.
func (d dialect) statements(body string) []string {
	var kept []string
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "--") {
			continue
		}
		kept = append(kept, line)
	}
	text := strings.ReplaceAll(strings.Join(kept, "\n"), "{{binary_collation}}", d.binaryCollation)
	var out []string
	for _, st := range strings.Split(text, ";") {
		if st = strings.TrimSpace(st); st != "" {
			out = append(out, st)
		}
	}
	return out
}

func (s *Store) migrate(ctx context.Context) error {
	all, err := loadMigrations()
	if err != nil {
		return err
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		if s.d.name == "postgres" {
			if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey); err != nil {
				return fmt.Errorf("taking the migration lock: %w", err)
			}
		}
		// Checked before creating, so a start with nothing to do runs no
		// DDL (and needs no CREATE privilege on PostgreSQL).
		var exists bool
		if err := tx.QueryRowContext(ctx, s.d.migrationsTableExists).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			if _, err := tx.ExecContext(ctx, `CREATE TABLE schema_migrations (
				version     BIGINT PRIMARY KEY,
				name        TEXT NOT NULL,
				applied_at  BIGINT NOT NULL
			)`); err != nil {
				return err
			}
		}
		rows, err := tx.QueryContext(ctx, "SELECT version, name FROM schema_migrations ORDER BY version")
		if err != nil {
			return err
		}
		applied := map[int64]string{}
		for rows.Next() {
			var v int64
			var name string
			if err := rows.Scan(&v, &name); err != nil {
				rows.Close()
				return err
			}
			applied[v] = name
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if err := checkApplied(applied, all); err != nil {
			return err
		}
		for _, m := range all {
			if _, ok := applied[m.version]; ok {
				continue
			}
			for i, st := range s.d.statements(m.body) {
				if _, err := tx.ExecContext(ctx, st); err != nil {
					return fmt.Errorf("migration %s, statement %d: %w", m.name, i+1, err)
				}
			}
			if _, err := s.exec(ctx, tx, "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
				m.version, m.name, toMS(time.Now())); err != nil {
				return err
			}
		}
		return nil
	})
}
