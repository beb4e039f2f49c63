package fleet

import (
	"context"
	"log/slog"
	"time"

	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/store"
)

// Heartbeat writes the node's state into the store now and then every
// period until ctx ends. A failed write is logged and retried at the next
// beat: the control plane declares the node lost only after its timeout.
func Heartbeat(ctx context.Context, st store.Store, n *node.Node, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		err := beat(ctx, st, n)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			log.Error("writing the node's heartbeat failed; the control plane loses this node if it goes on", "err", err)
			failing = true
		case err == nil && failing:
			log.Info("heartbeat written again")
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func beat(ctx context.Context, st store.Store, n *node.Node) error {
	info, err := n.Info(ctx)
	if err != nil {
		return err
	}
	return st.Heartbeat(ctx, store.Node{
		ID: info.ID, Region: info.Region, Address: info.Address, Version: info.Version, APIVersion: info.APIVersion,
		Capacity:  store.NodeCapacity{CPUs: info.Capacity.CPUs, MemoryBytes: info.Capacity.MemoryBytes, DiskBytes: info.Capacity.DiskBytes, Slots: info.Capacity.Slots},
		Allocated: store.NodeCapacity{CPUs: info.Allocated.CPUs, MemoryBytes: info.Allocated.MemoryBytes, DiskBytes: info.Allocated.DiskBytes, Slots: info.Allocated.Slots},
		Running:   info.Running, Templates: info.Templates, Warm: info.Warm, NetworkEnabled: info.NetworkEnabled, DiskLow: info.DiskLow,
	})
}

// SweepGrace spares sandboxes the node started recently: a create's row
// names its runtime only once the node has answered.
const SweepGrace = 2 * time.Minute

// Sweep destroys, every period, the sandboxes the node runs that the store
// no longer gives it (ended as node_lost while the node was cut off, or
// terminated while its destroy could not reach the node) and that it has
// run for longer than grace.
func Sweep(ctx context.Context, st store.Store, n *node.Node, every, grace time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rows, err := st.SandboxesOnNode(ctx, n.ID(), store.StatusStarting, store.StatusRunning, store.StatusPaused)
		if err != nil {
			continue
		}
		mine := map[string]bool{}
		for _, r := range rows {
			if r.RuntimeID != "" {
				mine[r.RuntimeID] = true
			}
		}
		for _, r := range n.Running() {
			if mine[r.RuntimeID] || time.Since(r.Since) < grace {
				continue
			}
			log.Warn("destroying a sandbox the store no longer gives this node", "sandbox", r.SandboxID, "runtime", r.RuntimeID)
			if err := n.Destroy(ctx, r.RuntimeID); err != nil {
				log.Warn("destroying a sandbox the store no longer gives this node failed", "runtime", r.RuntimeID, "err", err)
			}
		}
	}
}
