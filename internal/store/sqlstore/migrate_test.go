package sqlstore_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
)

func migrationRows(t *testing.T, d testDB) (n, newest int) {
	t.Helper()
	ok(t, "schema_migrations", d.raw(t).QueryRow("SELECT COUNT(*), COALESCE(MAX(version), 0) FROM schema_migrations").Scan(&n, &newest))
	return n, newest
}

// An upgrade: a database made by an older orkestrd is migrated forward by
// the newer one and keeps its rows.
func TestMigrationsForwardFromOlderSchema(t *testing.T) {
	all := sqlstore.SchemaVersion()
	if all < 2 {
		t.Skip("needs at least two migrations")
	}
	eachDB(t, func(t *testing.T, d testDB) {
		restore := sqlstore.AsOlderBinary(1)
		s := d.open(t)
		restore()
		a := mkAccount(t, s, "from-v1")
		ok(t, "close", s.Close())
		if n, v := migrationRows(t, d); n != 1 || v != 1 {
			t.Fatalf("the older binary applied %d migrations up to %d, want 1", n, v)
		}
		s = d.open(t)
		if n, v := migrationRows(t, d); n != all || v != all {
			t.Fatalf("after the upgrade: %d migrations up to %d, want %d", n, v, all)
		}
		got, err := s.AccountByID(bg, a.ID)
		ok(t, "account after the upgrade", err)
		if got.Name != "from-v1" {
			t.Fatalf("account changed: %+v", got)
		}
	})
}

// A binary older than the schema refuses to start, says which versions
// are involved and what to do, and changes nothing.
func TestMigrationsOlderBinaryRefused(t *testing.T) {
	all := sqlstore.SchemaVersion()
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		mkAccount(t, s, "kept")
		ok(t, "close", s.Close())

		if all >= 2 {
			restore := sqlstore.AsOlderBinary(all - 1)
			_, err := sqlstore.Open(bg, d.url)
			restore()
			if !errors.Is(err, sqlstore.ErrSchemaTooNew) {
				t.Fatalf("an older binary opened a newer schema: %v", err)
			}
			for _, want := range []string{"schema is at version " + itoa(all), "knows versions up to " + itoa(all-1), "run the orkestrd that upgraded the database", "restore the backup"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		}

		// A migration from the future (a newer release's) is refused the same way.
		_, err := d.raw(t).Exec("INSERT INTO schema_migrations (version, name, applied_at) VALUES (" + itoa(all+1) + ", '9999_from_the_future', 0)")
		ok(t, "insert a future migration", err)
		_, err = sqlstore.Open(bg, d.url)
		if !errors.Is(err, sqlstore.ErrSchemaTooNew) || !strings.Contains(err.Error(), "9999_from_the_future") {
			t.Fatalf("a future schema: %v", err)
		}
		if n, v := migrationRows(t, d); n != all+1 || v != all+1 {
			t.Fatalf("the refused start changed schema_migrations: %d rows up to %d", n, v)
		}
		var accounts int
		ok(t, "accounts", d.raw(t).QueryRow("SELECT COUNT(*) FROM accounts").Scan(&accounts))
		if accounts != 1 {
			t.Fatalf("accounts: %d", accounts)
		}

		// A migration renamed under the same number (another build) too.
		_, err = d.raw(t).Exec("DELETE FROM schema_migrations WHERE version = " + itoa(all+1))
		ok(t, "delete", err)
		_, err = d.raw(t).Exec("UPDATE schema_migrations SET name = '0001_other_build' WHERE version = 1")
		ok(t, "rename", err)
		_, err = sqlstore.Open(bg, d.url)
		if err == nil || !strings.Contains(err.Error(), "different build") {
			t.Fatalf("a renamed migration: %v", err)
		}
	})
}

func itoa(n int) string { return strconv.Itoa(n) }

// BackupTo copies a SQLite store while it is written to; the copy opens on
// its own and holds the rows committed before it. PostgreSQL is refused
// with the pointer to pg_dump.
func TestBackupTo(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "acme")
		sb := newSandbox(a.ID, msNow())
		sb.Status, sb.SnapshotDir = store.StatusPaused, "/old/data/snapshots/"+sb.ID+"-X"
		mkSandbox(t, s, sb)
		path := filepath.Join(t.TempDir(), "backup.db")
		err := s.BackupTo(bg, path)
		if d.kind == "postgres" {
			if !errors.Is(err, sqlstore.ErrBackupUnsupported) || !strings.Contains(err.Error(), "pg_dump") {
				t.Fatalf("postgres: %v", err)
			}
			return
		}
		ok(t, "BackupTo", err)
		if err := s.BackupTo(bg, path); err == nil {
			t.Fatal("a second backup overwrote the first")
		}
		// Writes after the backup are not in it.
		mkAccount(t, s, "later")
		fi, err := os.Stat(path)
		ok(t, "stat", err)
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("backup mode %v", fi.Mode())
		}
		cp, err := sqlstore.OpenSQLite(bg, path)
		ok(t, "open the backup", err)
		defer cp.Close()
		ok(t, "integrity", cp.IntegrityCheck(bg))
		accts, err := cp.ListAccounts(bg)
		ok(t, "accounts", err)
		if len(accts) != 1 || accts[0].Name != "acme" {
			t.Fatalf("accounts in the backup: %+v", accts)
		}
		n, err := cp.NameSnapshots(bg)
		ok(t, "name snapshots", err)
		got, err := cp.GetSandbox(bg, a.ID, sb.ID)
		ok(t, "sandbox", err)
		if n != 1 || got.SnapshotDir != sb.ID+"-X" {
			t.Fatalf("named %d: %q", n, got.SnapshotDir)
		}
		if n, err := cp.NameSnapshots(bg); err != nil || n != 0 {
			t.Fatalf("naming again changed %d rows (%v)", n, err)
		}
	})
}
