package node_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

func openNode(t *testing.T, data, state string, st snapshot.Store) *node.Node {
	t.Helper()
	var kr *snapshot.Keyring
	if st != nil {
		var err error
		if kr, err = snapshot.NewKeyring(st, nil); err != nil {
			t.Fatal(err)
		}
	}
	n, err := node.Open(node.Config{
		DataDir: data, StateDir: state, TemplateDir: testenv.TemplateDir(), Runsc: testenv.Runsc(t),
		AgentBinary: testenv.AgentBinary(t), Sizes: node.Resources(config.Default().Sizes),
		Log:           slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		SnapshotStore: st, SnapshotKeys: kr,
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestUnstoredSnapshotStoredAtStart: a kept snapshot the node holds but
// never put into the store (a crash between the checkpoint and the upload,
// or a store switched on later) is stored when the node starts, and then
// restores on a node that does not hold it.
func TestUnstoredSnapshotStoredAtStart(t *testing.T) {
	testenv.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	data := t.TempDir()
	state, err := os.MkdirTemp("/run", "orkn-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	n := openNode(t, data, state, nil)
	if _, err := n.Reconcile(ctx, nodeapi.Keep{}); err != nil {
		t.Fatal(err)
	}
	const sid, account = "sbx_01TESTUNSTORED0000000000", "acc_unstored"
	rt, err := n.Create(ctx, nodeapi.CreateRequest{SandboxID: sid, AccountID: account, Template: "debian-12", Size: "small"})
	if err != nil {
		t.Fatal(err)
	}
	snapID := sid + "-1"
	if _, err := n.Checkpoint(ctx, rt.ID(), snapID); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(ctx, true); err != nil {
		t.Fatal(err)
	}

	st := snapshot.NewFS(t.TempDir())
	n2 := openNode(t, data, state, st)
	defer n2.Close(context.Background(), true)
	if _, err := n2.Reconcile(ctx, nodeapi.Keep{Snapshots: []string{snapID}}); err != nil {
		t.Fatal(err)
	}
	key, _ := snapshot.SnapshotKey(account, snapID)
	objs, err := st.List(ctx, snapshot.SnapshotsPrefix)
	if err != nil || len(objs) != 1 || objs[0].Key != key {
		t.Fatalf("objects after the start: %+v %v", objs, err)
	}
	// Another node (its own directories) restores it from the store.
	state3, err := os.MkdirTemp("/run", "orkn-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state3)
	n3 := openNode(t, t.TempDir(), state3, st)
	defer n3.Close(context.Background(), true)
	if _, err := n3.Reconcile(ctx, nodeapi.Keep{}); err != nil {
		t.Fatal(err)
	}
	rt3, err := n3.Restore(ctx, nodeapi.RestoreRequest{SandboxID: sid, AccountID: account, Snapshot: snapID, Template: "debian-12", Size: "small"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n3.Destroy(ctx, rt3.ID()); err != nil {
		t.Fatal(err)
	}
}
