// Package lifecycle holds the sandbox state changes that more than one
// process makes: settling a node's sandboxes against the store after a
// start or a crash (the one-box server and every fleet node), ending a
// sandbox's record, and the fleet's singleton loops (deadlines, lost
// nodes) that exactly one control-plane replica runs at a time.
package lifecycle

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/store"
)

// Finish moves a sandbox to a final status (terminated or error) with a
// reason, unless it already has one. It retries lost optimistic updates.
func Finish(ctx context.Context, st store.Store, now func() time.Time, log *slog.Logger, id, account string, status store.Status, reason string) {
	for i := 0; i < 5; i++ {
		row, err := st.GetSandbox(ctx, account, id)
		if err != nil || row.Status == store.StatusTerminated || row.Status == store.StatusError {
			return
		}
		t := now().UTC()
		row.Status, row.ErrorMessage, row.ExpiresAt, row.RuntimeID = status, reason, nil, ""
		row.TerminatedAt = &t
		if _, err = st.UpdateSandbox(ctx, row, 0); !errors.Is(err, store.ErrStale) {
			if err != nil {
				log.Error("recording the end of a sandbox", "sandbox", id, "err", err)
			}
			return
		}
	}
}

// Reconcile makes a node and the store agree after a start, a crash or a
// restart: running sandboxes whose runtime survived are adopted, creates
// and pauses that were cut off are settled, and every runtime leftover and
// snapshot nobody owns is destroyed. mine selects the store's rows that
// belong to this node; of those, inFlight (nil: none) selects starts that
// a control plane still running may settle itself (a fleet's node that
// restarted within its heartbeat timeout may have had creates and resumes
// placed on it meanwhile): their snapshots are kept and their rows left
// as they are.
func Reconcile(ctx context.Context, st store.Store, n nodeapi.Node, mine, inFlight func(store.Sandbox) bool, now func() time.Time, log *slog.Logger) error {
	all, err := st.SandboxesByStatus(ctx, store.StatusStarting, store.StatusRunning, store.StatusPaused)
	if err != nil {
		return err
	}
	var rows []store.Sandbox
	keep := nodeapi.Keep{Sandboxes: map[string]string{}}
	for _, row := range all {
		if !mine(row) {
			continue
		}
		if inFlight != nil && inFlight(row) {
			if row.SnapshotDir != "" {
				keep.Snapshots = append(keep.Snapshots, row.SnapshotDir)
			}
			continue
		}
		rows = append(rows, row)
		if row.RuntimeID != "" && row.Status != store.StatusStarting {
			keep.Sandboxes[row.RuntimeID] = row.ID
		}
		if row.SnapshotDir != "" {
			keep.Snapshots = append(keep.Snapshots, row.SnapshotDir)
		}
	}
	rep, err := n.Reconcile(ctx, keep)
	if err != nil {
		return err
	}
	log.Info("reconciled store and runtime", "adopted", len(rep.Adopted), "destroyed", len(rep.Destroyed), "removed", len(rep.Removed))
	alive := map[string]bool{}
	for _, id := range rep.Adopted {
		alive[id] = true
	}
	destroy := func(rid string) {
		if err := n.Destroy(ctx, rid); err != nil {
			log.Warn("destroying a leftover sandbox", "runtime", rid, "err", err)
		}
	}
	for _, row := range rows {
		live := row.RuntimeID != "" && alive[row.RuntimeID]
		switch {
		case row.Status == store.StatusStarting && row.SnapshotDir != "":
			// A resume was cut off; its snapshot is intact (the node
			// removes only snapshots no row names).
			if live {
				destroy(row.RuntimeID)
			}
			row.Status, row.RuntimeID = store.StatusPaused, ""
			if _, err := st.UpdateSandbox(ctx, row, 0); err != nil {
				log.Error("putting an interrupted resume back to paused", "sandbox", row.ID, "err", err)
			}
		case row.Status == store.StatusStarting:
			Finish(ctx, st, now, log, row.ID, row.AccountID, store.StatusError, store.EndCutOff)
		case row.Status == store.StatusRunning && live:
		case row.Status == store.StatusRunning:
			Finish(ctx, st, now, log, row.ID, row.AccountID, store.StatusError, "the sandbox was lost while the server was down")
		case row.Status == store.StatusPaused && row.SnapshotDir != "" && row.RuntimeID != "" && live:
			// The pause was cut off before its checkpoint stopped the
			// sandbox: it is running again, and what the checkpoint wrote
			// goes.
			if err := n.RemoveSnapshot(ctx, row.SnapshotDir); err != nil {
				log.Warn("removing an unfinished snapshot", "sandbox", row.ID, "snapshot", row.SnapshotDir, "err", err)
			}
			row.Status, row.PausedAt, row.SnapshotDir = store.StatusRunning, nil, ""
			exp := now().UTC().Add(time.Duration(row.RemainingMS) * time.Millisecond)
			row.ExpiresAt, row.RemainingMS = &exp, 0
			if _, err := st.UpdateSandbox(ctx, row, 0); err != nil {
				log.Error("putting an interrupted pause back to running", "sandbox", row.ID, "err", err)
			}
		case row.Status == store.StatusPaused && row.SnapshotDir != "" && row.RuntimeID != "":
			// The crash came between the checkpoint (which stopped the
			// sandbox) and its record: record it now. Should the
			// checkpoint be incomplete, the resume says the snapshot is
			// lost.
			row.RuntimeID = ""
			if _, err := st.UpdateSandbox(ctx, row, 0); err != nil {
				log.Error("recording a snapshot a crash left unrecorded", "sandbox", row.ID, "err", err)
			}
		case row.Status == store.StatusPaused && row.SnapshotDir != "":
		case row.Status == store.StatusPaused && live:
			// The pause was cut off before its checkpoint finished and
			// the sandbox still runs: it is running again.
			row.Status, row.PausedAt = store.StatusRunning, nil
			exp := now().UTC().Add(time.Duration(row.RemainingMS) * time.Millisecond)
			row.ExpiresAt, row.RemainingMS = &exp, 0
			if _, err := st.UpdateSandbox(ctx, row, 0); err != nil {
				log.Error("putting an interrupted pause back to running", "sandbox", row.ID, "err", err)
			}
		default:
			Finish(ctx, st, now, log, row.ID, row.AccountID, store.StatusError, "the sandbox's snapshot was lost")
		}
	}
	return nil
}
