package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/snapshot/s3test"
)

// TestFleetSnapshots: a fleet whose nodes keep snapshots in a real S3
// server (versitygw): a sandbox paused on one node resumes on another
// after the first is killed (kill -9), its counter process counting on
// from where it was and its files intact; terminate removes the object.
func TestFleetSnapshots(t *testing.T) {
	s3 := s3test.Start(t)
	master := make([]byte, 32)
	_, _ = rand.Read(master)
	mk := base64.StdEncoding.EncodeToString(master)
	port := s3.Endpoint[strings.LastIndex(s3.Endpoint, ":")+1:]
	section := func(endpoint string) string {
		return fmt.Sprintf("snapshots:\n  store: s3\n  master_key: %q\n  s3:\n    endpoint: %q\n    region: %s\n    bucket: %s\n    access_key_id: %s\n    secret_access_key: %q\n",
			mk, endpoint, s3.Region, s3.Bucket, s3.AccessKey, s3.SecretKey)
	}
	f := newFleetWith(t, []struct {
		id, region string
		slots      int
	}{{"s1", "fsn1", 4}, {"s2", "fsn1", 4}}, fleetExtras{
		node: func(n *fleetNode) string {
			// The node reaches the S3 server on the host side of its link.
			forward(t, n.hostIP+":"+port, "127.0.0.1:"+port)
			return section("http://" + n.hostIP + ":" + port)
		},
		controlPlane: section(s3.Endpoint),
	})
	a, key := f.replicas[0], f.key
	store, err := snapshot.NewS3(s3.Config())
	if err != nil {
		t.Fatal(err)
	}
	objects := func() int {
		list, err := store.List(context.Background(), snapshot.SnapshotsPrefix)
		if err != nil {
			t.Fatal(err)
		}
		return len(list)
	}
	exec := func(id, cmd string) string {
		t.Helper()
		r := a.do("POST", "/v1/sandboxes/"+id+"/exec", key, map[string]any{"command": cmd})
		if r.status != 200 {
			row := a.do("GET", "/v1/sandboxes/"+id, key, nil)
			t.Fatalf("exec %q on %s (node %s): %d %s; the sandbox: %s", cmd, id, f.nodeOf(id), r.status, r.body, row.body)
		}
		return r.json(t)["stdout"].(string)
	}
	count := func(id string) int {
		t.Helper()
		for i := 0; i < 50; i++ {
			if n, err := strconv.Atoi(strings.TrimSpace(exec(id, "cat /workspace/count"))); err == nil {
				return n
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("%s: no count", id)
		return 0
	}

	id := a.create(key, nil)
	from := f.nodeOf(id)
	exec(id, "echo kept > /workspace/file.txt")
	exec(id, `i=0; while true; do i=$((i+1)); echo $i > /workspace/count.tmp; mv /workspace/count.tmp /workspace/count; sleep 0.1; done >/dev/null 2>&1 &`)
	time.Sleep(time.Second)
	before := count(id)
	if r := a.do("POST", "/v1/sandboxes/"+id+"/pause", key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	if objects() != 1 {
		t.Fatalf("%d objects after the pause, want 1", objects())
	}

	// The node that paused it dies; the resume lands on the other one.
	f.node(from).kill()
	start := time.Now()
	r := f.replicas[1].do("POST", "/v1/sandboxes/"+id+"/resume", key, nil)
	if r.status != 200 {
		t.Fatalf("resume after its node died: %d %s", r.status, r.body)
	}
	t.Logf("resume on another node took %v", time.Since(start))
	if to := f.nodeOf(id); to == from {
		t.Fatalf("resumed on the dead node %s", to)
	}
	after := count(id)
	if after < before || after > before+30 {
		t.Fatalf("counter %d after resume, %d before the pause", after, before)
	}
	deadline := time.Now().Add(10 * time.Second)
	for count(id) <= after {
		if time.Now().After(deadline) {
			t.Fatal("the counter does not count after the resume")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := exec(id, "cat /workspace/file.txt"); got != "kept\n" {
		t.Fatalf("file after resume on another node: %q", got)
	}
	if objects() != 0 {
		t.Fatalf("%d objects after the resume, want 0", objects())
	}

	// The dead node comes back (empty); a fork places clones across the
	// nodes, those elsewhere fetching the fork's snapshot from the store.
	f.node(from).start()
	f.waitAlive(2)
	src := f.nodeOf(id)
	r = a.do("POST", "/v1/sandboxes/"+id+"/fork", key, map[string]any{"count": 5})
	if r.status != 201 {
		t.Fatalf("fork: %d %s", r.status, r.body)
	}
	elsewhere := 0
	var clones []string
	for _, c := range r.json(t)["data"].([]any) {
		cid := c.(map[string]any)["id"].(string)
		clones = append(clones, cid)
		if got := exec(cid, "cat /workspace/file.txt"); got != "kept\n" {
			t.Fatalf("clone %s: %q", cid, got)
		}
		if n := count(cid); n < after {
			t.Fatalf("clone %s counter %d < %d", cid, n, after)
		}
		if f.nodeOf(cid) != src {
			elsewhere++
		}
		exec(cid, "echo "+cid+" > /workspace/file.txt")
	}
	if len(clones) != 5 {
		t.Fatalf("fork of 5 made %d clones", len(clones))
	}
	// Then they diverge: each sees its own write, the source none.
	for _, cid := range clones {
		if got := exec(cid, "cat /workspace/file.txt"); got != cid+"\n" {
			t.Fatalf("clone %s after the writes: %q", cid, got)
		}
		a.do("DELETE", "/v1/sandboxes/"+cid, key, nil)
	}
	if got := exec(id, "cat /workspace/file.txt"); got != "kept\n" {
		t.Fatalf("the fork's source after its clones wrote: %q", got)
	}
	if elsewhere == 0 {
		t.Fatalf("all clones on the source's node %s", src)
	}
	if objects() != 0 {
		t.Fatalf("%d objects after the fork, want 0 (the fork's snapshot goes)", objects())
	}

	// The store briefly unreachable: a pause is 503 and the sandbox runs
	// on; a resume that needs the store (the cache gone, as on another
	// node) is 503 and it stays paused; then both succeed.
	s3.Stop()
	if r := a.do("POST", "/v1/sandboxes/"+id+"/pause", key, nil); r.status != 503 || r.errCode() != "snapshot_store_unavailable" {
		t.Fatalf("pause with the store down: %d %s", r.status, r.body)
	}
	f.waitStatus(a, key, id, "running", "", 5*time.Second)
	n0 := count(id)
	if err := s3.Restart(); err != nil {
		t.Fatal(err)
	}
	if r := a.do("POST", "/v1/sandboxes/"+id+"/pause", key, nil); r.status != 200 {
		t.Fatalf("pause with the store back: %d %s", r.status, r.body)
	}
	dropCaches := func() {
		for _, n := range f.nodes {
			ents, _ := os.ReadDir(filepath.Join(n.dataDir, "snapshots"))
			for _, e := range ents {
				_ = os.RemoveAll(filepath.Join(n.dataDir, "snapshots", e.Name()))
			}
		}
	}
	dropCaches()
	s3.Stop()
	if r := a.do("POST", "/v1/sandboxes/"+id+"/resume", key, nil); r.status != 503 || r.errCode() != "snapshot_store_unavailable" {
		t.Fatalf("resume with the store down: %d %s", r.status, r.body)
	}
	f.waitStatus(a, key, id, "paused", "", 5*time.Second)
	if err := s3.Restart(); err != nil {
		t.Fatal(err)
	}
	if r := a.do("POST", "/v1/sandboxes/"+id+"/resume", key, nil); r.status != 200 {
		t.Fatalf("resume with the store back: %d %s", r.status, r.body)
	}
	if n := count(id); n < n0 {
		t.Fatalf("counter %d after the store's outage, %d before", n, n0)
	}

	// A flipped byte in the stored object is refused at resume.
	if r := a.do("POST", "/v1/sandboxes/"+id+"/pause", key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	dropCaches()
	list, err := store.List(context.Background(), snapshot.SnapshotsPrefix)
	if err != nil || len(list) != 1 {
		t.Fatalf("objects: %+v %v", list, err)
	}
	obj := filepath.Join(s3.Dir, s3.Bucket, list[0].Key)
	b, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(obj, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := a.do("POST", "/v1/sandboxes/"+id+"/resume", key, nil); r.status != 422 || r.errCode() != "snapshot_corrupt" {
		t.Fatalf("resume of a corrupt snapshot: %d %s", r.status, r.body)
	}
	f.waitStatus(a, key, id, "paused", "", 5*time.Second)
	if r := a.do("DELETE", "/v1/sandboxes/"+id, key, nil); r.status != 200 {
		t.Fatalf("terminate: %d %s", r.status, r.body)
	}
	if objects() != 0 {
		t.Fatalf("%d objects after terminating the corrupt one", objects())
	}

	// The plan's snapshot cap counts paused sandboxes on every node: two
	// sandboxes paused on the two nodes fill fleet3's cap of 2.
	k3 := a.newKey("fleet3snap", "fleet3", "sandboxes:write")
	capped := []string{a.create(k3, nil)}
	for try := 0; ; try++ {
		// A heartbeat later placement sees the node's new sandbox and
		// puts the next one on the other node; under load the heartbeat
		// may come late, and a second sandbox on the same node is
		// terminated and asked for again.
		time.Sleep(1500 * time.Millisecond)
		c := a.create(k3, nil)
		if f.nodeOf(c) != f.nodeOf(capped[0]) {
			capped = append(capped, c)
			break
		}
		if try == 5 {
			t.Fatalf("six creates after the first all landed on its node %s", f.nodeOf(c))
		}
		if r := a.do("DELETE", "/v1/sandboxes/"+c, k3, nil); r.status != 200 {
			t.Fatalf("terminate: %d %s", r.status, r.body)
		}
	}
	capped = append(capped, a.create(k3, nil))
	for i, c := range capped {
		r := f.replicas[i%2].do("POST", "/v1/sandboxes/"+c+"/pause", k3, nil)
		switch {
		case i < 2 && r.status != 200:
			t.Fatalf("pause %d: %d %s", i, r.status, r.body)
		case i == 2 && (r.status != 402 || r.errCode() != "snapshot_cap_reached"):
			t.Fatalf("a third pause over the cap of 2: %d %s", r.status, r.body)
		}
	}
	nodesUsed := map[string]bool{}
	for _, c := range capped[:2] {
		nodesUsed[f.nodeOf(c)] = true
	}
	if len(nodesUsed) != 2 {
		t.Fatalf("the two paused sandboxes are on nodes %v, want both nodes", nodesUsed)
	}
	for _, c := range capped {
		if r := a.do("DELETE", "/v1/sandboxes/"+c, k3, nil); r.status != 200 {
			t.Fatalf("terminate: %d %s", r.status, r.body)
		}
	}
	if objects() != 0 {
		t.Fatalf("%d objects after terminating the paused sandboxes", objects())
	}

	id = a.create(key, nil)

	// Paused again, then terminated: the object goes.
	if r := a.do("POST", "/v1/sandboxes/"+id+"/pause", key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	if objects() != 1 {
		t.Fatalf("%d objects after the second pause", objects())
	}
	if r := a.do("DELETE", "/v1/sandboxes/"+id, key, nil); r.status != 200 {
		t.Fatalf("terminate: %d %s", r.status, r.body)
	}
	if objects() != 0 {
		t.Fatalf("%d objects after terminate, want 0", objects())
	}
}
