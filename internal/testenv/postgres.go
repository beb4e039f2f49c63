package testenv

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
)

// Environment variables that point tests at PostgreSQL.
const (
	EnvPostgresURL  = "ORKESTR_TEST_DATABASE_URL"
	EnvSkipPostgres = "ORKESTR_TEST_SKIP_POSTGRES"
)

// FreshPostgres creates an empty database for one test through the admin
// URL in $ORKESTR_TEST_DATABASE_URL, returns its URL and drops it when the
// test ends. Without the variable the test fails (`make test` sets it),
// unless ORKESTR_TEST_SKIP_POSTGRES=1 asks to skip.
func FreshPostgres(t testing.TB) string {
	t.Helper()
	if os.Getenv(EnvSkipPostgres) == "1" {
		t.Skip(EnvSkipPostgres + "=1: skipping PostgreSQL")
	}
	if testing.Short() {
		t.Skip("-short: PostgreSQL is left to `make test`")
	}
	admin := os.Getenv(EnvPostgresURL)
	if admin == "" {
		t.Fatal(EnvPostgresURL + " is not set, so the PostgreSQL tests cannot run. " +
			"Run `make test` (it starts a local PostgreSQL and sets it), or set " + EnvPostgresURL +
			"=postgres://USER:PASSWORD@HOST:5432/postgres?sslmode=disable (a role that may CREATE DATABASE); " +
			"set " + EnvSkipPostgres + "=1 to skip PostgreSQL explicitly.")
	}
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("%s: %v", EnvPostgresURL, err)
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	name := "orkestr_test_" + hex.EncodeToString(b)
	ctx := context.Background()
	adb, err := sql.Open("pgx", admin)
	if err != nil {
		t.Fatal(err)
	}
	defer adb.Close()
	if _, err := adb.ExecContext(ctx, `CREATE DATABASE "`+name+`"`); err != nil {
		t.Fatalf("creating the test database via %s: %v", EnvPostgresURL, err)
	}
	// Registered before anything opens the database, so it runs after
	// they close.
	t.Cleanup(func() {
		adb, err := sql.Open("pgx", admin)
		if err != nil {
			t.Errorf("dropping %s: %v", name, err)
			return
		}
		defer adb.Close()
		if _, err := adb.ExecContext(ctx, `DROP DATABASE IF EXISTS "`+name+`" WITH (FORCE)`); err != nil {
			t.Errorf("dropping %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String()
}
