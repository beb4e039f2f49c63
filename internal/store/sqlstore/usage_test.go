package sqlstore_test

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
)

func delta(sb store.Sandbox, hour time.Time, mem, cpu, run int64) store.UsageDelta {
	return store.UsageDelta{SandboxID: sb.ID, AccountID: sb.AccountID, HourStart: hour, Usage: store.Usage{MemMBSeconds: mem, CPUMS: cpu, RunningSeconds: run}}
}

func TestUsageAddsUpExactly(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a, b := mkAccount(t, s, "a"), mkAccount(t, s, "b")
		a1 := mkSandbox(t, s, newSandbox(a.ID, msNow()))
		a2 := mkSandbox(t, s, newSandbox(a.ID, msNow()))
		b1 := mkSandbox(t, s, newSandbox(b.ID, msNow()))
		// The last hour of October, three hours of November 1st and one
		// of December 1st: the month boundaries are what limits reset on.
		oct := time.Date(2026, 10, 31, 23, 0, 0, 0, time.UTC)
		nov := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
		dec := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
		ok(t, "AddUsage", s.AddUsage(bg, []store.UsageDelta{
			delta(a1, oct, 512*3600, 1000, 3600),
			delta(a1, nov, 512*10, 4001, 10),
			delta(a1, nov, 512*5, 1, 5), // merged with the one before
			delta(a2, nov.Add(time.Hour), 4096*7, 7, 7),
			delta(a2, nov.Add(2*time.Hour), 0, 0, 0), // nothing: no row
			delta(b1, nov, 1<<40, 1<<40, 1<<40),      // another account
			delta(a1, dec, 512, 3, 1),
		}))
		// Adding again adds, it does not replace.
		ok(t, "AddUsage again", s.AddUsage(bg, []store.UsageDelta{delta(a1, nov, 512, 2, 1)}))

		got, err := s.AccountUsage(bg, a.ID, nov, dec)
		ok(t, "AccountUsage", err)
		want := store.Usage{MemMBSeconds: 512*16 + 4096*7, CPUMS: 4001 + 1 + 2 + 7, RunningSeconds: 16 + 7}
		if got != want {
			t.Fatalf("November of a: %+v, want %+v", got, want)
		}
		life, err := s.SandboxUsage(bg, a.ID, a1.ID)
		ok(t, "SandboxUsage", err)
		if want := (store.Usage{MemMBSeconds: 512 * (3600 + 16 + 1), CPUMS: 1000 + 4004 + 3, RunningSeconds: 3600 + 16 + 1}); life != want {
			t.Fatalf("lifetime of a1: %+v, want %+v", life, want)
		}
		// Tenancy: another account's sandbox reads as no usage.
		if u, err := s.SandboxUsage(bg, a.ID, b1.ID); err != nil || !u.IsZero() {
			t.Fatalf("b1 read as account a: %+v %v", u, err)
		}
		if u, err := s.AccountUsage(bg, a.ID, dec, dec.AddDate(0, 1, 0)); err != nil || u.MemMBSeconds != 512 {
			t.Fatalf("December of a: %+v %v", u, err)
		}

		// Hourly and daily reports sum to the same totals.
		hours, err := s.UsageReport(bg, a.ID, nov, dec, time.Hour)
		ok(t, "UsageReport hour", err)
		wantHours := []store.UsageRow{
			{PeriodStart: nov, SandboxID: a1.ID, Usage: store.Usage{MemMBSeconds: 512 * 16, CPUMS: 4004, RunningSeconds: 16}},
			{PeriodStart: nov.Add(time.Hour), SandboxID: a2.ID, Usage: store.Usage{MemMBSeconds: 4096 * 7, CPUMS: 7, RunningSeconds: 7}},
		}
		if !reflect.DeepEqual(hours, wantHours) {
			t.Fatalf("hourly report:\n got %+v\nwant %+v", hours, wantHours)
		}
		days, err := s.UsageReport(bg, a.ID, oct.Add(-23*time.Hour), dec.AddDate(0, 0, 1), 24*time.Hour)
		ok(t, "UsageReport day", err)
		oct31 := oct.Truncate(24 * time.Hour)
		wantDays := []store.UsageRow{
			{PeriodStart: oct31, SandboxID: a1.ID, Usage: store.Usage{MemMBSeconds: 512 * 3600, CPUMS: 1000, RunningSeconds: 3600}},
			{PeriodStart: nov, SandboxID: a1.ID, Usage: store.Usage{MemMBSeconds: 512 * 16, CPUMS: 4004, RunningSeconds: 16}},
			{PeriodStart: nov, SandboxID: a2.ID, Usage: store.Usage{MemMBSeconds: 4096 * 7, CPUMS: 7, RunningSeconds: 7}},
			{PeriodStart: dec, SandboxID: a1.ID, Usage: store.Usage{MemMBSeconds: 512, CPUMS: 3, RunningSeconds: 1}},
		}
		if !reflect.DeepEqual(days, wantDays) {
			t.Fatalf("daily report:\n got %+v\nwant %+v", days, wantDays)
		}
		if _, err := s.UsageReport(bg, a.ID, nov, dec, 90*time.Minute); err == nil {
			t.Fatal("a 90-minute period was accepted")
		}
	})
}

func TestUsageRejectsBadDeltas(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "a")
		sb := mkSandbox(t, s, newSandbox(a.ID, msNow()))
		hour := time.Date(2026, 11, 1, 5, 0, 0, 0, time.UTC)
		good := delta(sb, hour, 1, 1, 1)
		for name, bad := range map[string]store.UsageDelta{
			"negative":        delta(sb, hour, -1, 0, 0),
			"not on the hour": delta(sb, hour.Add(time.Minute), 1, 1, 1),
			"unknown sandbox": {SandboxID: "sbx_nope", AccountID: a.ID, HourStart: hour, Usage: store.Usage{RunningSeconds: 1}},
			"no account":      {SandboxID: sb.ID, HourStart: hour, Usage: store.Usage{RunningSeconds: 1}},
		} {
			// The good delta in the same batch is not added either.
			if err := s.AddUsage(bg, []store.UsageDelta{good, bad}); err == nil {
				t.Errorf("%s: accepted", name)
			}
		}
		if u, _ := s.SandboxUsage(bg, a.ID, sb.ID); !u.IsZero() {
			t.Fatalf("a refused batch left usage behind: %+v", u)
		}
	})
}

// TestUsageConcurrentAdds: concurrent flushes (several writers, as a busy
// server's flusher and pauses do) lose nothing and double nothing.
func TestUsageConcurrentAdds(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "a")
		var sbs []store.Sandbox
		for range 5 {
			sbs = append(sbs, mkSandbox(t, s, newSandbox(a.ID, msNow())))
		}
		hour := time.Date(2026, 11, 1, 5, 0, 0, 0, time.UTC)
		const writers, rounds = 4, 25
		var wg sync.WaitGroup
		errs := make(chan error, writers*rounds)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := range rounds {
					var batch []store.UsageDelta
					for i, sb := range sbs {
						batch = append(batch, delta(sb, hour.Add(time.Duration((w+r+i)%3)*time.Hour), 512, 3, 1))
					}
					if err := s.AddUsage(bg, batch); err != nil {
						errs <- fmt.Errorf("writer %d round %d: %w", w, r, err)
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		n := int64(writers * rounds * len(sbs))
		got, err := s.AccountUsage(bg, a.ID, hour, hour.Add(3*time.Hour))
		ok(t, "AccountUsage", err)
		if want := (store.Usage{MemMBSeconds: 512 * n, CPUMS: 3 * n, RunningSeconds: n}); got != want {
			t.Fatalf("after concurrent adds: %+v, want %+v", got, want)
		}
	})
}

func TestCountSandboxes(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "a")
		mkSandbox(t, s, newSandbox(a.ID, msNow()))
		mkSandbox(t, s, newSandbox(a.ID, msNow()))
		p := newSandbox(a.ID, msNow())
		p.Status = store.StatusPaused
		mkSandbox(t, s, p)
		got, err := s.CountSandboxes(bg)
		ok(t, "CountSandboxes", err)
		if want := map[store.Status]int{store.StatusRunning: 2, store.StatusPaused: 1}; !reflect.DeepEqual(got, want) {
			t.Fatalf("counts %v, want %v", got, want)
		}
	})
}

// TestUsageLargeBatch: a flush bigger than one multi-row statement (the
// store splits it) is still all or nothing, and adds up.
func TestUsageLargeBatch(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "a")
		sb := mkSandbox(t, s, newSandbox(a.ID, msNow()))
		start := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
		var batch []store.UsageDelta
		for h := range 250 {
			batch = append(batch, delta(sb, start.Add(time.Duration(h)*time.Hour), 512*int64(h+1), int64(h), int64(h+1)))
		}
		ok(t, "AddUsage 250 hours", s.AddUsage(bg, batch))
		// 250 more and, sorted after them into the third statement, one
		// for a sandbox that does not exist: the database refuses it after
		// the first two statements ran, and none of them is kept.
		unknown := store.UsageDelta{SandboxID: "sbx_ZZZZ", AccountID: a.ID, HourStart: start, Usage: store.Usage{RunningSeconds: 1}}
		bad := append(append([]store.UsageDelta(nil), batch...), unknown)
		if err := s.AddUsage(bg, bad); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("a batch with an unknown sandbox: %v", err)
		}
		u, err := s.SandboxUsage(bg, a.ID, sb.ID)
		ok(t, "SandboxUsage", err)
		if want := (store.Usage{MemMBSeconds: 512 * 250 * 251 / 2, CPUMS: 249 * 250 / 2, RunningSeconds: 250 * 251 / 2}); u != want {
			t.Fatalf("after 250 hours: %+v, want %+v", u, want)
		}
		days, err := s.UsageReport(bg, a.ID, start, start.AddDate(0, 1, 0), 24*time.Hour)
		ok(t, "UsageReport", err)
		var sum store.Usage
		for _, r := range days {
			sum = sum.Add(r.Usage)
		}
		if len(days) != 11 || sum != u {
			t.Fatalf("%d days summing to %+v, want 11 days and %+v", len(days), sum, u)
		}
	})
}
