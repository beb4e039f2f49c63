package fake

import (
	"context"
	"encoding/gob"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// snapshotFile holds a checkpoint: the sandbox's whole state, gob-encoded.
const snapshotFile = "fake-sandbox.gob"

// Checkpoint implements runtime.Sandbox: the sandbox's files, env, labels
// and background processes (with their kept output and unread input) go to
// dir, and the sandbox stops.
func (sb *Sandbox) Checkpoint(ctx context.Context, dir string) (runtime.Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return runtime.Snapshot{}, err
	}
	if err := sb.begin(); err != nil {
		return runtime.Snapshot{}, err
	}
	procs := sb.saveProcesses()
	sb.mu.Lock()
	if sb.stopErr != nil {
		defer sb.mu.Unlock()
		return runtime.Snapshot{}, sb.stopErr
	}
	st := sb.st
	st.Labels, st.Env = copyMap(sb.st.Labels), copyMap(sb.st.Env)
	st.Tree = &tree{Root: sb.st.Tree.Root.clone(), Used: sb.st.Tree.Used}
	st.Procs = procs
	sb.mu.Unlock()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return runtime.Snapshot{}, err
	}
	file := filepath.Join(dir, snapshotFile)
	tmp := file + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return runtime.Snapshot{}, err
	}
	err = gob.NewEncoder(f).Encode(st)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, file)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return runtime.Snapshot{}, fmt.Errorf("fake: checkpoint: %w", err)
	}
	fi, err := os.Stat(file)
	if err != nil {
		return runtime.Snapshot{}, err
	}
	sb.h.mu.Lock()
	sb.h.counts.Checkpoints++
	sb.h.mu.Unlock()
	// The checkpoint stops the sandbox; what remains is the record.
	if err := sb.Destroy(context.WithoutCancel(ctx)); err != nil {
		return runtime.Snapshot{}, err
	}
	return runtime.Snapshot{
		Dir: dir, Bytes: fi.Size(), Template: st.Template, Resources: st.Resources, Labels: copyMap(st.Labels), CreatedAt: time.Now().UTC(),
	}, nil
}

func readSnapshot(dir string) (state, error) {
	var st state
	f, err := os.Open(filepath.Join(dir, snapshotFile))
	if err != nil {
		return st, fmt.Errorf("fake: %s is not a snapshot: %w", dir, err)
	}
	defer f.Close()
	if err := gob.NewDecoder(f).Decode(&st); err != nil {
		return st, fmt.Errorf("fake: %s is not a snapshot: %w", dir, err)
	}
	if st.Tree == nil || st.Tree.Root == nil {
		return st, fmt.Errorf("fake: %s is not a snapshot: no file tree", dir)
	}
	return st, nil
}
