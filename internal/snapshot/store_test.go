package snapshot_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/snapshot"
)

// storeSuite runs the same checks on every snapshot.Store implementation.
func storeSuite(t *testing.T, s snapshot.Store) {
	ctx := context.Background()
	t.Run("put get list delete", func(t *testing.T) {
		body := make([]byte, 3<<20)
		rand.Read(body)
		if err := s.Put(ctx, "snapshots/a1/s1.snap", bytes.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		if err := s.Put(ctx, "snapshots/a1/s2.snap", strings.NewReader("small")); err != nil {
			t.Fatal(err)
		}
		if err := s.Put(ctx, "keys/a1.key", strings.NewReader("k")); err != nil {
			t.Fatal(err)
		}
		rc, err := s.Get(ctx, "snapshots/a1/s1.snap")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("Get returned %d bytes (%v), want the %d put", len(got), err, len(body))
		}
		objs, err := s.List(ctx, "snapshots/")
		if err != nil {
			t.Fatal(err)
		}
		if len(objs) != 2 || objs[0].Key != "snapshots/a1/s1.snap" || objs[0].Size != int64(len(body)) || objs[1].Key != "snapshots/a1/s2.snap" || objs[0].Modified.IsZero() {
			t.Fatalf("List(snapshots/) = %+v", objs)
		}
		if objs, _ := s.List(ctx, "snapshots/a1/s2"); len(objs) != 1 {
			t.Fatalf("List by a key's prefix = %+v", objs)
		}
		if err := s.Put(ctx, "snapshots/a1/s2.snap", strings.NewReader("replaced")); err != nil {
			t.Fatal(err)
		}
		if b := readAll(t, s, "snapshots/a1/s2.snap"); b != "replaced" {
			t.Fatalf("after replacing: %q", b)
		}
		for _, k := range []string{"snapshots/a1/s1.snap", "snapshots/a1/s2.snap", "keys/a1.key"} {
			if err := s.Delete(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Delete(ctx, "snapshots/a1/s1.snap"); err != nil {
			t.Fatalf("deleting a missing object: %v", err)
		}
		if _, err := s.Get(ctx, "snapshots/a1/s1.snap"); !errors.Is(err, snapshot.ErrNotFound) {
			t.Fatalf("Get after Delete = %v, want snapshot.ErrNotFound", err)
		}
		if objs, err := s.List(ctx, ""); err != nil || len(objs) != 0 {
			t.Fatalf("List after deleting everything = %+v, %v", objs, err)
		}
	})
	t.Run("interrupted put leaves nothing", func(t *testing.T) {
		// Past one S3 part, so the multipart path is the one cut.
		r := io.MultiReader(io.LimitReader(rand.Reader, 20<<20), failingReader{})
		err := s.Put(ctx, "snapshots/a1/cut.snap", r)
		if err == nil {
			t.Fatal("Put of a failing reader succeeded")
		}
		if _, err := s.Get(ctx, "snapshots/a1/cut.snap"); !errors.Is(err, snapshot.ErrNotFound) {
			t.Fatalf("after an interrupted Put, Get = %v, want snapshot.ErrNotFound", err)
		}
		if objs, _ := s.List(ctx, ""); len(objs) != 0 {
			t.Fatalf("an interrupted Put left %+v", objs)
		}
		// An interrupted replace keeps the old object.
		if err := s.Put(ctx, "snapshots/a1/old.snap", strings.NewReader("old")); err != nil {
			t.Fatal(err)
		}
		if err := s.Put(ctx, "snapshots/a1/old.snap", io.MultiReader(strings.NewReader("new"), failingReader{})); err == nil {
			t.Fatal("Put of a failing reader succeeded")
		}
		if b := readAll(t, s, "snapshots/a1/old.snap"); b != "old" {
			t.Fatalf("an interrupted replace left %q", b)
		}
		s.Delete(ctx, "snapshots/a1/old.snap")
	})
	t.Run("cancelled put leaves nothing", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		r := &cancelAfter{r: io.LimitReader(rand.Reader, 20<<20), n: 1 << 20, cancel: cancel}
		if err := s.Put(cctx, "snapshots/a1/cancel.snap", r); err == nil {
			t.Fatal("a cancelled Put succeeded")
		}
		if _, err := s.Get(ctx, "snapshots/a1/cancel.snap"); !errors.Is(err, snapshot.ErrNotFound) {
			t.Fatalf("after a cancelled Put, Get = %v", err)
		}
	})
	t.Run("create is exclusive", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = s.Create(ctx, "keys/race.key", strings.NewReader(fmt.Sprint(i)))
			}()
		}
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch {
			case err == nil && won >= 0:
				t.Fatalf("Create succeeded twice (%d and %d)", won, i)
			case err == nil:
				won = i
			case !errors.Is(err, snapshot.ErrExists):
				t.Fatalf("Create %d: %v, want snapshot.ErrExists", i, err)
			}
		}
		if won < 0 {
			t.Fatal("no Create succeeded")
		}
		if b := readAll(t, s, "keys/race.key"); b != fmt.Sprint(won) {
			t.Fatalf("the key holds %q, the winner wrote %d", b, won)
		}
		s.Delete(ctx, "keys/race.key")
	})
	t.Run("hostile keys", func(t *testing.T) {
		for _, k := range hostileKeys {
			if err := s.Put(ctx, k, strings.NewReader("x")); !errors.Is(err, snapshot.ErrInvalidKey) {
				t.Errorf("Put(%q) = %v, want snapshot.ErrInvalidKey", k, err)
			}
			if _, err := s.Get(ctx, k); !errors.Is(err, snapshot.ErrInvalidKey) {
				t.Errorf("Get(%q) = %v, want snapshot.ErrInvalidKey", k, err)
			}
			if err := s.Delete(ctx, k); !errors.Is(err, snapshot.ErrInvalidKey) {
				t.Errorf("Delete(%q) = %v, want snapshot.ErrInvalidKey", k, err)
			}
			if err := s.Create(ctx, k, strings.NewReader("x")); !errors.Is(err, snapshot.ErrInvalidKey) {
				t.Errorf("Create(%q) = %v, want snapshot.ErrInvalidKey", k, err)
			}
		}
		for _, p := range []string{"../", "/", "//", "a//", "../../etc", "a/../"} {
			if _, err := s.List(ctx, p); !errors.Is(err, snapshot.ErrInvalidKey) {
				t.Errorf("List(%q) = %v, want snapshot.ErrInvalidKey", p, err)
			}
		}
		if objs, _ := s.List(ctx, ""); len(objs) != 0 {
			t.Fatalf("hostile keys left %+v", objs)
		}
	})
}

var hostileKeys = []string{
	"", "..", "../x", "a/../../x", "/etc/passwd", "a//b", "a/", "./a", ".tmp/x", "a/.hidden",
	"a\x00b", "a\nb", "a b", "a\\b", "caf\u00e9", "%2e%2e/x", strings.Repeat("a", 1025), strings.Repeat("a/", 300) + "a",
}

func readAll(t *testing.T, s snapshot.Store, key string) string {
	t.Helper()
	rc, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("the source failed") }

type cancelAfter struct {
	r      io.Reader
	n      int
	cancel func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.n -= n; c.n <= 0 {
		c.cancel()
	}
	return n, err
}

func TestFSStore(t *testing.T) {
	storeSuite(t, snapshot.NewFS(t.TempDir()))
}

func TestValidKey(t *testing.T) {
	for _, k := range []string{"a", "snapshots/acct_1/snap-01.snap", "keys/a.key", "a.b/c_d/e-f"} {
		if err := snapshot.ValidKey(k); err != nil {
			t.Errorf("snapshot.ValidKey(%q) = %v", k, err)
		}
	}
	for _, k := range hostileKeys {
		if err := snapshot.ValidKey(k); !errors.Is(err, snapshot.ErrInvalidKey) {
			t.Errorf("snapshot.ValidKey(%q) = %v, want snapshot.ErrInvalidKey", k, err)
		}
	}
	if _, err := snapshot.SnapshotKey("../x", "s"); !errors.Is(err, snapshot.ErrInvalidKey) {
		t.Errorf("snapshot.SnapshotKey with a hostile account = %v", err)
	}
	if k, err := snapshot.SnapshotKey("acct_1", "snap_1"); err != nil || k != "snapshots/acct_1/snap_1.snap" {
		t.Errorf("snapshot.SnapshotKey = %q, %v", k, err)
	}
}
