package sqlstore_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"
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
