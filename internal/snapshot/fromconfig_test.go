package snapshot_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/snapshot/s3test"
)

func TestFromConfig(t *testing.T) {
	ctx := context.Background()
	master := base64.StdEncoding.EncodeToString(masterKey(t))
	data := t.TempDir()

	// The one-box default: a directory of the data dir, no encryption.
	st, kr, err := snapshot.FromConfig(config.Default().Snapshots, data)
	if err != nil {
		t.Fatal(err)
	}
	if k, err := kr.DataKey(ctx, "acct_1"); err != nil || k.Encrypts() || kr.Encrypts() {
		t.Fatalf("default keyring: encrypts=%v, %v", k.Encrypts(), err)
	}
	if err := st.Put(ctx, "keys/probe", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if objs, _ := snapshot.NewFS(filepath.Join(data, "snapshot-store")).List(ctx, ""); len(objs) != 1 {
		t.Fatalf("the default fs store is not <data>/snapshot-store: %+v", objs)
	}

	// fs with a master key encrypts.
	_, kr, err = snapshot.FromConfig(config.Snapshots{Store: "fs", Dir: t.TempDir(), MasterKey: master}, "")
	if err != nil {
		t.Fatal(err)
	}
	if k, err := kr.DataKey(ctx, "acct_1"); err != nil || !k.Encrypts() {
		t.Fatalf("fs with a master key: encrypts=%v, %v", k.Encrypts(), err)
	}

	// S3 needs a master key.
	if _, _, err := snapshot.FromConfig(config.Snapshots{Store: "s3", S3: config.SnapshotS3{Bucket: "b"}}, data); err == nil || !strings.Contains(err.Error(), "master_key") {
		t.Fatalf("s3 without a master key: %v", err)
	}
	if _, _, err := snapshot.FromConfig(config.Snapshots{MasterKey: "short"}, data); err == nil || strings.Contains(err.Error(), "short") {
		t.Fatalf("a bad master key: %v", err)
	}

	// S3 for real: seal on one "node", restore on another.
	srv := s3test.Start(t)
	c := config.Snapshots{Store: "s3", MasterKey: master, S3: config.SnapshotS3{
		Endpoint: srv.Endpoint, Region: srv.Region, Bucket: srv.Bucket, Prefix: "orkestr/",
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey,
	}}
	stA, krA, err := snapshot.FromConfig(c, data)
	if err != nil {
		t.Fatal(err)
	}
	stB, krB, err := snapshot.FromConfig(c, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	kA, err := krA.DataKey(ctx, "acct_1")
	if err != nil || !kA.Encrypts() {
		t.Fatalf("s3 keyring: %v", err)
	}
	src := snapshotDir(t, 1<<20)
	if _, err := snapshot.Upload(ctx, stA, "snapshots/acct_1/s.snap", src, kA, manifest()); err != nil {
		t.Fatal(err)
	}
	kB, err := krB.DataKey(ctx, "acct_1")
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "r")
	if _, err := snapshot.Download(ctx, stB, "snapshots/acct_1/s.snap", dst, kB); err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, dst)
	// The bucket holds neither the raw key nor plaintext.
	raw := get(t, stB, "snapshots/acct_1/s.snap")
	if bytes.Contains(raw, []byte("state state")) || bytes.Contains(raw, []byte("debian-12")) {
		t.Fatal("the stored snapshot holds plaintext")
	}
	if _, err := snapshot.Download(ctx, stB, "snapshots/acct_1/none.snap", t.TempDir()+"/x", kB); !errors.Is(err, snapshot.ErrNotFound) {
		t.Fatalf("Download of a missing snapshot: %v", err)
	}
}
