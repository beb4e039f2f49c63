package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrBackupUnsupported is returned by BackupTo on PostgreSQL, whose
// backups are pg_dump's and pg_basebackup's job (docs/operating.md).
var ErrBackupUnsupported = errors.New("orkestrd backs up SQLite only; back up PostgreSQL with pg_dump (see docs/operating.md, Backups)")

// BackupTo writes a consistent copy of a SQLite database to path (which
// must not exist) while the store stays in use: VACUUM INTO reads one
// snapshot of the database in a read transaction, so writers go on and
// the copy holds every transaction committed before it started, and none
// after. The copy is compacted and made 0600; SQLite creates it with the
// process umask, so put it in a private directory.
func (s *Store) BackupTo(ctx context.Context, path string) error {
	if s.d.name != "sqlite" {
		return ErrBackupUnsupported
	}
	if strings.ContainsAny(path, "?#") {
		return fmt.Errorf("backup path %q must not contain '?' or '#'", path)
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("backup file %s exists already", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if _, err := s.db.ExecContext(ctx, "VACUUM INTO ?", abs); err != nil {
		_ = os.Remove(abs)
		return fmt.Errorf("sqlite backup (VACUUM INTO %s): %w", abs, err)
	}
	return os.Chmod(abs, 0o600)
}

// NameSnapshots makes every snapshot reference a snapshot id, the base
// name of its directory: a node maps an id to its own snapshot directory,
// so a restored database works in any data directory. Rows written before
// snapshot ids held the directory's absolute path; they are converted.
// It returns how many rows changed.
func (s *Store) NameSnapshots(ctx context.Context) (int, error) {
	rows, err := s.query(ctx, s.db, "SELECT id, snapshot_dir FROM sandboxes WHERE snapshot_dir <> ''")
	if err != nil {
		return 0, err
	}
	moves := map[string]string{}
	for rows.Next() {
		var id, old string
		if err := rows.Scan(&id, &old); err != nil {
			rows.Close()
			return 0, err
		}
		if p := filepath.Base(old); p != old {
			moves[id] = p
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	for id, p := range moves {
		if _, err := s.write(ctx, "UPDATE sandboxes SET snapshot_dir = ? WHERE id = ?", p, id); err != nil {
			return 0, err
		}
	}
	return len(moves), nil
}

// IntegrityCheck runs SQLite's integrity_check (a no-op on PostgreSQL).
func (s *Store) IntegrityCheck(ctx context.Context) error {
	if s.d.name != "sqlite" {
		return nil
	}
	var res string
	if err := s.db.QueryRowContext(ctx, "PRAGMA integrity_check").Scan(&res); err != nil {
		return err
	}
	if res != "ok" {
		return fmt.Errorf("sqlite integrity_check: %s", res)
	}
	return nil
}
