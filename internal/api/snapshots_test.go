package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/lifecycle"
	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/snapshot/s3test"
)

// s3Harness is a one-box server whose node keeps snapshots in a real S3
// server (versitygw), encrypted under a master key.
func s3Harness(t *testing.T) (*harness, *s3test.Server, snapshot.Store) {
	t.Helper()
	srv := s3test.Start(t)
	st, err := snapshot.NewS3(srv.Config())
	if err != nil {
		t.Fatal(err)
	}
	master := make([]byte, 32)
	_, _ = rand.Read(master)
	mk, err := snapshot.ParseMasterKey(base64.StdEncoding.EncodeToString(master))
	if err != nil {
		t.Fatal(err)
	}
	kr, err := snapshot.NewKeyring(st, mk)
	if err != nil {
		t.Fatal(err)
	}
	return newHarnessWith(t, testConfig(), true, snapshotOptions{store: st, keys: kr, cacheBytes: 1 << 30}), srv, st
}

func objects(t *testing.T, st snapshot.Store) []snapshot.Object {
	t.Helper()
	list, err := st.List(context.Background(), snapshot.SnapshotsPrefix)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// dropCache removes the node's local copies of snapshots, as if the
// sandbox were resumed on another node.
func dropCache(t *testing.T, h *harness) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(h.dataDir, "snapshots"))
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(h.dataDir, "snapshots", e.Name())); err != nil {
			t.Fatal(err)
		}
	}
}

func status(t *testing.T, h *harness, key, id string) string {
	t.Helper()
	return h.do("GET", "/v1/sandboxes/"+id, key, nil).json(t)["status"].(string)
}

// TestPauseDurableInS3: pause answers once the snapshot is in the store
// (encrypted), resume works from the node's cache and from the store, an
// unreachable store leaves the sandbox as it was with a 503, a flipped
// byte is refused at resume, and terminate removes the object.
func TestPauseDurableInS3(t *testing.T) {
	h, srv, st := s3Harness(t)
	_, key := h.account("durable", "team")
	id := h.create(key)
	const secret = "in-memory-marker-7f3a9c"
	h.exec(key, id, "echo "+secret+" > /workspace/marker")
	h.exec(key, id, stateLoop)
	v, before := waitState(t, h, key, id, 5)

	// Pause: durable, encrypted.
	if r := h.do("POST", "/v1/sandboxes/"+id+"/pause", key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	objs := objects(t, st)
	if len(objs) != 1 || !strings.HasPrefix(objs[0].Key, snapshot.SnapshotsPrefix) {
		t.Fatalf("objects after a pause: %+v", objs)
	}
	if hits := grepFiles(t, srv.Dir, secret); len(hits) > 0 {
		t.Fatalf("the store holds the sandbox's data in clear: %v", hits)
	}
	// Resume from the cache; the object goes with the snapshot.
	if r := h.do("POST", "/v1/sandboxes/"+id+"/resume", key, nil); r.status != 200 {
		t.Fatalf("resume: %d %s", r.status, r.body)
	}
	if v2, n := waitState(t, h, key, id, before); v2 != v {
		t.Fatalf("after resume: value %s (was %s), count %d", v2, v, n)
	}
	if objs := objects(t, st); len(objs) != 0 {
		t.Fatalf("objects after resume: %+v", objs)
	}

	// The store is down: pause is 503 and the sandbox runs on, same process.
	srv.Stop()
	r := h.do("POST", "/v1/sandboxes/"+id+"/pause", key, nil)
	if r.status != 503 || r.code() != "snapshot_store_unavailable" {
		t.Fatalf("pause with the store down: %d %s", r.status, r.body)
	}
	if s := status(t, h, key, id); s != "running" {
		t.Fatalf("after a failed pause the sandbox is %s", s)
	}
	_, n := readState(t, h, key, id)
	if v2, _ := waitState(t, h, key, id, n); v2 != v {
		t.Fatalf("after a failed pause the process changed: %s -> %s", v, v2)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if r := h.do("POST", "/v1/sandboxes/"+id+"/pause", key, nil); r.status != 200 {
		t.Fatalf("pause with the store back: %d %s", r.status, r.body)
	}

	// Resume without the cache (another node): the store is down -> 503,
	// still paused; back -> resumed from the store.
	dropCache(t, h)
	srv.Stop()
	r = h.do("POST", "/v1/sandboxes/"+id+"/resume", key, nil)
	if r.status != 503 || r.code() != "snapshot_store_unavailable" {
		t.Fatalf("resume with the store down: %d %s", r.status, r.body)
	}
	if s := status(t, h, key, id); s != "paused" {
		t.Fatalf("after a failed resume the sandbox is %s", s)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if r := h.do("POST", "/v1/sandboxes/"+id+"/resume", key, nil); r.status != 200 {
		t.Fatalf("resume from the store: %d %s", r.status, r.body)
	}
	if v2, _ := waitState(t, h, key, id, n); v2 != v {
		t.Fatalf("resumed from the store: value %s, want %s", v2, v)
	}
	if got := h.exec(key, id, "cat /workspace/marker"); got != secret+"\n" {
		t.Fatalf("file after resume from the store: %q", got)
	}

	// A flipped byte in the stored object is refused; it stays paused.
	if r := h.do("POST", "/v1/sandboxes/"+id+"/pause", key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	dropCache(t, h)
	objs = objects(t, st)
	if len(objs) != 1 {
		t.Fatalf("objects: %+v", objs)
	}
	flipByte(t, filepath.Join(srv.Dir, srv.Bucket, objs[0].Key), objs[0].Size/2)
	r = h.do("POST", "/v1/sandboxes/"+id+"/resume", key, nil)
	if r.status != 422 || r.code() != "snapshot_corrupt" {
		t.Fatalf("resume of a corrupt snapshot: %d %s", r.status, r.body)
	}
	if s := status(t, h, key, id); s != "paused" {
		t.Fatalf("after a refused resume the sandbox is %s", s)
	}
	if ents, _ := os.ReadDir(filepath.Join(h.dataDir, "snapshots")); len(ents) != 0 {
		t.Fatalf("a refused snapshot left %d entries in the cache", len(ents))
	}
	// Terminate removes the object.
	if r := h.do("DELETE", "/v1/sandboxes/"+id, key, nil); r.status != 200 {
		t.Fatal(r.status)
	}
	if objs := objects(t, st); len(objs) != 0 {
		t.Fatalf("objects after terminate: %+v", objs)
	}
}

func flipByte(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

func grepFiles(t *testing.T, dir, needle string) []string {
	t.Helper()
	var hits []string
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(needle)) {
				hits = append(hits, p)
			}
		}
		return nil
	})
	return hits
}

// TestCollectSnapshots: the collector removes an orphan object and keeps
// a paused sandbox's; dry, it removes nothing.
func TestCollectSnapshots(t *testing.T) {
	h, _, st := s3Harness(t)
	_, key := h.account("gc", "team")
	id := h.create(key)
	if r := h.do("POST", "/v1/sandboxes/"+id+"/pause", key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	live := objects(t, st)
	if len(live) != 1 {
		t.Fatalf("objects: %+v", live)
	}
	orphan, _ := snapshot.SnapshotKey("acc_gone", "sbx_gone-01")
	if err := st.Put(context.Background(), orphan, strings.NewReader("left by a dead node")); err != nil {
		t.Fatal(err)
	}
	got, err := lifecycle.CollectSnapshots(context.Background(), h.store, st, true, -1)
	if err != nil || len(got) != 1 || got[0].Key != orphan {
		t.Fatalf("dry run: %+v %v", got, err)
	}
	if n := len(objects(t, st)); n != 2 {
		t.Fatalf("a dry run removed objects: %d left", n)
	}
	// With the default grace a fresh orphan is spared (its pause may not
	// be recorded yet).
	if got, err := lifecycle.CollectSnapshots(context.Background(), h.store, st, false, 0); err != nil || len(got) != 0 {
		t.Fatalf("collect within the grace: %+v %v", got, err)
	}
	if got, err = lifecycle.CollectSnapshots(context.Background(), h.store, st, false, -1); err != nil || len(got) != 1 {
		t.Fatalf("collect: %+v %v", got, err)
	}
	left := objects(t, st)
	if len(left) != 1 || left[0].Key != live[0].Key {
		t.Fatalf("after collect: %+v (the live snapshot is %s)", left, live[0].Key)
	}
	if r := h.do("POST", "/v1/sandboxes/"+id+"/resume", key, nil); r.status != 200 {
		t.Fatalf("resume after collect: %d %s", r.status, r.body)
	}
}
