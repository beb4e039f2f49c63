package snapshot_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/snapshot/s3test"
)

func gcSuite(t *testing.T, s snapshot.Store) {
	ctx := context.Background()
	put := func(key string) {
		if err := s.Put(ctx, key, strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
	}
	live, orphan := "snapshots/acct_1/live.snap", "snapshots/acct_1/orphan.snap"
	put(live)
	put(orphan)
	put("keys/acct_1.key")
	put("other/thing")
	rows := map[string]bool{live: true}
	referenced := func(k string) bool { return rows[k] }
	keys := func() []string {
		objs, err := s.List(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, o := range objs {
			out = append(out, o.Key)
		}
		return out
	}

	// Everything is younger than the default grace: nothing goes.
	if rm, err := snapshot.Collect(ctx, s, referenced, false); err != nil || len(rm) != 0 {
		t.Fatalf("Collect within the grace period removed %+v, %v", rm, err)
	}
	grace := snapshot.CollectOptions{Referenced: referenced, Grace: -1}
	dry := grace
	dry.DryRun = true
	rm, err := snapshot.CollectWith(ctx, s, dry)
	if err != nil || len(rm) != 1 || rm[0].Key != orphan {
		t.Fatalf("dry run = %+v, %v; want the orphan", rm, err)
	}
	if got := keys(); len(got) != 4 {
		t.Fatalf("a dry run removed objects: %v left", got)
	}
	rm, err = snapshot.CollectWith(ctx, s, grace)
	if err != nil || len(rm) != 1 || rm[0].Key != orphan {
		t.Fatalf("Collect = %+v, %v; want the orphan", rm, err)
	}
	if got := strings.Join(keys(), " "); got != "keys/acct_1.key other/thing "+live {
		t.Fatalf("after Collect: %s", got)
	}
	// Nothing referenced at all: still never keys/ nor other prefixes.
	rm, err = snapshot.CollectWith(ctx, s, snapshot.CollectOptions{Referenced: func(string) bool { return false }, Grace: -1})
	if err != nil || len(rm) != 1 || rm[0].Key != live {
		t.Fatalf("Collect with no rows = %+v, %v", rm, err)
	}
	if got := strings.Join(keys(), " "); got != "keys/acct_1.key other/thing" {
		t.Fatalf("after Collect with no rows: %s", got)
	}
}

func TestCollectFS(t *testing.T) {
	dir := t.TempDir()
	s := snapshot.NewFS(dir)
	gcSuite(t, s)
	// A temporary file of a write that never finished goes once stale.
	if err := os.WriteFile(filepath.Join(dir, ".tmp", "put-dead"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * snapshot.DefaultCollectGrace)
	os.Chtimes(filepath.Join(dir, ".tmp", "put-dead"), old, old)
	if _, err := snapshot.Collect(context.Background(), s, func(string) bool { return true }, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".tmp", "put-dead")); !os.IsNotExist(err) {
		t.Fatalf("a stale temporary file was kept: %v", err)
	}
}

func TestCollectS3(t *testing.T) {
	srv := s3test.Start(t)
	s := newS3(t, srv, nil)
	gcSuite(t, s)

	// A multipart upload abandoned by a node that died mid-pause is
	// aborted by a collection past the grace period (and not by a dry one).
	c, err := minio.New(strings.TrimPrefix(srv.Endpoint, "http://"), &minio.Options{Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""), Region: srv.Region})
	if err != nil {
		t.Fatal(err)
	}
	core := minio.Core{Client: c}
	ctx := context.Background()
	id, err := core.NewMultipartUpload(ctx, srv.Bucket, "snapshots/acct_1/dead.snap", minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := core.PutObjectPart(ctx, srv.Bucket, "snapshots/acct_1/dead.snap", id, 1, strings.NewReader("part"), 4, minio.PutObjectPartOptions{}); err != nil {
		t.Fatal(err)
	}
	uploads := func() int {
		n := 0
		for u := range c.ListIncompleteUploads(ctx, srv.Bucket, "snapshots/", true) {
			if u.Err != nil {
				t.Fatal(u.Err)
			}
			n++
		}
		return n
	}
	if n := uploads(); n != 1 {
		t.Fatalf("%d uploads in progress, want 1", n)
	}
	if _, err := snapshot.Collect(ctx, s, func(string) bool { return true }, false); err != nil {
		t.Fatal(err)
	}
	if n := uploads(); n != 1 {
		t.Fatalf("a fresh upload was aborted (%d left)", n)
	}
	time.Sleep(1100 * time.Millisecond) // S3 times have a resolution of a second
	if _, err := snapshot.CollectWith(ctx, s, snapshot.CollectOptions{Referenced: func(string) bool { return true }, Grace: -1}); err != nil {
		t.Fatal(err)
	}
	if n := uploads(); n != 0 {
		t.Fatalf("the abandoned upload was kept (%d left)", n)
	}
}
