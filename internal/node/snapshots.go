package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/snapshot"
)

// durableMark is written into a cached snapshot directory once its
// object is in the store: only such entries may be evicted.
const durableMark = ".durable"

// Portable reports whether this node's snapshots go to a store (and so
// may be restored on another node that shares it).
func (n *Node) Portable() bool { return n.cfg.SnapshotStore != nil }

// objectKey is where snapshot id of account lives in the store.
func objectKey(account, id string) (string, error) { return snapshot.SnapshotKey(account, id) }

// upload seals the checkpoint in dir and puts it into the store.
func (n *Node) upload(ctx context.Context, account, sandboxID, id, dir string, snap runtime.Snapshot) (int64, error) {
	key, err := objectKey(account, id)
	if err != nil {
		return 0, err
	}
	dk, err := n.cfg.SnapshotKeys.DataKey(ctx, account)
	if err != nil {
		return 0, storeError(err)
	}
	m := snapshot.Manifest{
		SnapshotID: id, SandboxID: sandboxID, AccountID: account,
		Template: snap.Template, TemplateDigest: snap.TemplateDigest,
		VCPU: snap.Resources.CPU, MemoryBytes: snap.Resources.MemoryBytes, DiskBytes: snap.Resources.DiskBytes,
		CreatedAt: snap.CreatedAt,
	}
	sealed, err := snapshot.Upload(ctx, n.cfg.SnapshotStore, key, dir, dk, m)
	if err != nil {
		return 0, storeError(err)
	}
	if err := os.WriteFile(filepath.Join(dir, durableMark), nil, 0o600); err != nil {
		n.cfg.Log.Warn("marking a cached snapshot durable", "snapshot", id, "err", err)
	}
	n.cfg.Log.Info("snapshot stored", "snapshot", id, "bytes", sealed.Bytes, "uncompressed", sealed.Manifest.UncompressedBytes)
	return sealed.Bytes, nil
}

// storeError gives the store's and the format's errors the contract's
// names, keeping their text.
func storeError(err error) error {
	switch {
	case errors.Is(err, snapshot.ErrNotFound):
		return fmt.Errorf("%w: %w", nodeapi.ErrSnapshotNotFound, err)
	case errors.Is(err, snapshot.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: %w", nodeapi.ErrSnapshotStoreUnavailable, err)
	case errors.Is(err, snapshot.ErrCorrupt), errors.Is(err, snapshot.ErrTruncated), errors.Is(err, snapshot.ErrFormat),
		errors.Is(err, snapshot.ErrVersion), errors.Is(err, snapshot.ErrWrongKey):
		return fmt.Errorf("%w: %w", nodeapi.ErrSnapshotCorrupt, err)
	}
	return err
}

// fetch makes sure snapshot id is in the local cache at dir: there already,
// or got from the store and verified (a corrupt object leaves nothing).
func (n *Node) fetch(ctx context.Context, account, id, dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		n.touch(dir)
		return nil
	}
	if n.cfg.SnapshotStore == nil {
		return fmt.Errorf("%w: %s", nodeapi.ErrSnapshotNotFound, id)
	}
	v, _ := n.fetching.LoadOrStore(id, &sync.Mutex{})
	mu := v.(*sync.Mutex)
	mu.Lock()
	defer mu.Unlock()
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil // another restore fetched it meanwhile
	}
	key, err := objectKey(account, id)
	if err != nil {
		return fmt.Errorf("%w: %w", nodeapi.ErrSnapshotNotFound, err)
	}
	dk, err := n.cfg.SnapshotKeys.DataKey(ctx, account)
	if err != nil {
		return storeError(err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	part := filepath.Join(filepath.Dir(dir), ".part-"+hex.EncodeToString(b)+"-"+id)
	start := time.Now()
	if _, err := snapshot.Download(ctx, n.cfg.SnapshotStore, key, part, dk); err != nil {
		_ = os.RemoveAll(part)
		return storeError(err)
	}
	if err := os.WriteFile(filepath.Join(part, durableMark), nil, 0o600); err != nil {
		_ = os.RemoveAll(part)
		return err
	}
	if err := os.Rename(part, dir); err != nil {
		_ = os.RemoveAll(part)
		return err
	}
	n.cfg.Log.Info("snapshot fetched from the store", "snapshot", id, "took", time.Since(start).Round(time.Millisecond))
	n.evict(id)
	return nil
}

// touch marks a cached snapshot as just used (its directory's mtime).
func (n *Node) touch(dir string) {
	now := time.Now()
	_ = os.Chtimes(dir, now, now)
}

// evict removes the least recently used durable snapshots from the cache
// until it fits SnapshotCacheBytes; keep is never evicted. Snapshots not
// yet durable (a fork's, or a store-less node's) are never evicted.
func (n *Node) evict(keep string) {
	limit := n.cfg.SnapshotCacheBytes
	if limit <= 0 || n.cfg.SnapshotStore == nil {
		return
	}
	n.cacheMu.Lock()
	defer n.cacheMu.Unlock()
	root := n.cfg.snapshotRoot()
	ents, err := os.ReadDir(root)
	if err != nil {
		return
	}
	type entry struct {
		name    string
		size    int64
		used    time.Time
		durable bool
	}
	var all []entry
	var total int64
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "sbx_") {
			continue
		}
		dir := filepath.Join(root, e.Name())
		fi, err := e.Info()
		if err != nil {
			continue
		}
		size, _ := dirBytes(dir)
		_, derr := os.Stat(filepath.Join(dir, durableMark))
		all = append(all, entry{e.Name(), size, fi.ModTime(), derr == nil})
		total += size
	}
	sort.Slice(all, func(i, j int) bool { return all[i].used.Before(all[j].used) })
	for _, e := range all {
		if total <= limit {
			return
		}
		if !e.durable || e.name == keep {
			continue
		}
		if err := os.RemoveAll(filepath.Join(root, e.name)); err == nil {
			total -= e.size
			n.cfg.Log.Info("evicted a durable snapshot from the cache", "snapshot", e.name, "bytes", e.size)
		}
	}
}

// CachedSnapshots lists the snapshot ids this node holds locally.
func (n *Node) CachedSnapshots() []string {
	ents, _ := os.ReadDir(n.cfg.snapshotRoot())
	var out []string
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), "sbx_") {
			out = append(out, e.Name())
		}
	}
	return out
}

func dirBytes(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				total += fi.Size()
			}
		}
		return nil
	})
	return total, err
}

// storeUnsaved puts into the store the kept snapshots this node holds but
// never stored: a crash between a pause's checkpoint and its upload leaves
// one, which the store's record then calls paused. Best effort: one that
// still cannot be stored resumes only here.
func (n *Node) storeUnsaved(ctx context.Context, ids []string) {
	sr, ok := n.driver.(runtime.SnapshotReader)
	if n.cfg.SnapshotStore == nil || !ok {
		return
	}
	for _, id := range ids {
		dir, err := n.snapshotDir(id)
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, durableMark)); err == nil {
			continue
		}
		snap, err := sr.ReadSnapshot(dir)
		if err != nil {
			continue // not here (cached elsewhere, or evicted)
		}
		account, sandbox := snap.Labels["account_id"], snap.Labels["sandbox_id"]
		if account == "" {
			continue
		}
		if _, err := n.upload(ctx, account, sandbox, id, dir, snap); err != nil {
			n.cfg.Log.Warn("a snapshot a crash left unstored could not be stored; it resumes only on this node", "snapshot", id, "err", err)
			continue
		}
		n.cfg.Log.Info("stored a snapshot a crash had left unstored", "snapshot", id)
	}
}
