package bench

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/snapshot/s3test"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// snapNodes are two nodes in this process, each with its own data and
// state directories (so its own snapshot cache), sharing one S3 store (a
// real versitygw on loopback) and one master key: "another node".
func snapNodes(b *testing.B) (a, c *node.Node, st snapshot.Store) {
	a, c, _, st = snapNodesWithLocal(b)
	return a, c, st
}

// snapNodesWithLocal adds a third node without a store: the baseline of
// a pause that is a local checkpoint only.
func snapNodesWithLocal(b *testing.B) (a, c, local *node.Node, st snapshot.Store) {
	b.Helper()
	testenv.RequireRoot(b)
	srv := s3test.Start(b)
	st, err := snapshot.NewS3(srv.Config())
	if err != nil {
		b.Fatal(err)
	}
	master := make([]byte, 32)
	_, _ = rand.Read(master)
	mk, err := snapshot.ParseMasterKey(base64.StdEncoding.EncodeToString(master))
	if err != nil {
		b.Fatal(err)
	}
	open := func(id string, st snapshot.Store) *node.Node {
		var kr *snapshot.Keyring
		if st != nil {
			var err error
			if kr, err = snapshot.NewKeyring(st, mk); err != nil {
				b.Fatal(err)
			}
		}
		data := b.TempDir()
		state, err := os.MkdirTemp("/run", "orkb-")
		if err != nil {
			b.Fatal(err)
		}
		n, err := node.Open(node.Config{
			DataDir: data, StateDir: state, TemplateDir: testenv.TemplateDir(), Runsc: testenv.Runsc(b),
			AgentBinary: testenv.AgentBinary(b), Sizes: node.Resources(config.Default().Sizes), ID: id,
			Log:           slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
			SnapshotStore: st, SnapshotKeys: kr, SnapshotCacheBytes: 1 << 30,
		})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := n.Reconcile(context.Background(), nodeapi.Keep{}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_ = n.Close(ctx, true)
			_ = os.RemoveAll(state)
		})
		return n
	}
	return open("a", st), open("b", st), open("local", nil), st
}

const benchAccount = "acc_bench"

func newSandboxOn(ctx context.Context, b *testing.B, n *node.Node) (runtime.Sandbox, string) {
	b.Helper()
	id := "sbx_" + ulid.Make().String()
	rt, err := n.Create(ctx, nodeapi.CreateRequest{SandboxID: id, AccountID: benchAccount, Template: templateName, Size: "small"})
	if err != nil {
		b.Fatal(err)
	}
	execTrue(ctx, b, rt)
	return rt, id
}

// BenchmarkPortablePauseResume: pause (checkpoint, seal, put into the
// store; baseline: a node without a store, whose pause is the local
// checkpoint only) and resume of a small idle sandbox on the node that paused it
// (from its cache) and on another node (get, verify, open, restore), with
// the snapshot's size before and after compression. The ratio is resume
// on another node over resume on the same node.
func BenchmarkPortablePauseResume(b *testing.B) {
	a, c, local, st := snapNodesWithLocal(b)
	ctx := timeout(b, 20*time.Minute)
	var pause, pauseLocal, same, other durations
	var raw, sealed int64
	once := func() {
		lrt, lid := newSandboxOn(ctx, b, local)
		lsnap := lid + "-" + ulid.Make().String()
		t0 := time.Now()
		if _, err := local.Checkpoint(ctx, lrt.ID(), lsnap); err != nil {
			b.Fatal(err)
		}
		pauseLocal.add(time.Since(t0))
		_ = local.RemoveSnapshot(ctx, lsnap)
		rt, id := newSandboxOn(ctx, b, a)
		snap1 := id + "-" + ulid.Make().String()
		t0 = time.Now()
		s, err := a.Checkpoint(ctx, rt.ID(), snap1)
		pause.add(time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		raw = s.Bytes
		if objs, err := st.List(ctx, snapshot.SnapshotsPrefix); err == nil && len(objs) == 1 {
			sealed = objs[0].Size
		}
		t0 = time.Now()
		rt, err = a.Restore(ctx, nodeapi.RestoreRequest{SandboxID: id, AccountID: benchAccount, Snapshot: snap1, Template: templateName, Size: "small"})
		same.add(time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		execTrue(ctx, b, rt)
		cleanupSnapshot(ctx, b, a, st, snap1)
		snap2 := id + "-" + ulid.Make().String()
		t0 = time.Now()
		if _, err := a.Checkpoint(ctx, rt.ID(), snap2); err != nil {
			b.Fatal(err)
		}
		pause.add(time.Since(t0))
		t0 = time.Now()
		rt, err = c.Restore(ctx, nodeapi.RestoreRequest{SandboxID: id, AccountID: benchAccount, Snapshot: snap2, Template: templateName, Size: "small"})
		other.add(time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		execTrue(ctx, b, rt)
		if err := c.Destroy(ctx, rt.ID()); err != nil {
			b.Fatal(err)
		}
		cleanupSnapshot(ctx, b, a, st, snap2)
		_ = c.RemoveSnapshot(ctx, snap2)
	}
	once() // warm-up
	pause, pauseLocal, same, other = nil, nil, nil, nil
	for b.Loop() {
		once()
	}
	pause.report(b, "pause-p50-ms")
	pauseLocal.report(b, "pause-local-p50-ms")
	b.ReportMetric(float64(median(pause))/float64(median(pauseLocal)), "pause/local")
	same.report(b, "resume-same-p50-ms")
	other.report(b, "resume-other-p50-ms")
	b.ReportMetric(float64(median(other))/float64(median(same)), "other/same")
	b.ReportMetric(float64(raw)/(1<<20), "snapshot-MiB")
	b.ReportMetric(float64(sealed)/(1<<20), "sealed-MiB")
}

// BenchmarkPortableFork10: a live checkpoint of a running small sandbox
// and ten clones restored from it at once on its node (what a fork of 10
// does on one node), until all ten agents are up.
func BenchmarkPortableFork10(b *testing.B) {
	a, _, _ := snapNodes(b)
	ctx := timeout(b, 20*time.Minute)
	var fork durations
	once := func() {
		rt, id := newSandboxOn(ctx, b, a)
		snap := id + "-fork-" + ulid.Make().String()
		t0 := time.Now()
		if _, err := a.CheckpointLive(ctx, rt.ID(), snap); err != nil {
			b.Fatal(err)
		}
		clones := make([]runtime.Sandbox, 10)
		errs := make([]error, 10)
		var wg sync.WaitGroup
		for i := range clones {
			wg.Add(1)
			go func() {
				defer wg.Done()
				clones[i], errs[i] = a.Restore(ctx, nodeapi.RestoreRequest{SandboxID: "sbx_" + ulid.Make().String(), AccountID: benchAccount, Snapshot: snap, Template: templateName, Size: "small"})
			}()
		}
		wg.Wait()
		fork.add(time.Since(t0))
		for i, c := range clones {
			if errs[i] != nil {
				b.Fatal(errs[i])
			}
			_ = a.Destroy(ctx, c.ID())
		}
		_ = a.Destroy(ctx, rt.ID())
		_ = a.RemoveSnapshot(ctx, snap)
	}
	once()
	fork = nil
	for b.Loop() {
		once()
	}
	fork.report(b, "fork10-p50-ms")
}

func cleanupSnapshot(ctx context.Context, b *testing.B, n *node.Node, st snapshot.Store, id string) {
	b.Helper()
	_ = n.RemoveSnapshot(ctx, id)
	key, _ := snapshot.SnapshotKey(benchAccount, id)
	if err := st.Delete(ctx, key); err != nil {
		b.Fatal(err)
	}
}
