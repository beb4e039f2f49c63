package sqlstore_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// Every test runs against both databases:
//
//   - SQLite: a fresh file in t.TempDir();
//   - PostgreSQL: a fresh database orkestr_test_<random> created through
//     ORKESTR_TEST_DATABASE_URL (an admin URL, e.g.
//     postgres://orkestr:orkestr@127.0.0.1:5432/postgres?sslmode=disable)
//     and dropped when the test ends.
//
// Without ORKESTR_TEST_DATABASE_URL the PostgreSQL half fails, unless
// ORKESTR_TEST_SKIP_POSTGRES=1 says to skip it.

// testDB is one fresh, empty database.
type testDB struct {
	kind string // "sqlite" or "postgres"
	url  string // for sqlstore.Open
}

// open opens (and migrates) the database; the store is closed when the
// test ends.
func (d testDB) open(t testing.TB) *sqlstore.Store {
	t.Helper()
	s, err := sqlstore.Open(context.Background(), d.url)
	if err != nil {
		t.Fatalf("Open(%s): %v", d.kind, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// raw opens a plain database/sql handle on the same database.
func (d testDB) raw(t testing.TB) *sql.DB {
	t.Helper()
	var db *sql.DB
	var err error
	if d.kind == "postgres" {
		db, err = sql.Open("pgx", d.url)
	} else {
		db, err = sql.Open("sqlite", strings.TrimPrefix(d.url, "sqlite://"))
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// eachDB runs fn as a subtest on a fresh SQLite and a fresh PostgreSQL
// database.
func eachDB(t *testing.T, fn func(t *testing.T, d testDB)) {
	t.Run("sqlite", func(t *testing.T) {
		fn(t, testDB{kind: "sqlite", url: "sqlite://" + filepath.Join(t.TempDir(), "orkestr.db")})
	})
	t.Run("postgres", func(t *testing.T) {
		fn(t, freshPostgres(t))
	})
}

func freshPostgres(t *testing.T) testDB {
	t.Helper()
	return testDB{kind: "postgres", url: testenv.FreshPostgres(t)}
}

func newID(prefix string) string { return prefix + ulid.Make().String() }

func mkAccount(t testing.TB, s *sqlstore.Store, name string) store.Account {
	t.Helper()
	a := store.Account{ID: newID("acc_"), Name: name, Plan: "pro", CreatedAt: time.Now().UTC().Truncate(time.Millisecond)}
	if err := s.CreateAccount(context.Background(), a); err != nil {
		t.Fatalf("CreateAccount(%s): %v", name, err)
	}
	return a
}

func newSandbox(accountID string, created time.Time) store.Sandbox {
	exp := created.Add(10 * time.Minute)
	return store.Sandbox{
		ID: newID("sbx_"), AccountID: accountID, Status: store.StatusRunning, Template: "python-3.12",
		Size: "small", CPU: 0.5, MemoryMB: 512, Network: "off", Region: "fsn1", TimeoutSeconds: 600,
		ExpiresAt: &exp, EnvKeys: []string{"OPENAI_API_KEY"}, Metadata: map[string]string{"agentRun": "r_1"},
		Node: "node-1", RuntimeID: "rt-1", CreatedAt: created, UpdatedAt: created,
	}
}

func mkSandbox(t testing.TB, s *sqlstore.Store, sb store.Sandbox) store.Sandbox {
	t.Helper()
	if err := s.CreateSandbox(context.Background(), sb, 0); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	return sb
}

func ptr[T any](v T) *T { return &v }
