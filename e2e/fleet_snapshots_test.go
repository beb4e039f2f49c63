package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
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
			t.Fatalf("exec %q: %d %s", cmd, r.status, r.body)
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
	r = a.do("POST", "/v1/sandboxes/"+id+"/fork", key, map[string]any{"count": 3})
	if r.status != 201 {
		t.Fatalf("fork: %d %s", r.status, r.body)
	}
	elsewhere := 0
	for _, c := range r.json(t)["data"].([]any) {
		cid := c.(map[string]any)["id"].(string)
		if got := exec(cid, "cat /workspace/file.txt"); got != "kept\n" {
			t.Fatalf("clone %s: %q", cid, got)
		}
		if n := count(cid); n < after {
			t.Fatalf("clone %s counter %d < %d", cid, n, after)
		}
		if f.nodeOf(cid) != src {
			elsewhere++
		}
		a.do("DELETE", "/v1/sandboxes/"+cid, key, nil)
	}
	if elsewhere == 0 {
		t.Fatalf("all clones on the source's node %s", src)
	}
	if objects() != 0 {
		t.Fatalf("%d objects after the fork, want 0 (the fork's snapshot goes)", objects())
	}

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
