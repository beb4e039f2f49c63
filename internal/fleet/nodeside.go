package fleet

import (
	"context"
	"log/slog"
	"time"

	"github.com/orkestr-eu/orkestr/internal/lifecycle"
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
// may be inserted after its node started it (the two run side by side).
const SweepGrace = 2 * time.Minute

// InFlightFor is how long a create's or a resume's row may stay starting
// in the hands of the control plane that placed it: its call to the node
// gives up after two minutes, and it then settles the row itself.
const InFlightFor = 3 * time.Minute

// InFlight reports whether a row is a start its control plane may still
// be settling. A node that restarts settles only the other starting rows
// (lifecycle.Reconcile): one placed on it while it restarted (its last
// heartbeat, seconds old, still counted it alive) is answered once its
// API is up. Its sweep settles those abandoned for longer. (UpdatedAt is
// by the control plane's clock: hosts whose clocks disagree by minutes
// would settle starts too early or too late.)
func InFlight(row store.Sandbox) bool {
	return row.Status == store.StatusStarting && time.Since(row.UpdatedAt) < InFlightFor
}

// AdoptAfter is how long a sandbox the node started may have its row
// still starting before the sweep records it running: a create records
// its sandbox running without waiting for the database's disk
// (store.Unflushed), and a crash of the database may lose that record.
// The control plane's own record follows the node's answer by a round
// trip to the database; one that comes later still finds the adopted row
// and keeps it (lifecycle.Manager.Create).
const AdoptAfter = 15 * time.Second

// Sweep, every period, settles the sandboxes the node runs against the
// store's rows:
//
//   - it destroys those the store no longer gives the node (ended as
//     node_lost while the node was cut off, or terminated while its
//     destroy could not reach the node) that it has run for longer than
//     grace;
//   - it records running those whose row the store still has starting
//     (a create's, not a resume's) after adopt;
//   - it settles starts abandoned for InFlightFor (their control plane
//     gone): a create's row with no sandbox here ends as error, a
//     resume's goes back to paused (its sandbox, if any, destroyed).
func Sweep(ctx context.Context, st store.Store, n *node.Node, every, grace, adopt time.Duration, log *slog.Logger) {
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
		unrecorded := map[string]store.Sandbox{} // sandbox id -> a create's row still starting
		resuming := map[string]store.Sandbox{}   // sandbox id -> a resume's row
		for _, r := range rows {
			switch {
			case r.RuntimeID != "":
				mine[r.RuntimeID] = true
			case r.Status == store.StatusStarting && r.SnapshotDir == "":
				unrecorded[r.ID] = r
			case r.Status == store.StatusStarting:
				resuming[r.ID] = r
			}
		}
		running := n.Running()
		for _, r := range running {
			if row, ok := unrecorded[r.SandboxID]; ok {
				delete(unrecorded, r.SandboxID)
				if time.Since(r.Since) >= adopt {
					adoptRow(ctx, st, row, r, log)
				}
				continue
			}
			if row, ok := resuming[r.SandboxID]; ok {
				if !InFlight(row) {
					log.Warn("a resume was abandoned; its sandbox goes and the row is paused again", "sandbox", row.ID, "runtime", r.RuntimeID)
					if err := n.Destroy(ctx, r.RuntimeID); err == nil {
						unpause(ctx, st, row, log)
					}
				}
				delete(resuming, r.SandboxID)
				continue
			}
			if mine[r.RuntimeID] || time.Since(r.Since) < grace {
				continue
			}
			log.Warn("destroying a sandbox the store no longer gives this node", "sandbox", r.SandboxID, "runtime", r.RuntimeID)
			if err := n.Destroy(ctx, r.RuntimeID); err != nil {
				log.Warn("destroying a sandbox the store no longer gives this node failed", "runtime", r.RuntimeID, "err", err)
			}
		}
		// Starts with no sandbox here, abandoned.
		for _, row := range unrecorded {
			if !InFlight(row) {
				log.Warn("a create was abandoned before its sandbox started", "sandbox", row.ID)
				lifecycle.Finish(ctx, st, time.Now, log, row.ID, row.AccountID, store.StatusError, store.EndCutOff)
			}
		}
		for _, row := range resuming {
			if !InFlight(row) {
				log.Warn("a resume was abandoned before its sandbox started; the row is paused again", "sandbox", row.ID)
				unpause(ctx, st, row, log)
			}
		}
	}
}

// unpause puts a resume's row back to paused (its snapshot kept).
func unpause(ctx context.Context, st store.Store, row store.Sandbox, log *slog.Logger) {
	row.Status, row.RuntimeID = store.StatusPaused, ""
	if _, err := st.UpdateSandbox(ctx, row, 0); err != nil {
		log.Warn("putting an abandoned resume back to paused failed", "sandbox", row.ID, "err", err)
	}
}

// adoptRow records a create's row, still starting, as running on the
// sandbox r that the node runs for it; its time runs from the start.
func adoptRow(ctx context.Context, st store.Store, row store.Sandbox, r node.Running, log *slog.Logger) {
	exp := r.Since.UTC().Add(time.Duration(row.TimeoutSeconds) * time.Second)
	row.Status, row.RuntimeID, row.ExpiresAt = store.StatusRunning, r.RuntimeID, &exp
	if _, err := st.UpdateSandbox(ctx, row, 0); err != nil {
		log.Warn("recording a started sandbox's row as running failed", "sandbox", row.ID, "runtime", r.RuntimeID, "err", err)
		return
	}
	log.Warn("recorded a started sandbox's row as running: its create's record was lost", "sandbox", row.ID, "runtime", r.RuntimeID)
}
