package sqlstore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
)

func TestMembers(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		ctx := context.Background()
		a := mkAccount(t, s, "acme")
		b := mkAccount(t, s, "other")
		now := time.Now().UTC().Truncate(time.Millisecond)
		m := store.Member{ID: newID("mem_"), AccountID: a.ID, Email: "ada@example.com", CreatedAt: now}
		if err := s.CreateMember(ctx, m); err != nil {
			t.Fatal(err)
		}
		// Emails are unique across accounts.
		dup := store.Member{ID: newID("mem_"), AccountID: b.ID, Email: "ada@example.com", CreatedAt: now}
		if err := s.CreateMember(ctx, dup); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("duplicate email: %v, want ErrConflict", err)
		}
		if err := s.CreateMember(ctx, store.Member{ID: newID("mem_"), AccountID: "acc_nope", Email: "x@example.com", CreatedAt: now}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown account: %v, want ErrNotFound", err)
		}
		got, err := s.MemberByEmail(ctx, "ada@example.com")
		if err != nil || got.ID != m.ID || got.AccountID != a.ID || got.PasswordHash != "" || !got.CreatedAt.Equal(now) {
			t.Fatalf("MemberByEmail: %+v %v", got, err)
		}
		if _, err := s.MemberByEmail(ctx, "nobody@example.com"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("missing member: %v", err)
		}
		list, err := s.ListMembers(ctx, a.ID)
		if err != nil || len(list) != 1 {
			t.Fatalf("ListMembers: %v %v", list, err)
		}
		if list, _ := s.ListMembers(ctx, b.ID); len(list) != 0 {
			t.Fatalf("other account sees members: %v", list)
		}

		// Failures lock on the third and start counting again.
		for i := 1; i <= 3; i++ {
			got, err = s.RecordLoginFailure(ctx, m.ID, now, 3, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if i < 3 && (got.FailedLogins != i || got.LockedUntil != nil) {
				t.Fatalf("failure %d: %+v", i, got)
			}
		}
		if got.LockedUntil == nil || !got.LockedUntil.Equal(now.Add(time.Minute)) || got.FailedLogins != 0 {
			t.Fatalf("after 3 failures: %+v", got)
		}
		if again, _ := s.MemberByID(ctx, m.ID); again.LockedUntil == nil {
			t.Fatal("lock not stored")
		}
		// Concurrent failures are all counted.
		if err := s.RecordLoginSuccess(ctx, m.ID, now); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := s.RecordLoginFailure(ctx, m.ID, now, 100, time.Minute); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if got, _ := s.MemberByID(ctx, m.ID); got.FailedLogins != 8 {
			t.Fatalf("8 concurrent failures counted as %d", got.FailedLogins)
		}

		// Sessions; setting a password ends them.
		se := store.Session{Hash: "h1", MemberID: m.ID, AccountID: a.ID, CSRFToken: "c", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
		if err := s.CreateSession(ctx, se); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateSession(ctx, se); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("duplicate session: %v", err)
		}
		if got, err := s.SessionByHash(ctx, "h1"); err != nil || got != se {
			t.Fatalf("SessionByHash: %+v %v", got, err)
		}
		if err := s.SetMemberPassword(ctx, m.ID, "$argon2id$x"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SessionByHash(ctx, "h1"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("session survived a password change: %v", err)
		}
		if got, _ := s.MemberByID(ctx, m.ID); got.PasswordHash != "$argon2id$x" || got.FailedLogins != 0 || got.LockedUntil != nil {
			t.Fatalf("after SetMemberPassword: %+v", got)
		}
		if err := s.SetMemberPassword(ctx, "mem_nope", "x"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown member: %v", err)
		}
		if err := s.CreateSession(ctx, store.Session{Hash: "h2", MemberID: m.ID, AccountID: a.ID, CSRFToken: "c", CreatedAt: now, ExpiresAt: now}); err != nil {
			t.Fatal(err)
		}
		// A new session sweeps the member's expired ones away.
		if err := s.CreateSession(ctx, store.Session{Hash: "h3", MemberID: m.ID, AccountID: a.ID, CSRFToken: "c", CreatedAt: now.Add(time.Second), ExpiresAt: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SessionByHash(ctx, "h2"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("expired session kept: %v", err)
		}
		if err := s.DeleteSession(ctx, "h3"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SessionByHash(ctx, "h3"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("deleted session: %v", err)
		}

		// Links are used once, and not after they expire.
		l := store.MemberLink{Hash: "l1", MemberID: m.ID, Purpose: "setup", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
		if err := s.CreateMemberLink(ctx, l); err != nil {
			t.Fatal(err)
		}
		var wins int
		var mu sync.Mutex
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := s.UseMemberLink(ctx, "l1", now); err == nil {
					mu.Lock()
					wins++
					mu.Unlock()
				} else if !errors.Is(err, store.ErrNotFound) {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if wins != 1 {
			t.Fatalf("a one-time link was used %d times", wins)
		}
		if got, _ := s.MemberLinkByHash(ctx, "l1"); got.UsedAt == nil || got.Purpose != "setup" {
			t.Fatalf("used link: %+v", got)
		}
		old := store.MemberLink{Hash: "l2", MemberID: m.ID, Purpose: "invite", CreatedAt: now, ExpiresAt: now.Add(time.Minute)}
		if err := s.CreateMemberLink(ctx, old); err != nil {
			t.Fatal(err)
		}
		if _, err := s.UseMemberLink(ctx, "l2", now.Add(time.Minute)); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("expired link: %v", err)
		}
		if _, err := s.UseMemberLink(ctx, "nope", now); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown link: %v", err)
		}
	})
}
