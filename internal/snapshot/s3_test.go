package snapshot_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/snapshot/s3test"
)

func newS3(t *testing.T, srv *s3test.Server, change func(*snapshot.S3Config)) snapshot.Store {
	t.Helper()
	cfg := srv.Config()
	if change != nil {
		change(&cfg)
	}
	s, err := snapshot.NewS3(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestS3Store(t *testing.T) {
	srv := s3test.Start(t)
	storeSuite(t, newS3(t, srv, nil))
	// An interrupted multipart upload left no parts behind either.
	assertNoUploads(t, srv)
}

func TestS3StorePrefix(t *testing.T) {
	srv := s3test.Start(t)
	a := newS3(t, srv, func(c *snapshot.S3Config) { c.Prefix = "install-a/" })
	b := newS3(t, srv, func(c *snapshot.S3Config) { c.Prefix = "install-b" })
	ctx := context.Background()
	if err := a.Put(ctx, "snapshots/x/s.snap", strings.NewReader("a")); err != nil {
		t.Fatal(err)
	}
	if objs, err := b.List(ctx, ""); err != nil || len(objs) != 0 {
		t.Fatalf("another prefix sees %+v, %v", objs, err)
	}
	if objs, err := a.List(ctx, ""); err != nil || len(objs) != 1 || objs[0].Key != "snapshots/x/s.snap" {
		t.Fatalf("List = %+v, %v", objs, err)
	}
	if _, err := os.Stat(filepath.Join(srv.Dir, srv.Bucket, "install-a", "snapshots", "x", "s.snap")); err != nil {
		t.Fatalf("the object is not under the prefix in the bucket: %v", err)
	}
	for _, p := range []string{"../x", "/abs", "a//b"} {
		if _, err := snapshot.NewS3(snapshot.S3Config{Endpoint: srv.Endpoint, Bucket: "b", Prefix: p, AccessKeyID: "a", SecretAccessKey: "b"}); err == nil {
			t.Errorf("prefix %q accepted", p)
		}
	}
}

func TestS3Unreachable(t *testing.T) {
	srv := s3test.Start(t)
	s := newS3(t, srv, nil)
	ctx := context.Background()
	if err := s.Put(ctx, "snapshots/a/kept.snap", strings.NewReader("kept")); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	start := time.Now()
	if err := s.Put(ctx, "snapshots/a/s.snap", strings.NewReader("x")); !errors.Is(err, snapshot.ErrUnavailable) {
		t.Fatalf("Put on a stopped server = %v, want ErrUnavailable", err)
	}
	if _, err := s.Get(ctx, "snapshots/a/kept.snap"); !errors.Is(err, snapshot.ErrUnavailable) {
		t.Fatalf("Get on a stopped server = %v, want ErrUnavailable", err)
	}
	if _, err := s.List(ctx, ""); !errors.Is(err, snapshot.ErrUnavailable) {
		t.Fatalf("List on a stopped server = %v, want ErrUnavailable", err)
	}
	if err := s.Delete(ctx, "snapshots/a/kept.snap"); !errors.Is(err, snapshot.ErrUnavailable) {
		t.Fatalf("Delete on a stopped server = %v, want ErrUnavailable", err)
	}
	t.Logf("four calls on a stopped server failed in %v", time.Since(start))
	// Briefly unreachable: back on the same port, the same data.
	if err := <-srv.Unreachable(0); err != nil {
		t.Fatal(err)
	}
	rc, err := s.Get(ctx, "snapshots/a/kept.snap")
	if err != nil {
		t.Fatalf("Get after the restart: %v", err)
	}
	rc.Close()

	// Killed while a large object is read: the reader fails with
	// ErrUnavailable, not as a short (truncated) object.
	big := bytes.Repeat([]byte("0123456789abcdef"), 2<<20) // 32 MiB
	if err := s.Put(ctx, "snapshots/a/big.snap", bytes.NewReader(big)); err != nil {
		t.Fatal(err)
	}
	rc, err = s.Get(ctx, "snapshots/a/big.snap")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	buf := make([]byte, 1<<20)
	if _, err := rc.Read(buf); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	var rerr error
	for rerr == nil {
		_, rerr = rc.Read(buf)
	}
	if !errors.Is(rerr, snapshot.ErrUnavailable) {
		t.Fatalf("reading from a server killed mid-object: %v, want ErrUnavailable", rerr)
	}
}

func TestS3WrongCredentials(t *testing.T) {
	srv := s3test.Start(t)
	s := newS3(t, srv, func(c *snapshot.S3Config) { c.SecretAccessKey = "wrong-secret-0123456789" })
	err := s.Put(context.Background(), "snapshots/a/s.snap", strings.NewReader("x"))
	if !errors.Is(err, snapshot.ErrUnavailable) || strings.Contains(err.Error(), "wrong-secret") {
		t.Fatalf("Put with a wrong secret = %v, want ErrUnavailable without the secret", err)
	}
	s = newS3(t, srv, func(c *snapshot.S3Config) { c.Bucket = "no-such-bucket" })
	if _, err := s.List(context.Background(), ""); !errors.Is(err, snapshot.ErrUnavailable) || !strings.Contains(err.Error(), "no-such-bucket") {
		t.Fatalf("List of a missing bucket = %v", err)
	}
}

func TestS3FromEnvironment(t *testing.T) {
	srv := s3test.Start(t)
	t.Setenv("AWS_ENDPOINT_URL", srv.Endpoint)
	t.Setenv("AWS_REGION", srv.Region)
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	s, err := snapshot.NewS3(snapshot.S3Config{Bucket: srv.Bucket})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(context.Background(), "keys/x.key", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
}

// assertNoUploads fails if the server holds an unfinished multipart upload.
func assertNoUploads(t *testing.T, srv *s3test.Server) {
	t.Helper()
	var left []string
	filepath.Walk(srv.Dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && strings.Contains(p, ".sgwtmp") {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		t.Fatalf("unfinished uploads left on the server: %v", left)
	}
}

func TestS3RangedGet(t *testing.T) {
	srv := s3test.Start(t)
	// Parts of 5 MiB, 3 in flight: a 23 MiB object is 5 ranges.
	s := newS3(t, srv, func(c *snapshot.S3Config) { c.PartSize = 5 << 20; c.Parallel = 3 })
	ctx := context.Background()
	body := make([]byte, 23<<20+17)
	rand.Read(body)
	for _, n := range []int{0, 1, 5 << 20, 5<<20 + 1, len(body)} {
		key := fmt.Sprintf("snapshots/a/%d.snap", n)
		if err := s.Put(ctx, key, bytes.NewReader(body[:n])); err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, s, key); got != string(body[:n]) {
			t.Fatalf("%d bytes: got %d bytes back, or different ones", n, len(got))
		}
	}
	// Replaced while it is read: the later ranges do not match the first
	// one's ETag, and the read fails instead of mixing two objects.
	key := fmt.Sprintf("snapshots/a/%d.snap", len(body))
	rc, err := s.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatal(err)
	}
	other := bytes.Repeat([]byte("y"), len(body))
	if err := s.Put(ctx, key, bytes.NewReader(other)); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if !errors.Is(err, snapshot.ErrUnavailable) || !strings.Contains(err.Error(), "changed while it was read") {
		t.Fatalf("a read across a replacement: %v (%d bytes; mixed: %v)", err, len(got), bytes.Contains(got, []byte("yyyy")))
	}
	t.Logf("read across a replacement: %v", err)
}
