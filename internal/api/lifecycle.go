package api

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/store"
)

// reconcile makes store and runtime agree after a start, a crash or a
// restart: running sandboxes whose runtime survived are adopted, creates
// and pauses that were cut off are settled, and every runtime leftover
// nobody owns is destroyed.
func (s *Server) reconcile(ctx context.Context) error {
	rows, err := s.store.SandboxesByStatus(ctx, store.StatusStarting, store.StatusRunning, store.StatusPaused)
	if err != nil {
		return err
	}
	want := map[string]store.Sandbox{} // runtime id -> row
	for _, row := range rows {
		if row.RuntimeID != "" && row.Status != store.StatusStarting {
			want[row.RuntimeID] = row
		}
	}
	rep, err := s.node.Start(ctx, func(i runtime.Info) bool {
		row, ok := want[i.ID]
		return ok && i.Labels["sandbox_id"] == row.ID
	})
	if err != nil {
		return err
	}
	s.log.Info("reconciled store and runtime", "adopted", len(rep.Adopted), "destroyed", len(rep.Destroyed), "removed", len(rep.Removed))
	keepSnapshots := map[string]bool{}
	for _, row := range rows {
		rt, alive := s.node.Driver.Get(row.RuntimeID)
		switch {
		case row.Status == store.StatusStarting && row.SnapshotDir != "" && fileExists(filepath.Join(row.SnapshotDir, "snapshot.json")):
			// A resume was cut off; its snapshot is intact.
			if alive {
				s.destroyRuntime(rt)
			}
			keepSnapshots[row.SnapshotDir] = true
			row.Status = store.StatusPaused
			if _, err := s.store.UpdateSandbox(ctx, row, 0); err != nil {
				s.log.Error("putting an interrupted resume back to paused", "sandbox", row.ID, "err", err)
			}
		case row.Status == store.StatusStarting:
			s.finish(ctx, row.ID, row.AccountID, store.StatusError, "the server restarted while this sandbox was being created or resumed")
		case row.Status == store.StatusRunning && alive:
			s.track(row, rt)
		case row.Status == store.StatusRunning:
			s.finish(ctx, row.ID, row.AccountID, store.StatusError, "the sandbox was lost while the server was down")
		case row.Status == store.StatusPaused && row.SnapshotDir != "" && fileExists(filepath.Join(row.SnapshotDir, "snapshot.json")):
			keepSnapshots[row.SnapshotDir] = true
			if alive { // paused, but the old runtime outlived a crash
				s.destroyRuntime(rt)
			}
			if row.RuntimeID != "" {
				// The crash came between the checkpoint and its record:
				// record it now.
				row.RuntimeID, row.SnapshotBytes = "", dirBytes(row.SnapshotDir)
				if _, err := s.store.UpdateSandbox(ctx, row, 0); err != nil {
					s.log.Error("recording a snapshot a crash left unrecorded", "sandbox", row.ID, "err", err)
				}
			}
		case row.Status == store.StatusPaused && alive:
			// The pause was cut off before its checkpoint finished and
			// the sandbox still runs: it is running again.
			row.Status, row.PausedAt, row.SnapshotDir = store.StatusRunning, nil, ""
			exp := s.now().UTC().Add(time.Duration(row.RemainingMS) * time.Millisecond)
			row.ExpiresAt, row.RemainingMS = &exp, 0
			if row, err := s.store.UpdateSandbox(ctx, row, 0); err == nil {
				s.track(row, rt)
			}
		default:
			s.finish(ctx, row.ID, row.AccountID, store.StatusError, "the sandbox's snapshot was lost")
		}
	}
	// Snapshots nobody references (a crash between checkpoint and record,
	// or a terminate) are removed.
	dir := filepath.Join(s.dataDir, "snapshots")
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if !keepSnapshots[p] && strings.HasPrefix(e.Name(), "sbx_") {
			_ = os.RemoveAll(p)
		}
	}
	return nil
}

// dirBytes is the size of the regular files under dir.
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// deadlineLoop terminates running sandboxes whose running time is used up.
func (s *Server) deadlineLoop(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rows, err := s.store.SandboxesByStatus(ctx, store.StatusRunning)
		if err != nil {
			continue
		}
		now := s.now()
		for _, row := range rows {
			if row.ExpiresAt != nil && !now.Before(*row.ExpiresAt) {
				if _, err := s.terminate(ctx, row, reasonExpired); err != nil {
					s.log.Warn("terminating an expired sandbox", "sandbox", row.ID, "err", err)
				}
			}
		}
	}
}
