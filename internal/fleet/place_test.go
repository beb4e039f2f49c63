package fleet_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/fleet"
	"github.com/orkestr-eu/orkestr/internal/lifecycle"
	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
)

// TestPlacementRereadsBeforeRefusing: placement serves from a node list
// that may be seconds old, but refuses only on the list as it is now: a
// node that was full when the list was read and has room since takes the
// sandbox.
func TestPlacementRereadsBeforeRefusing(t *testing.T) {
	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "orkestr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	beat := func(used int) {
		t.Helper()
		if err := st.Heartbeat(ctx, store.Node{ID: "a", Region: "fsn1", Address: "http://127.0.0.1:9", Version: "test", APIVersion: 1,
			Capacity:  store.NodeCapacity{CPUs: 4, MemoryBytes: 8 << 30, DiskBytes: 100 << 30, Slots: 1},
			Allocated: store.NodeCapacity{CPUs: 0.5 * float64(used), MemoryBytes: int64(used) << 29, DiskBytes: int64(used) << 31, Slots: used},
			Running:   used, Templates: []string{"debian-12"}}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := config.Default()
	nodes := fleet.NewNodes(fleet.Options{Store: st, Config: cfg})
	pl := lifecycle.Placement{Template: "debian-12", Size: "small"}

	beat(1)
	if _, _, err := nodes.Place(ctx, pl); !errors.Is(err, lifecycle.ErrNoCapacity) {
		t.Fatalf("placement on a full node: %v, want no capacity", err)
	}
	beat(0)
	// Older than a read serves as is, younger than a refusal may rest on.
	time.Sleep(1100 * time.Millisecond)
	id, _, err := nodes.Place(ctx, pl)
	if err != nil || id != "a" {
		t.Fatalf("placement after the node freed its slot: %q, %v (refused on the old list)", id, err)
	}
	if cat, err := nodes.FreshCatalog(ctx); err != nil || len(cat.Nodes) != 1 || cat.Nodes[0].Allocated.Slots != 0 || cat.Nodes[0].State != lifecycle.NodeAlive {
		t.Fatalf("fresh catalog: %+v, %v", cat.Nodes, err)
	}
}

// TestPlacementCountsWhatItPlaced: a burst of placements between two
// heartbeats spreads over the nodes, because each placement counts on the
// replica's list what it put on a node; without that, every one of them
// would go to the node that looked emptiest at the last heartbeat.
func TestPlacementCountsWhatItPlaced(t *testing.T) {
	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "orkestr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for _, id := range []string{"a", "b"} {
		if err := st.Heartbeat(ctx, store.Node{ID: id, Region: "fsn1", Address: "http://127.0.0.1:9", Version: "test", APIVersion: 1,
			Capacity: store.NodeCapacity{CPUs: 8, MemoryBytes: 16 << 30, DiskBytes: 100 << 30, Slots: 8},
			// a starts a little emptier than b.
			Allocated: map[string]store.NodeCapacity{"a": {}, "b": {CPUs: 0.5, MemoryBytes: 512 << 20, DiskBytes: 1 << 30, Slots: 1}}[id],
			Templates: []string{"debian-12"}}); err != nil {
			t.Fatal(err)
		}
	}
	nodes := fleet.NewNodes(fleet.Options{Store: st, Config: config.Default()})
	pl := lifecycle.Placement{Template: "debian-12", Size: "small"}
	on := map[string]int{}
	for range 6 {
		id, _, err := nodes.Place(ctx, pl)
		if err != nil {
			t.Fatal(err)
		}
		on[id]++
	}
	if on["a"] < 2 || on["b"] < 2 {
		t.Fatalf("6 placements between heartbeats went %v, want them spread over a and b", on)
	}
}

// TestPlacementCountsWhatItFreed: creates and deletes between two
// heartbeats leave a node's room as it was on the replica's list, so the
// placements never find the node full and never read the node list again
// (here: the store is closed after the first read, and a read fails).
func TestPlacementCountsWhatItFreed(t *testing.T) {
	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "orkestr.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Heartbeat(ctx, store.Node{ID: "a", Region: "fsn1", Address: "http://127.0.0.1:9", Version: "test", APIVersion: 1,
		Capacity:  store.NodeCapacity{CPUs: 4, MemoryBytes: 8 << 30, DiskBytes: 100 << 30, Slots: 2},
		Templates: []string{"debian-12"}}); err != nil {
		t.Fatal(err)
	}
	nodes := fleet.NewNodes(fleet.Options{Store: st, Config: config.Default()})
	pl := lifecycle.Placement{Template: "debian-12", Size: "small"}
	if _, _, err := nodes.Place(ctx, pl); err != nil {
		t.Fatal(err)
	}
	st.Close()
	for i := range 10 {
		id, _, err := nodes.Place(ctx, pl)
		if err != nil || id != "a" {
			t.Fatalf("placement %d after as many deletes: %q, %v", i+2, id, err)
		}
		nodes.Released("a", "small")
	}
	// Without the deletes the node is full on the list: the placement
	// reads the list again before it refuses, which fails here.
	if _, _, err := nodes.Place(ctx, pl); err != nil {
		t.Fatal(err)
	}
	if _, _, err := nodes.Place(ctx, pl); err == nil {
		t.Fatal("a third sandbox placed on a node of 2 slots without reading the node list")
	}
}
