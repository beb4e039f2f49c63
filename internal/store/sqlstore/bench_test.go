package sqlstore_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// BenchmarkGetSandbox is the store read behind every per-sandbox request.
func BenchmarkGetSandbox(b *testing.B) {
	s := testDB{kind: "sqlite", url: "sqlite://" + filepath.Join(b.TempDir(), "orkestr.db")}.open(b)
	a := mkAccount(b, s, "bench")
	sb := mkSandbox(b, s, newSandbox(a.ID, time.Now().UTC().Truncate(time.Millisecond)))
	ctx := context.Background()
	for b.Loop() {
		if _, err := s.GetSandbox(ctx, a.ID, sb.ID); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGetSandboxSpaced is BenchmarkGetSandbox with 20 ms of idle time
// (untimed) before each read, as between the requests of one client: what
// a request pays with cold caches.
func BenchmarkGetSandboxSpaced(b *testing.B) {
	s := testDB{kind: "sqlite", url: "sqlite://" + filepath.Join(b.TempDir(), "orkestr.db")}.open(b)
	a := mkAccount(b, s, "bench")
	sb := mkSandbox(b, s, newSandbox(a.ID, time.Now().UTC().Truncate(time.Millisecond)))
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		time.Sleep(20 * time.Millisecond)
		b.StartTimer()
		if _, err := s.GetSandbox(ctx, a.ID, sb.ID); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCreateSandbox is the store's part of a create on PostgreSQL:
// the insert under the plan's concurrency limit, as one pipelined round
// trip (pipelined) against the transaction of separate statements it
// replaced (tx), in the same run. Each insert is followed
// (untimed) by the row's end, so the count stays at one active sandbox.
func BenchmarkCreateSandbox(b *testing.B) {
	if os.Getenv("ORKESTR_TEST_DATABASE_URL") == "" {
		b.Skip("needs ORKESTR_TEST_DATABASE_URL (PostgreSQL)")
	}
	s := testDB{kind: "postgres", url: testenv.FreshPostgres(b)}.open(b)
	a := mkAccount(b, s, "bench")
	ctx := context.Background()
	for _, v := range []struct {
		name   string
		create func(context.Context, store.Sandbox, int) error
	}{{"tx", s.CreateSandboxAsTx}, {"pipelined", s.CreateSandbox}} {
		b.Run(v.name, func(b *testing.B) {
			for b.Loop() {
				sb := newSandbox(a.ID, time.Now().UTC().Truncate(time.Millisecond))
				if err := v.create(ctx, sb, 10); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				sb.Status = store.StatusTerminated
				if _, err := s.UpdateSandbox(ctx, sb, 0); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
