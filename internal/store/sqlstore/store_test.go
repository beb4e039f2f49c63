package sqlstore_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
)

var bg = context.Background()

// canon gives every time one representation (same instant, UTC, all
// precision kept) so reflect.DeepEqual compares instants.
func canon(sb store.Sandbox) store.Sandbox {
	ct := func(t time.Time) time.Time { return time.Unix(t.Unix(), int64(t.Nanosecond())).UTC() }
	cp := func(t *time.Time) *time.Time {
		if t == nil {
			return nil
		}
		v := ct(*t)
		return &v
	}
	sb.CreatedAt, sb.UpdatedAt = ct(sb.CreatedAt), ct(sb.UpdatedAt)
	sb.ExpiresAt, sb.PausedAt, sb.TerminatedAt = cp(sb.ExpiresAt), cp(sb.PausedAt), cp(sb.TerminatedAt)
	return sb
}

func assertSame(t *testing.T, what string, got, want store.Sandbox) {
	t.Helper()
	if g, w := canon(got), canon(want); !reflect.DeepEqual(g, w) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, g, w)
	}
}

func isErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
}

func ok(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func msNow() time.Time { return time.Now().UTC().Truncate(time.Millisecond) }

func TestMigrationsIdempotent(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "first")
		ok(t, "close", s.Close())
		for i := 0; i < 3; i++ {
			s = d.open(t)
			got, err := s.AccountByID(bg, a.ID)
			ok(t, "AccountByID after reopen", err)
			if got.Name != "first" {
				t.Fatalf("reopened store lost the account: %+v", got)
			}
			ok(t, "close", s.Close())
		}
		var n, maxV int
		ok(t, "schema_migrations", d.raw(t).QueryRow("SELECT COUNT(*), MAX(version) FROM schema_migrations").Scan(&n, &maxV))
		if n == 0 || n != maxV {
			t.Fatalf("schema_migrations has %d rows up to version %d, want one row per migration", n, maxV)
		}
	})
}

func TestMigrationsConcurrentOpen(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		const n = 4
		var wg sync.WaitGroup
		errs := make([]error, n)
		stores := make([]*sqlstore.Store, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				stores[i], errs[i] = sqlstore.Open(bg, d.url)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			ok(t, fmt.Sprintf("concurrent Open %d", i), err)
			t.Cleanup(func() { stores[i].Close() })
		}
		// Every store works on the one schema.
		for i, s := range stores {
			mkAccount(t, s, fmt.Sprintf("acct-%d", i))
		}
		all, err := stores[0].ListAccounts(bg)
		ok(t, "ListAccounts", err)
		if len(all) != n {
			t.Fatalf("ListAccounts: %d accounts, want %d", len(all), n)
		}
		var rows, distinct int
		ok(t, "schema_migrations", d.raw(t).QueryRow("SELECT COUNT(*), COUNT(DISTINCT version) FROM schema_migrations").Scan(&rows, &distinct))
		if rows != distinct || rows == 0 {
			t.Fatalf("schema_migrations: %d rows, %d distinct versions", rows, distinct)
		}
	})
}

// TestMigrationsConcurrentProcesses starts several processes (this test
// binary, see TestHelperOpenProcess) that open a fresh database at once.
func TestMigrationsConcurrentProcesses(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		const n = 4
		var wg sync.WaitGroup
		outs := make([][]byte, n)
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cmd := exec.Command(os.Args[0], "-test.run=^TestHelperOpenProcess$", "-test.count=1")
				cmd.Env = append(os.Environ(), helperURLEnv+"="+d.url, helperNameEnv+"="+fmt.Sprintf("proc-%d", i))
				outs[i], errs[i] = cmd.CombinedOutput()
			}()
		}
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("process %d: %v\n%s", i, errs[i], outs[i])
			}
		}
		s := d.open(t)
		all, err := s.ListAccounts(bg)
		ok(t, "ListAccounts", err)
		if len(all) != n {
			t.Fatalf("%d accounts after %d processes each created one", len(all), n)
		}
	})
}

const (
	helperURLEnv  = "ORKESTR_TEST_HELPER_OPEN_URL"
	helperNameEnv = "ORKESTR_TEST_HELPER_ACCOUNT"
)

// TestHelperOpenProcess is a child process of
// TestMigrationsConcurrentProcesses; on its own it does nothing.
func TestHelperOpenProcess(t *testing.T) {
	u := os.Getenv(helperURLEnv)
	if u == "" {
		t.Skip("helper process for TestMigrationsConcurrentProcesses")
	}
	s, err := sqlstore.Open(bg, u)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	mkAccount(t, s, os.Getenv(helperNameEnv))
}

func TestOpenURLs(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		if s.Driver() != d.kind {
			t.Fatalf("Driver() = %q, want %q", s.Driver(), d.kind)
		}
		if d.kind == "sqlite" {
			dir := t.TempDir()
			for _, u := range []string{filepath.Join(dir, "a.db"), "sqlite:" + filepath.Join(dir, "b.db"), "sqlite://" + filepath.Join(dir, "sub", "c.db")} {
				s, err := sqlstore.Open(bg, u)
				ok(t, "Open "+u, err)
				s.Close()
			}
			s, err := sqlstore.OpenSQLite(bg, filepath.Join(dir, "d.db"))
			ok(t, "OpenSQLite", err)
			s.Close()
		}
		for _, bad := range []string{"", "mysql://x/y", "sqlite://"} {
			if s, err := sqlstore.Open(bg, bad); err == nil {
				s.Close()
				t.Fatalf("Open(%q) succeeded", bad)
			}
		}
	})
}

func TestAccounts(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "alpha")
		b := store.Account{ID: newID("acc_"), Name: "beta", Plan: "free", CreatedAt: a.CreatedAt.Add(time.Second)}
		ok(t, "CreateAccount beta", s.CreateAccount(bg, b))

		dup := store.Account{ID: newID("acc_"), Name: "alpha", Plan: "team", CreatedAt: msNow()}
		isErr(t, "CreateAccount with a taken name", s.CreateAccount(bg, dup), store.ErrConflict)

		got, err := s.AccountByID(bg, a.ID)
		ok(t, "AccountByID", err)
		if got.ID != a.ID || got.Name != a.Name || got.Plan != a.Plan || !got.CreatedAt.Equal(a.CreatedAt) {
			t.Fatalf("AccountByID = %+v, want %+v", got, a)
		}
		got, err = s.AccountByName(bg, "beta")
		ok(t, "AccountByName", err)
		if got.ID != b.ID {
			t.Fatalf("AccountByName(beta) = %+v", got)
		}
		_, err = s.AccountByID(bg, "acc_missing")
		isErr(t, "AccountByID missing", err, store.ErrNotFound)
		_, err = s.AccountByName(bg, "gamma")
		isErr(t, "AccountByName missing", err, store.ErrNotFound)

		ok(t, "SetAccountPlan", s.SetAccountPlan(bg, b.ID, "team"))
		got, _ = s.AccountByID(bg, b.ID)
		if got.Plan != "team" {
			t.Fatalf("plan = %q after SetAccountPlan", got.Plan)
		}
		isErr(t, "SetAccountPlan missing", s.SetAccountPlan(bg, "acc_missing", "pro"), store.ErrNotFound)

		list, err := s.ListAccounts(bg)
		ok(t, "ListAccounts", err)
		if len(list) != 2 || list[0].ID != a.ID || list[1].ID != b.ID {
			t.Fatalf("ListAccounts = %+v", list)
		}
	})
}

func TestKeys(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "a")
		b := mkAccount(t, s, "b")
		now := msNow()
		mk := func(acc, prefix, hash string, created time.Time, exp *time.Time) store.APIKey {
			k := store.APIKey{ID: newID("key_"), AccountID: acc, Prefix: prefix, Hash: hash,
				Scopes: []string{store.ScopeSandboxesRead, store.ScopeSandboxesWrite}, CreatedAt: created, ExpiresAt: exp}
			ok(t, "CreateKey", s.CreateKey(bg, k))
			return k
		}
		k1 := mk(a.ID, "ork_AAAAAAAA", "h1", now, nil)
		k2 := mk(a.ID, "ork_BBBBBBBB", "h2", now.Add(time.Second), ptr(now.Add(-time.Hour))) // expired
		k3 := mk(a.ID, "ork_BBBBBBBB", "h3", now.Add(2*time.Second), nil)                    // same prefix as k2
		kb := mk(b.ID, "ork_CCCCCCCC", "h4", now, nil)

		isErr(t, "CreateKey duplicate hash", s.CreateKey(bg, store.APIKey{ID: newID("key_"), AccountID: a.ID, Prefix: "ork_x", Hash: "h1", CreatedAt: now}), store.ErrConflict)
		isErr(t, "CreateKey unknown account", s.CreateKey(bg, store.APIKey{ID: newID("key_"), AccountID: "acc_missing", Prefix: "ork_x", Hash: "hx", CreatedAt: now}), store.ErrNotFound)

		got, err := s.KeyByHash(bg, "h2")
		ok(t, "KeyByHash expired", err)
		if got.ID != k2.ID || got.ExpiresAt == nil || !got.ExpiresAt.Equal(*k2.ExpiresAt) || !reflect.DeepEqual(got.Scopes, k2.Scopes) ||
			got.Prefix != k2.Prefix || got.AccountID != a.ID || !got.CreatedAt.Equal(k2.CreatedAt) || got.RevokedAt != nil || got.LastUsedAt != nil {
			t.Fatalf("KeyByHash(h2) = %+v, want %+v", got, k2)
		}
		_, err = s.KeyByHash(bg, "nope")
		isErr(t, "KeyByHash unknown", err, store.ErrNotFound)

		list, err := s.ListKeys(bg, a.ID)
		ok(t, "ListKeys", err)
		if len(list) != 3 || list[0].ID != k1.ID || list[1].ID != k2.ID || list[2].ID != k3.ID {
			t.Fatalf("ListKeys(a) = %+v", list)
		}

		// Revoke by id; the revoked key is still found by hash.
		revokedAt := now.Add(time.Minute)
		ok(t, "RevokeKey by id", s.RevokeKey(bg, a.ID, k1.ID, revokedAt))
		got, err = s.KeyByHash(bg, "h1")
		ok(t, "KeyByHash revoked", err)
		if got.RevokedAt == nil || !got.RevokedAt.Equal(revokedAt) {
			t.Fatalf("RevokedAt = %v, want %v", got.RevokedAt, revokedAt)
		}
		// Revoking again keeps the first time.
		ok(t, "RevokeKey again", s.RevokeKey(bg, a.ID, k1.ID, revokedAt.Add(time.Hour)))
		got, _ = s.KeyByHash(bg, "h1")
		if !got.RevokedAt.Equal(revokedAt) {
			t.Fatalf("second revoke moved RevokedAt to %v", got.RevokedAt)
		}
		// Revoke by prefix.
		ok(t, "RevokeKey by prefix", s.RevokeKey(bg, b.ID, "ork_CCCCCCCC", revokedAt))
		got, _ = s.KeyByHash(bg, "h4")
		if got.RevokedAt == nil {
			t.Fatal("revoke by prefix did not revoke")
		}
		// A prefix two keys share is ambiguous.
		isErr(t, "RevokeKey ambiguous prefix", s.RevokeKey(bg, a.ID, "ork_BBBBBBBB", revokedAt), store.ErrConflict)
		// Unknown, and another account's key (by id and by prefix).
		isErr(t, "RevokeKey unknown", s.RevokeKey(bg, a.ID, "key_missing", revokedAt), store.ErrNotFound)
		isErr(t, "RevokeKey other account's id", s.RevokeKey(bg, a.ID, kb.ID, revokedAt), store.ErrNotFound)
		isErr(t, "RevokeKey other account's prefix", s.RevokeKey(bg, b.ID, "ork_AAAAAAAA", revokedAt), store.ErrNotFound)
		for _, h := range []string{"h2", "h3"} {
			if got, _ := s.KeyByHash(bg, h); got.RevokedAt != nil {
				t.Fatalf("key %s was revoked by a refused RevokeKey", h)
			}
		}

		// TouchKey keeps the latest use.
		t1 := now.Add(5 * time.Minute)
		ok(t, "TouchKey", s.TouchKey(bg, k3.ID, t1))
		ok(t, "TouchKey earlier", s.TouchKey(bg, k3.ID, t1.Add(-time.Minute)))
		got, _ = s.KeyByHash(bg, "h3")
		if got.LastUsedAt == nil || !got.LastUsedAt.Equal(t1) {
			t.Fatalf("LastUsedAt = %v, want %v", got.LastUsedAt, t1)
		}
		isErr(t, "TouchKey unknown", s.TouchKey(bg, "key_missing", t1), store.ErrNotFound)

		list, _ = s.ListKeys(bg, b.ID)
		if len(list) != 1 || list[0].ID != kb.ID {
			t.Fatalf("ListKeys(b) = %+v", list)
		}
		list, err = s.ListKeys(bg, "acc_missing")
		if err != nil || len(list) != 0 {
			t.Fatalf("ListKeys(unknown) = %v, %v", list, err)
		}
	})
}

func TestSandboxCRUD(t *testing.T) {
	// Writes marked unflushed (PostgreSQL: committed without waiting for
	// the disk) behave as flushed ones in every other way.
	for name, ctx := range map[string]context.Context{"flushed": bg, "unflushed": store.Unflushed(bg)} {
		t.Run(name, func(t *testing.T) {
			eachDB(t, func(t *testing.T, d testDB) {
				s := d.open(t)
				a := mkAccount(t, s, "a")
				created := msNow().Add(-time.Minute)
				sb := newSandbox(a.ID, created)
				sb.Status = store.StatusStarting
				sb.ExpiresAt = nil
				ok(t, "CreateSandbox", s.CreateSandbox(ctx, sb, 5))
				isErr(t, "CreateSandbox duplicate id", s.CreateSandbox(ctx, sb, 0), store.ErrConflict)
				bad := newSandbox("acc_missing", created)
				isErr(t, "CreateSandbox unknown account", s.CreateSandbox(ctx, bad, 0), store.ErrNotFound)

				got, err := s.GetSandbox(ctx, a.ID, sb.ID)
				ok(t, "GetSandbox", err)
				assertSame(t, "GetSandbox after create", got, sb)
				_, err = s.GetSandbox(ctx, a.ID, "sbx_missing")
				isErr(t, "GetSandbox missing", err, store.ErrNotFound)

				// Start it: every mutable field changes.
				exp := msNow().Add(10 * time.Minute)
				got.Status, got.RuntimeID, got.ExpiresAt = store.StatusRunning, "rt-2", &exp
				got.Template, got.Size, got.CPU, got.MemoryMB, got.Network, got.Region = "node-22", "medium", 2, 4096, "on", "hel1"
				got.TimeoutSeconds, got.RemainingMS, got.EnvKeys = 1200, 1234, []string{"A", "B"}
				got.Metadata = map[string]string{"x": "y"}
				got.Node, got.SnapshotDir, got.SnapshotBytes, got.ErrorMessage = "node-2", "/snap", 99, "oops"
				before := time.Now().Add(-time.Second)
				up, err := s.UpdateSandbox(ctx, got, 0)
				ok(t, "UpdateSandbox", err)
				if up.Version != got.Version+1 {
					t.Fatalf("Version = %d, want %d", up.Version, got.Version+1)
				}
				if up.UpdatedAt.Before(before) || up.UpdatedAt.After(time.Now().Add(time.Second)) {
					t.Fatalf("UpdatedAt = %v, want about now", up.UpdatedAt)
				}
				want := got
				want.Version, want.UpdatedAt = up.Version, up.UpdatedAt
				assertSame(t, "UpdateSandbox result", up, want)
				again, err := s.GetSandbox(ctx, a.ID, sb.ID)
				ok(t, "GetSandbox after update", err)
				assertSame(t, "GetSandbox after update", again, up)

				// Terminate it: optional times set, others cleared.
				term := msNow()
				up.Status, up.TerminatedAt, up.ExpiresAt, up.PausedAt = store.StatusTerminated, &term, nil, ptr(term.Add(-time.Second))
				up2, err := s.UpdateSandbox(ctx, up, 0)
				ok(t, "UpdateSandbox terminate", err)
				again, _ = s.GetSandbox(ctx, a.ID, sb.ID)
				assertSame(t, "GetSandbox after terminate", again, up2)
				if again.Version != 2 {
					t.Fatalf("Version = %d after two updates, want 2", again.Version)
				}

				// Updating a stale copy, or a missing sandbox.
				_, err = s.UpdateSandbox(ctx, up, 0)
				isErr(t, "UpdateSandbox stale", err, store.ErrStale)
				missing := up2
				missing.ID = "sbx_missing"
				_, err = s.UpdateSandbox(ctx, missing, 0)
				isErr(t, "UpdateSandbox missing", err, store.ErrNotFound)

				// nil and empty lists/maps round-trip as given.
				for _, c := range []struct {
					env []string
					md  map[string]string
				}{{nil, nil}, {[]string{}, map[string]string{}}} {
					x := newSandbox(a.ID, msNow())
					x.EnvKeys, x.Metadata = c.env, c.md
					mkSandbox(t, s, x)
					g, err := s.GetSandbox(ctx, a.ID, x.ID)
					ok(t, "GetSandbox", err)
					assertSame(t, "nil/empty round trip", g, x)
				}
			})
		})
	}
}

func TestTenancy(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "a")
		b := mkAccount(t, s, "b")
		sa := mkSandbox(t, s, newSandbox(a.ID, msNow()))

		_, err := s.GetSandbox(bg, b.ID, sa.ID)
		isErr(t, "GetSandbox of another account's sandbox", err, store.ErrNotFound)

		// Updating it as b (AccountID swapped) must not touch it.
		steal := sa
		steal.AccountID = b.ID
		steal.Status = store.StatusTerminated
		_, err = s.UpdateSandbox(bg, steal, 0)
		isErr(t, "UpdateSandbox as another account", err, store.ErrNotFound)
		got, _ := s.GetSandbox(bg, a.ID, sa.ID)
		if got.Status != store.StatusRunning || got.Version != 0 {
			t.Fatalf("another account's update changed the sandbox: %+v", got)
		}

		page, next, err := s.ListSandboxes(bg, b.ID, store.ListFilter{Limit: 10})
		ok(t, "ListSandboxes b", err)
		if len(page) != 0 || next != "" {
			t.Fatalf("account b lists %d sandboxes", len(page))
		}
		// a's cursor does not reveal a's sandboxes to b.
		mkSandbox(t, s, newSandbox(a.ID, msNow().Add(time.Second)))
		_, next, err = s.ListSandboxes(bg, a.ID, store.ListFilter{Limit: 1})
		ok(t, "ListSandboxes a", err)
		page, _, err = s.ListSandboxes(bg, b.ID, store.ListFilter{Limit: 10, Cursor: next})
		ok(t, "ListSandboxes b with a's cursor", err)
		if len(page) != 0 {
			t.Fatalf("account b lists %d of a's sandboxes via a cursor", len(page))
		}
		// A paused-cap check on a only counts a's sandboxes.
		pb := newSandbox(b.ID, msNow())
		pb.Status = store.StatusPaused
		mkSandbox(t, s, pb)
		sa.Status = store.StatusPaused
		_, err = s.UpdateSandbox(bg, sa, 1)
		ok(t, "pause a's sandbox with b at its cap", err)
	})
}

func TestListPaging(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "a")
		other := mkAccount(t, s, "other")
		base := msNow().Add(-time.Hour)
		var want []store.Sandbox
		for i := range 23 {
			// Groups of three share a created_at, so the id breaks ties.
			sb := newSandbox(a.ID, base.Add(time.Duration(i/3)*time.Second))
			want = append(want, mkSandbox(t, s, sb))
			mkSandbox(t, s, newSandbox(other.ID, base.Add(time.Duration(i)*time.Second)))
		}
		sort.Slice(want, func(i, j int) bool {
			if !want[i].CreatedAt.Equal(want[j].CreatedAt) {
				return want[i].CreatedAt.After(want[j].CreatedAt)
			}
			return want[i].ID > want[j].ID
		})

		// Newer sandboxes keep arriving while we page.
		stop := make(chan struct{})
		var inserted atomic.Int64
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if int(inserted.Load())+len(want) >= 199 {
					// The full list below is one page of 200: a slow
					// host must not page so long that it overflows.
					<-stop
					return
				}
				if err := s.CreateSandbox(bg, newSandbox(a.ID, msNow()), 0); err != nil {
					t.Errorf("concurrent CreateSandbox: %v", err)
					return
				}
				inserted.Add(1)
			}
		}()
		// Let some land before the first page (they are newer than want, so
		// they come first and are skipped below).
		waitInserted := func(n int64) {
			deadline := time.Now().Add(30 * time.Second)
			for inserted.Load() < n {
				if time.Now().After(deadline) {
					t.Fatalf("the concurrent inserter stalled at %d", inserted.Load())
				}
				time.Sleep(time.Millisecond)
			}
		}
		waitInserted(3)
		var got []store.Sandbox
		page, next, err := s.ListSandboxes(bg, a.ID, store.ListFilter{Limit: 5})
		ok(t, "first page", err)
		// Skip the concurrently inserted ones at the head of the first
		// pages; from there on pages must be exactly want.
		cursor := next
		for _, sb := range page {
			if sb.CreatedAt.After(base.Add(time.Hour - time.Minute)) {
				continue
			}
			got = append(got, sb)
		}
		pages := 1
		for cursor != "" {
			waitInserted(int64(3 + pages*2)) // more arrive between pages
			page, next, err = s.ListSandboxes(bg, a.ID, store.ListFilter{Limit: 5, Cursor: cursor})
			ok(t, fmt.Sprintf("page %d", pages+1), err)
			pages++
			if len(page) == 0 {
				t.Fatalf("page %d is empty but the previous page had a next cursor", pages)
			}
			for _, sb := range page {
				if sb.CreatedAt.After(base.Add(time.Hour - time.Minute)) {
					continue
				}
				got = append(got, sb)
			}
			cursor = next
		}
		close(stop)
		wg.Wait()
		if pages < 5 {
			t.Fatalf("only %d pages", pages)
		}
		if len(got) != len(want) {
			t.Fatalf("paged %d old sandboxes, want %d", len(got), len(want))
		}
		for i := range want {
			assertSame(t, fmt.Sprintf("paged sandbox %d", i), got[i], want[i])
		}

		// The full list, in one page, is newest first with no gaps.
		all, next, err := s.ListSandboxes(bg, a.ID, store.ListFilter{Limit: 200})
		ok(t, "full list", err)
		if next != "" {
			t.Fatalf("full list has a next cursor with %d rows", len(all))
		}
		if len(all) != len(want)+int(inserted.Load()) {
			t.Fatalf("full list has %d rows, want %d", len(all), len(want)+int(inserted.Load()))
		}
		for i := 1; i < len(all); i++ {
			p, c := all[i-1], all[i]
			if c.CreatedAt.After(p.CreatedAt) || (c.CreatedAt.Equal(p.CreatedAt) && c.ID >= p.ID) {
				t.Fatalf("list not newest first at %d: %v %s then %v %s", i, p.CreatedAt, p.ID, c.CreatedAt, c.ID)
			}
		}

		// A page that exactly ends the list has no next cursor.
		exact, next, err := s.ListSandboxes(bg, other.ID, store.ListFilter{Limit: 23})
		ok(t, "exact page", err)
		if len(exact) != 23 || next != "" {
			t.Fatalf("exact page: %d rows, next %q", len(exact), next)
		}
	})
}

func TestListStatusFilterAndLimits(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "a")
		base := msNow().Add(-time.Hour)
		statuses := []store.Status{store.StatusRunning, store.StatusPaused, store.StatusTerminated, store.StatusError, store.StatusStarting}
		count := map[store.Status]int{}
		const total = 210
		for i := range total {
			sb := newSandbox(a.ID, base.Add(time.Duration(i)*time.Millisecond))
			sb.Status = statuses[i%len(statuses)]
			count[sb.Status]++
			mkSandbox(t, s, sb)
		}
		for _, st := range statuses {
			var n int
			cursor := ""
			for {
				page, next, err := s.ListSandboxes(bg, a.ID, store.ListFilter{Status: st, Limit: 15, Cursor: cursor})
				ok(t, "filtered list", err)
				for _, sb := range page {
					if sb.Status != st {
						t.Fatalf("filter %s returned a %s sandbox", st, sb.Status)
					}
				}
				n += len(page)
				if next == "" {
					break
				}
				cursor = next
			}
			if n != count[st] {
				t.Fatalf("filter %s: %d sandboxes, want %d", st, n, count[st])
			}
		}
		// Limits: 0 is the default (50), above 200 is clamped to 200.
		for _, c := range []struct{ limit, want int }{{0, sqlstore.DefaultListLimit}, {-1, sqlstore.DefaultListLimit}, {1, 1}, {200, 200}, {1000, sqlstore.MaxListLimit}} {
			page, next, err := s.ListSandboxes(bg, a.ID, store.ListFilter{Limit: c.limit})
			ok(t, "list", err)
			if len(page) != c.want || next == "" {
				t.Fatalf("limit %d: %d rows (next %q), want %d", c.limit, len(page), next, c.want)
			}
		}
	})
}

func TestListBadCursor(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "a")
		mkSandbox(t, s, newSandbox(a.ID, msNow()))
		enc := base64.RawURLEncoding.EncodeToString
		for _, c := range []string{"!!!", "bm9wZQ", enc([]byte("v1:abc:sbx_1")), enc([]byte("v1:123")), enc([]byte("v1:123:")), enc([]byte("v9:1:sbx_1"))} {
			_, _, err := s.ListSandboxes(bg, a.ID, store.ListFilter{Limit: 10, Cursor: c})
			isErr(t, fmt.Sprintf("cursor %q", c), err, store.ErrBadCursor)
		}
	})
}

func TestConcurrentCreateLimit(t *testing.T) {
	// Unflushed creates hold the limit as flushed ones do.
	for name, ctx := range map[string]context.Context{"flushed": bg, "unflushed": store.Unflushed(bg)} {
		t.Run(name, func(t *testing.T) {
			eachDB(t, func(t *testing.T, d testDB) {
				// Two stores on one database act like two server processes.
				s1, s2 := d.open(t), d.open(t)
				a := mkAccount(t, s1, "a")
				b := mkAccount(t, s1, "b")
				// Paused, terminated and errored sandboxes do not count.
				for _, st := range []store.Status{store.StatusPaused, store.StatusTerminated, store.StatusError} {
					sb := newSandbox(a.ID, msNow())
					sb.Status = st
					mkSandbox(t, s1, sb)
				}
				const n, maxActive = 50, 3
				var okB atomic.Int64
				won, limited := race(t, s1, s2, n, store.ErrLimit, func(i int, s *sqlstore.Store) error {
					// Another account is not limited by a's sandboxes.
					if i < 5 {
						if err := s.CreateSandbox(ctx, newSandbox(b.ID, msNow()), 5); err != nil {
							t.Errorf("CreateSandbox for b: %v", err)
						} else {
							okB.Add(1)
						}
					}
					sb := newSandbox(a.ID, msNow())
					if i%3 == 0 {
						sb.Status = store.StatusStarting
					}
					return s.CreateSandbox(ctx, sb, maxActive)
				})
				if len(won) != maxActive || limited != n-maxActive {
					t.Fatalf("%d creates succeeded and %d hit the limit, want %d and %d", len(won), limited, maxActive, n-maxActive)
				}
				if okB.Load() != 5 {
					t.Fatalf("account b: %d creates succeeded, want 5", okB.Load())
				}
				active, _, err := s1.ListSandboxes(ctx, a.ID, store.ListFilter{Status: store.StatusRunning, Limit: 200})
				ok(t, "list running", err)
				starting, _, err := s1.ListSandboxes(ctx, a.ID, store.ListFilter{Status: store.StatusStarting, Limit: 200})
				ok(t, "list starting", err)
				if len(active)+len(starting) != maxActive {
					t.Fatalf("%d active sandboxes stored, want %d", len(active)+len(starting), maxActive)
				}
				// maxActive <= 0 is no limit.
				ok(t, "CreateSandbox unlimited", s1.CreateSandbox(ctx, newSandbox(a.ID, msNow()), 0))
				// Once one stops, a create fits again.
				stopped := append(active, starting...)[0]
				stopped.Status = store.StatusTerminated
				_, err = s1.UpdateSandbox(ctx, stopped, 0)
				ok(t, "terminate", err)
				// 3 + 1 unlimited - 1 terminated = 3 active.
				isErr(t, "create at the limit", s1.CreateSandbox(ctx, newSandbox(a.ID, msNow()), maxActive), store.ErrLimit)
				ok(t, "create under the limit", s1.CreateSandbox(ctx, newSandbox(a.ID, msNow()), maxActive+1))
			})
		})
	}
}

// TestCreateSandboxesAllOrNothing: a batch (a fork's clones) is inserted
// whole under the limit or not at all, also when two stores race.
func TestCreateSandboxesAllOrNothing(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s1, s2 := d.open(t), d.open(t)
		a := mkAccount(t, s1, "a")
		batch := func(n int) []store.Sandbox {
			out := make([]store.Sandbox, n)
			for i := range out {
				out[i] = newSandbox(a.ID, msNow())
				out[i].Status = store.StatusStarting
			}
			return out
		}
		const maxActive = 5
		ok(t, "one running", s1.CreateSandbox(bg, newSandbox(a.ID, msNow()), maxActive))
		isErr(t, "a batch of 5 over the limit", s1.CreateSandboxes(bg, batch(5), maxActive), store.ErrLimit)
		count := func() int {
			all, _, err := s1.ListSandboxes(bg, a.ID, store.ListFilter{Limit: 200})
			ok(t, "list", err)
			return len(all)
		}
		if n := count(); n != 1 {
			t.Fatalf("a refused batch left %d sandboxes, want 1", n)
		}
		// Two batches of 3 race for 4 free slots: exactly one wins whole.
		won, limited := race(t, s1, s2, 2, store.ErrLimit, func(i int, s *sqlstore.Store) error {
			return s.CreateSandboxes(bg, batch(3), maxActive)
		})
		if len(won) != 1 || limited != 1 || count() != 4 {
			t.Fatalf("%d batches won, %d refused, %d sandboxes; want 1, 1, 4", len(won), limited, count())
		}
		other := mkAccount(t, s1, "b")
		mixed := batch(2)
		mixed[1].AccountID = other.ID
		if err := s1.CreateSandboxes(bg, mixed, 0); err == nil {
			t.Fatal("a batch of two accounts was accepted")
		}
	})
}

func TestSnapshotCap(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s1, s2 := d.open(t), d.open(t)
		a := mkAccount(t, s1, "a")
		const n, capPaused = 12, 3
		var rows []store.Sandbox
		for range n {
			rows = append(rows, mkSandbox(t, s1, newSandbox(a.ID, msNow())))
		}
		now := msNow()
		won, limited := raceUpdates(t, s1, s2, rows, capPaused, func(sb *store.Sandbox) {
			sb.Status, sb.PausedAt, sb.ExpiresAt, sb.SnapshotDir = store.StatusPaused, &now, nil, "/snap/"+sb.ID
		})
		if len(won) != capPaused || limited != n-capPaused {
			t.Fatalf("%d pauses succeeded and %d hit the cap, want %d and %d", len(won), limited, capPaused, n-capPaused)
		}
		pausedIDs := won
		got, err := s1.SandboxesByStatus(bg, store.StatusPaused)
		ok(t, "SandboxesByStatus paused", err)
		if len(got) != capPaused {
			t.Fatalf("%d paused sandboxes stored, want %d", len(got), capPaused)
		}
		// A refused pause left the row untouched.
		for _, sb := range rows {
			cur, _ := s1.GetSandbox(bg, a.ID, sb.ID)
			if cur.Status == store.StatusRunning && cur.Version != 0 {
				t.Fatalf("refused pause changed %s: %+v", sb.ID, cur)
			}
		}
		// An already paused sandbox can be updated at the cap: it is not one
		// of its own "other" paused sandboxes.
		cur, err := s1.GetSandbox(bg, a.ID, pausedIDs[0])
		ok(t, "GetSandbox", err)
		cur.SnapshotBytes = 12345
		_, err = s1.UpdateSandbox(bg, cur, capPaused)
		ok(t, "update a paused sandbox at the cap", err)
		// A limit of 0 is no cap.
		cur, _ = s1.GetSandbox(bg, a.ID, rows[0].ID)
		if cur.Status == store.StatusRunning {
			cur.Status = store.StatusPaused
			_, err = s1.UpdateSandbox(bg, cur, 0)
			ok(t, "pause without a cap", err)
		}
		// The paused cap does not count running sandboxes: with 8 others
		// running, a running update under a limit of 9 passes.
		for _, sb := range rows[1:] {
			cur, _ := s1.GetSandbox(bg, a.ID, sb.ID)
			if cur.Status == store.StatusRunning {
				cur.Metadata = map[string]string{"k": "v"}
				_, err = s1.UpdateSandbox(bg, cur, n-capPaused)
				ok(t, "running update under the concurrency limit", err)
				break
			}
		}
	})
}

// race runs op n times at once, alternating between two connections, and
// returns the indexes whose op succeeded and how many failed with refusal
// (ErrLimit, ErrStale); any other error fails the test.
func race(t *testing.T, s1, s2 *sqlstore.Store, n int, refusal error, op func(i int, s *sqlstore.Store) error) (won []int, refused int) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := s1
			if i%2 == 1 {
				s = s2
			}
			<-start
			err := op(i, s)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won = append(won, i)
			case errors.Is(err, refusal):
				refused++
			default:
				t.Errorf("op %d: %v", i, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	return won, refused
}

// raceUpdates applies change to every row and writes them all at once
// under limit; it returns the ids written and how many hit the limit.
func raceUpdates(t *testing.T, s1, s2 *sqlstore.Store, rows []store.Sandbox, limit int, change func(*store.Sandbox)) (ids []string, limited int) {
	t.Helper()
	for i := range rows {
		change(&rows[i])
	}
	won, limited := race(t, s1, s2, len(rows), store.ErrLimit, func(i int, s *sqlstore.Store) error {
		_, err := s.UpdateSandbox(bg, rows[i], limit)
		return err
	})
	for _, i := range won {
		ids = append(ids, rows[i].ID)
	}
	return ids, limited
}

// TestResumeConcurrencyLimit: resumes take a slot by moving paused rows to
// starting under the concurrency limit; concurrent ones from two
// connections never take more slots than there are.
func TestResumeConcurrencyLimit(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s1, s2 := d.open(t), d.open(t)
		a := mkAccount(t, s1, "a")
		const paused, running, limit = 10, 2, 5
		for range running {
			mkSandbox(t, s1, newSandbox(a.ID, msNow()))
		}
		var rows []store.Sandbox
		for range paused {
			sb := newSandbox(a.ID, msNow())
			now := msNow()
			sb.Status, sb.PausedAt, sb.ExpiresAt, sb.SnapshotDir = store.StatusPaused, &now, nil, "/snap/"+sb.ID
			rows = append(rows, mkSandbox(t, s1, sb))
		}
		won, limited := raceUpdates(t, s1, s2, rows, limit, func(sb *store.Sandbox) { sb.Status = store.StatusStarting })
		if len(won) != limit-running || limited != paused-(limit-running) {
			t.Fatalf("%d resumes took a slot and %d hit the limit, want %d and %d", len(won), limited, limit-running, paused-(limit-running))
		}
		active, err := s1.SandboxesByStatus(bg, store.StatusStarting, store.StatusRunning)
		ok(t, "SandboxesByStatus active", err)
		if len(active) != limit {
			t.Fatalf("%d active sandboxes stored, want %d", len(active), limit)
		}
		// A create at the limit is refused too: both count the same class.
		isErr(t, "create at the limit", s1.CreateSandbox(bg, newSandbox(a.ID, msNow()), limit), store.ErrLimit)
	})
}

func TestConcurrentUpdateStale(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s1, s2 := d.open(t), d.open(t)
		a := mkAccount(t, s1, "a")
		for round := range 5 {
			sb := mkSandbox(t, s1, newSandbox(a.ID, msNow()))
			const n = 8
			won, stale := race(t, s1, s2, n, store.ErrStale, func(i int, s *sqlstore.Store) error {
				c := sb
				c.Metadata = map[string]string{"writer": fmt.Sprint(i)}
				_, err := s.UpdateSandbox(bg, c, 0)
				return err
			})
			if len(won) != 1 || stale != n-1 {
				t.Fatalf("round %d: %d updates won and %d were stale, want 1 and %d", round, len(won), stale, n-1)
			}
			cur, _ := s1.GetSandbox(bg, a.ID, sb.ID)
			if cur.Version != 1 {
				t.Fatalf("Version = %d, want 1", cur.Version)
			}
		}
	})
}

func TestSandboxesByStatus(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "a")
		b := mkAccount(t, s, "b")
		base := msNow().Add(-time.Hour)
		want := map[store.Status][]string{}
		i := 0
		for _, acc := range []string{a.ID, b.ID} {
			for _, st := range []store.Status{store.StatusStarting, store.StatusRunning, store.StatusPaused, store.StatusTerminated, store.StatusError, store.StatusRunning} {
				sb := newSandbox(acc, base.Add(time.Duration(i)*time.Second))
				i++
				sb.Status = st
				mkSandbox(t, s, sb)
				want[st] = append(want[st], sb.ID)
			}
		}
		ids := func(list []store.Sandbox) []string {
			var out []string
			for _, sb := range list {
				out = append(out, sb.ID)
			}
			return out
		}
		got, err := s.SandboxesByStatus(bg, store.StatusRunning)
		ok(t, "running", err)
		if !reflect.DeepEqual(ids(got), want[store.StatusRunning]) {
			t.Fatalf("running: %v, want %v (oldest first)", ids(got), want[store.StatusRunning])
		}
		got, err = s.SandboxesByStatus(bg, store.StatusStarting, store.StatusRunning, store.StatusPaused)
		ok(t, "three statuses", err)
		if len(got) != 8 {
			t.Fatalf("starting|running|paused: %d sandboxes, want 8", len(got))
		}
		accounts := map[string]bool{}
		for _, sb := range got {
			accounts[sb.AccountID] = true
			if sb.Status == store.StatusTerminated || sb.Status == store.StatusError {
				t.Fatalf("got a %s sandbox", sb.Status)
			}
		}
		if len(accounts) != 2 {
			t.Fatal("SandboxesByStatus did not span accounts")
		}
		got, err = s.SandboxesByStatus(bg)
		if err != nil || len(got) != 0 {
			t.Fatalf("no statuses: %v, %v", got, err)
		}
	})
}

func TestTimePrecision(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		berlin := time.FixedZone("CEST", 2*3600)
		created := time.Date(2026, 7, 1, 12, 34, 56, 789_654_321, berlin)
		a := store.Account{ID: newID("acc_"), Name: "a", Plan: "free", CreatedAt: created}
		ok(t, "CreateAccount", s.CreateAccount(bg, a))
		wantMS := time.Date(2026, 7, 1, 10, 34, 56, 789_000_000, time.UTC)
		check := func(what string, got time.Time, want time.Time) {
			t.Helper()
			if !got.Equal(want) || got.Location() != time.UTC || got.Nanosecond()%1_000_000 != 0 {
				t.Fatalf("%s = %v (%s), want %v UTC at ms precision", what, got, got.Location(), want)
			}
		}
		ga, _ := s.AccountByID(bg, a.ID)
		check("account CreatedAt", ga.CreatedAt, wantMS)

		exp := time.Date(2099, 12, 31, 23, 59, 59, 999_999_999, time.UTC)
		k := store.APIKey{ID: newID("key_"), AccountID: a.ID, Prefix: "ork_p", Hash: "hash", Scopes: []string{store.ScopeSandboxesRead},
			CreatedAt: created, ExpiresAt: &exp}
		ok(t, "CreateKey", s.CreateKey(bg, k))
		gk, _ := s.KeyByHash(bg, "hash")
		check("key CreatedAt", gk.CreatedAt, wantMS)
		check("key ExpiresAt", *gk.ExpiresAt, exp.Truncate(time.Millisecond))
		if gk.RevokedAt != nil || gk.LastUsedAt != nil {
			t.Fatal("nil times came back non-nil")
		}

		sb := newSandbox(a.ID, created)
		old := time.Date(1999, 1, 2, 3, 4, 5, 6_999_999, time.UTC)
		sb.PausedAt, sb.ExpiresAt, sb.TerminatedAt = &old, nil, nil
		ok(t, "CreateSandbox", s.CreateSandbox(bg, sb, 0))
		gs, err := s.GetSandbox(bg, a.ID, sb.ID)
		ok(t, "GetSandbox", err)
		check("sandbox CreatedAt", gs.CreatedAt, wantMS)
		check("sandbox UpdatedAt", gs.UpdatedAt, wantMS)
		check("sandbox PausedAt", *gs.PausedAt, old.Truncate(time.Millisecond))
		if gs.ExpiresAt != nil || gs.TerminatedAt != nil {
			t.Fatal("nil times came back non-nil")
		}
		// What is read back writes back and reads back identically.
		up, err := s.UpdateSandbox(bg, gs, 0)
		ok(t, "UpdateSandbox", err)
		check("UpdatedAt", up.UpdatedAt, up.UpdatedAt.Truncate(time.Millisecond))
		again, _ := s.GetSandbox(bg, a.ID, sb.ID)
		assertSame(t, "round trip", again, up)
		if !reflect.DeepEqual(again, up) {
			t.Fatalf("round trip not identical:\n%+v\n%+v", again, up)
		}
		// UpdateSandbox returns times as stored even when given finer ones.
		fine := time.Now()
		up.ExpiresAt = &fine
		up2, err := s.UpdateSandbox(bg, up, 0)
		ok(t, "UpdateSandbox fine", err)
		again, _ = s.GetSandbox(bg, a.ID, sb.ID)
		if !reflect.DeepEqual(again, up2) {
			t.Fatalf("UpdateSandbox result differs from the stored row:\n%+v\n%+v", up2, again)
		}
	})
}

func TestMetadataOddKeys(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "a")
		md := map[string]string{
			"agentRun":               "r_123",
			"AgentRun":               "capital",
			"snake_case":             "x",
			"kebab-case":             "y",
			"with space":             "z",
			`quote"d`:                `va"lue`,
			"single'quote":           "it's",
			`back\slash`:             `C:\path\`,
			"ünïcødé-キー-🚀":           "值 ✓",
			"":                       "empty key",
			"newline\nkey":           "tab\tvalue",
			"nul":                    "a\x00b",
			"json":                   `{"nested": [1, 2]}`,
			"sql":                    "'; DROP TABLE sandboxes; --",
			"placeholder?$1":         "?",
			strings.Repeat("k", 300): strings.Repeat("v", 4000),
		}
		sb := newSandbox(a.ID, msNow())
		sb.Metadata = md
		sb.EnvKeys = []string{"OPENAI_API_KEY", "lowerCamel", "ÜBER", `q"uote`}
		mkSandbox(t, s, sb)
		got, err := s.GetSandbox(bg, a.ID, sb.ID)
		ok(t, "GetSandbox", err)
		if !reflect.DeepEqual(got.Metadata, md) {
			t.Fatalf("metadata changed:\n got %q\nwant %q", got.Metadata, md)
		}
		if !reflect.DeepEqual(got.EnvKeys, sb.EnvKeys) {
			t.Fatalf("env keys changed: %q", got.EnvKeys)
		}
		// And through an update.
		got.Metadata["newKey"] = "ÄÖÜ"
		up, err := s.UpdateSandbox(bg, got, 0)
		ok(t, "UpdateSandbox", err)
		again, _ := s.GetSandbox(bg, a.ID, sb.ID)
		if !reflect.DeepEqual(again.Metadata, up.Metadata) || again.Metadata["newKey"] != "ÄÖÜ" || again.Metadata["agentRun"] != "r_123" {
			t.Fatalf("metadata after update: %q", again.Metadata)
		}
	})
}
