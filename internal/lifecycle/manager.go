package lifecycle

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/store"
)

// Manager changes sandboxes' states: it records every change in the store
// first and reaches the sandboxes' nodes only through the node contract
// (Nodes). The API validates requests and maps Manager's errors to
// answers; any control-plane replica can run any change (the store's
// versions and limits decide races between replicas; a per-sandbox lock
// orders this replica's own).
type Manager struct {
	store store.Store
	nodes Nodes
	now   func() time.Time
	log   *slog.Logger

	locks sync.Map // sandbox id -> *sync.Mutex
	// running caches the runtime of the sandboxes this replica has seen
	// running (id -> live), so that exec and files, the hot paths, need no
	// store read. An entry is added once the running state is committed
	// and removed before any change away from running is.
	running sync.Map
	// objects is the snapshot store the nodes put snapshots in (nil:
	// snapshots stay on their node): a terminated or resumed sandbox's
	// object is deleted there, and a paused sandbox may resume on any node
	// of its region.
	objects snapshot.Store
	// alongside: the accounts with a create whose row is being admitted
	// beside its start; refused: when an account's create last met its
	// plan's limit (see admitAlongside).
	alongside, refused sync.Map
}

// SetSnapshotStore names the store the nodes keep snapshots in; set it
// before the Manager is used.
func (m *Manager) SetSnapshotStore(st snapshot.Store) { m.objects = st }

type live struct {
	account string
	rt      runtime.Sandbox
}

// NewManager returns a Manager over a store and the nodes.
func NewManager(st store.Store, nodes Nodes, now func() time.Time, log *slog.Logger) *Manager {
	return &Manager{store: st, nodes: nodes, now: now, log: log}
}

// Nodes is where the Manager's sandboxes run.
func (m *Manager) Nodes() Nodes { return m.nodes }

// Lock serialises this replica's lifecycle changes of one sandbox.
func (m *Manager) Lock(id string) func() {
	v, _ := m.locks.LoadOrStore(id, &sync.Mutex{})
	mu := v.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// Errors of the Manager's changes; wrapped with what happened.
var (
	// ErrNotReady: the sandbox is not in a state the change needs;
	// NotReady says which state it is in.
	ErrNotReady = errors.New("sandbox not in the state the change needs")
	// ErrStartFailed: no node could start (or restore) the sandbox; the
	// node's error is wrapped.
	ErrStartFailed = errors.New("the sandbox could not be started")
	// ErrSnapshotLost: a paused sandbox's snapshot is gone; it ended.
	ErrSnapshotLost = errors.New("the sandbox's snapshot was lost")
)

// NotReadyError says the state a sandbox was in.
type NotReadyError struct{ Status string }

func (e *NotReadyError) Error() string { return "sandbox is " + e.Status }
func (e *NotReadyError) Unwrap() error { return ErrNotReady }

func notReady(status store.Status) error { return &NotReadyError{Status: string(status)} }

// Cached is the runtime of a sandbox this replica saw running, if it is
// the account's and has not stopped.
func (m *Manager) Cached(id, account string) (runtime.Sandbox, bool) {
	if v, ok := m.running.Load(id); ok {
		if l := v.(live); l.account == account && l.rt.Err() == nil {
			return l.rt, true
		}
	}
	return nil, false
}

// Runtime is a running sandbox's runtime on its node (a NotReadyError if
// the row is not running; nodeapi.ErrUnreachable if its node is not).
func (m *Manager) Runtime(ctx context.Context, row store.Sandbox) (runtime.Sandbox, error) {
	if row.Status != store.StatusRunning {
		return nil, notReady(row.Status)
	}
	nd, err := m.nodes.Node(ctx, row.Node)
	if err != nil {
		return nil, err
	}
	rt, err := m.lookup(ctx, nd, row)
	if err != nil {
		return nil, err
	}
	m.running.Store(row.ID, live{account: row.AccountID, rt: rt})
	return rt, nil
}

// lookup asks row's node for the sandbox's runtime. A node that does not
// know it means the sandbox stopped (its node's watcher records how):
// NotReadyError for error. Any other failure is asked again once, after a
// moment, before it is taken for the same; every such answer is logged.
func (m *Manager) lookup(ctx context.Context, nd nodeapi.Node, row store.Sandbox) (runtime.Sandbox, error) {
	rt, err := nd.Sandbox(ctx, row.RuntimeID)
	if err != nil && !errors.Is(err, runtime.ErrNotFound) && !errors.Is(err, nodeapi.ErrUnreachable) {
		m.log.Warn("looking up a running sandbox on its node failed; asking again", "sandbox", row.ID, "node", row.Node, "runtime", row.RuntimeID, "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		rt, err = nd.Sandbox(ctx, row.RuntimeID)
	}
	switch {
	case err == nil:
		return rt, nil
	case errors.Is(err, nodeapi.ErrUnreachable):
		return nil, err
	}
	m.log.Warn("a running sandbox's runtime is not on its node", "sandbox", row.ID, "node", row.Node, "runtime", row.RuntimeID, "err", err)
	return nil, notReady(store.StatusError)
}

// placeAttempts bounds the nodes a create tries when the chosen one turns
// out to be full or gone.
const placeAttempts = 3

// Create starts a sandbox for row (its id, account, template, size,
// network, region, timeout and metadata set by the caller): it asks for a
// node, inserts the row as starting under the plan's concurrency limit
// (store.ErrLimit), starts the sandbox there (another node if that one
// turned out full or gone) and records it running. It finishes even if ctx
// ends, so a sandbox is either fully there or recorded failed.
//
// The insert and the node's start run side by side (see admitAlongside):
// the row is committed, under the limit, before it is recorded running,
// and a sandbox started for an insert that was refused is destroyed.
func (m *Manager) Create(ctx context.Context, row store.Sandbox, env map[string]string, maxConcurrent int, pl Placement) (store.Sandbox, error) {
	nodeID, nd, err := m.nodes.Place(ctx, pl)
	if err != nil {
		return row, err
	}
	row.Status, row.Node = store.StatusStarting, nodeID
	inserted := make(chan error, 1)
	if done, ok := m.admitAlongside(row.AccountID); ok {
		// Not ctx: a cancelled insert may still have committed, and a
		// sandbox started meanwhile is then neither recorded nor removed.
		go func(row store.Sandbox) {
			defer done()
			inserted <- m.store.CreateSandbox(context.WithoutCancel(ctx), row, maxConcurrent)
		}(row)
	} else {
		if err := m.store.CreateSandbox(ctx, row, maxConcurrent); err != nil {
			m.released(row.Node, row.Size)
			m.noteRefused(row.AccountID, err)
			return row, err
		}
		inserted <- nil
	}
	unlock := m.Lock(row.ID)
	defer unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	var rt runtime.Sandbox
	var placeErr error
	for attempt := 1; ; attempt++ {
		rt, err = nd.Create(ctx, nodeapi.CreateRequest{SandboxID: row.ID, AccountID: row.AccountID, Template: row.Template, Size: row.Size,
			Claim: runtime.Claim{Env: env, Hostname: "sandbox", Network: row.Network}})
		if err == nil || attempt == placeAttempts || !(errors.Is(err, nodeapi.ErrNoCapacity) || errors.Is(err, nodeapi.ErrUnreachable) || errors.Is(err, nodeapi.ErrDiskLow)) {
			break
		}
		// The node filled up (or went away) since its last heartbeat:
		// another one may take it.
		m.released(row.Node, row.Size)
		pl.Exclude = append(pl.Exclude, row.Node)
		next, nnd, perr := m.nodes.Place(ctx, pl)
		if perr != nil {
			if !errors.Is(err, nodeapi.ErrDiskLow) {
				// No other node can take it either: that is the answer
				// (region_unavailable when the region's last node just
				// went, which a placement list a few seconds old did not
				// know yet).
				placeErr = perr
			}
			break
		}
		m.log.Info("a node could not take a sandbox; placing it again", "sandbox", row.ID, "node", row.Node, "next", next, "err", err)
		row.Node, nd = next, nnd
	}
	if ierr := <-inserted; ierr != nil {
		// Refused (the plan's limit): nobody is told of this sandbox,
		// which is gone before the refusal is answered.
		m.noteRefused(row.AccountID, ierr)
		if err == nil {
			m.destroy(row, rt.ID())
		} else {
			m.released(row.Node, row.Size)
		}
		return row, ierr
	}
	if err != nil {
		m.released(row.Node, row.Size)
		row.Status, row.ErrorMessage = store.StatusError, "start failed"
		if _, uerr := m.store.UpdateSandbox(ctx, row, 0); uerr != nil {
			m.log.Error("recording a failed create", "sandbox", row.ID, "err", uerr)
		}
		if placeErr != nil {
			return row, placeErr
		}
		return row, fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	exp := m.now().UTC().Add(time.Duration(row.TimeoutSeconds) * time.Second)
	row.Status, row.RuntimeID, row.ExpiresAt = store.StatusRunning, rt.ID(), &exp
	made := row
	// Unflushed: the row is committed starting already, and a crash of
	// the store that loses this record leaves it to the node, which
	// adopts a started sandbox whose row is still starting (fleet.Sweep).
	if row, err = m.store.UpdateSandbox(store.Unflushed(ctx), row, 0); err != nil {
		if cur, ok := m.adopted(ctx, made, rt); ok {
			return cur, nil
		}
		m.destroy(made, rt.ID())
		return made, err
	}
	m.running.Store(row.ID, live{account: row.AccountID, rt: rt})
	return row, nil
}

// adopted returns the row of a create whose record of its sandbox running
// came too late: its node recorded it so meanwhile (fleet.Sweep).
func (m *Manager) adopted(ctx context.Context, made store.Sandbox, rt runtime.Sandbox) (store.Sandbox, bool) {
	cur, err := m.store.GetSandbox(ctx, made.AccountID, made.ID)
	if err != nil || cur.Status != store.StatusRunning || cur.RuntimeID != rt.ID() {
		return made, false
	}
	m.running.Store(cur.ID, live{account: cur.AccountID, rt: rt})
	return cur, true
}

// refusedFor is how long an account whose create was refused by its
// plan's limit has its creates admitted before their sandboxes start.
const refusedFor = 30 * time.Second

// admitAlongside says whether a create of account may start its sandbox
// while its row is being admitted (inserted under the plan's limit), and
// if so returns the func that ends that create's turn. Side by side, the
// insert's round trip to the store hides behind the node's start; but a
// create refused by the limit has then started a sandbox for nothing,
// which a tenant at its limit could repeat to drain the warm pools. So
// an account has at most one such create at a time on this replica, and
// none for refusedFor after a refusal: a burst, or a client retrying at
// its limit, is admitted first, as one round trip to the store.
func (m *Manager) admitAlongside(account string) (done func(), ok bool) {
	if at, refused := m.refused.Load(account); refused {
		if time.Since(at.(time.Time)) < refusedFor {
			return nil, false
		}
		m.refused.CompareAndDelete(account, at)
	}
	if _, busy := m.alongside.LoadOrStore(account, struct{}{}); busy {
		return nil, false
	}
	return func() { m.alongside.Delete(account) }, true
}

// noteRefused remembers a create of account that the plan's limit
// refused (see admitAlongside).
func (m *Manager) noteRefused(account string, err error) {
	if errors.Is(err, store.ErrLimit) {
		m.refused.Store(account, time.Now())
	}
}

// Pause checkpoints a running sandbox (the caller holds its Lock) under
// the plan's snapshot cap (store.ErrLimit). The snapshot slot is taken and
// the snapshot named in the store before the irreversible checkpoint (the
// runtime id stays until the checkpoint is recorded), so a crash in
// between finds a paused sandbox with its snapshot (Reconcile records it),
// never a lost one whose snapshot is swept.
func (m *Manager) Pause(ctx context.Context, row store.Sandbox, snapshotCap int) (store.Sandbox, error) {
	if row.Status != store.StatusRunning {
		return row, notReady(row.Status)
	}
	nd, err := m.nodes.Node(ctx, row.Node)
	if err != nil {
		return row, err
	}
	rt, err := m.lookup(ctx, nd, row)
	if err != nil {
		return row, err
	}
	ctx = context.WithoutCancel(ctx)
	now := m.now().UTC()
	running := row
	remaining := int64(0)
	if row.ExpiresAt != nil {
		remaining = max(row.ExpiresAt.Sub(now).Milliseconds(), 0)
	}
	m.running.Delete(row.ID)
	snapID := row.ID + "-" + ulid.MustNew(ulid.Now(), rand.Reader).String()
	row.Status, row.PausedAt, row.ExpiresAt, row.RemainingMS, row.SnapshotDir = store.StatusPaused, &now, nil, remaining, snapID
	if row, err = m.store.UpdateSandbox(ctx, row, snapshotCap); err != nil {
		m.running.Store(running.ID, live{account: running.AccountID, rt: rt})
		return running, err
	}
	snap, err := nd.Checkpoint(ctx, row.RuntimeID, snapID)
	if err != nil {
		if _, aerr := nd.Sandbox(ctx, row.RuntimeID); aerr != nil {
			m.Finish(ctx, row.ID, row.AccountID, store.StatusError, "the sandbox stopped while it was being paused")
			return row, notReady(store.StatusError)
		}
		// Still running (or running again: a pause whose snapshot could
		// not be stored is undone on the node): undo the reservation.
		now, _ := nd.Sandbox(ctx, row.RuntimeID)
		running.Version = row.Version
		if back, uerr := m.store.UpdateSandbox(ctx, running, 0); uerr == nil {
			m.running.Store(back.ID, live{account: back.AccountID, rt: now})
			return back, err
		}
		return running, err
	}
	m.released(row.Node, row.Size)
	row.RuntimeID, row.SnapshotDir, row.SnapshotBytes = "", snap.ID, snap.Bytes
	return m.store.UpdateSandbox(ctx, row, 0)
}

// Resume restores a paused sandbox (the caller holds its Lock) under the
// plan's concurrency limit (store.ErrLimit): the slot is taken first, in
// one transaction with the count (status starting, the snapshot kept), so
// concurrent resumes and creates cannot both take the last one and a crash
// during the restore leaves a sandbox that reconciliation puts back to
// paused. It restores on the node that paused it (its cache holds the
// snapshot); with a snapshot store, if that node is gone or full, on
// another node of the sandbox's region, which gets the snapshot from the
// store. Any failure but a lost snapshot leaves it paused.
func (m *Manager) Resume(ctx context.Context, row store.Sandbox, maxConcurrent int) (store.Sandbox, error) {
	if row.Status != store.StatusPaused {
		return row, notReady(row.Status)
	}
	nd, nerr := m.nodes.Node(ctx, row.Node)
	if nerr != nil && m.objects == nil {
		return row, nerr
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	paused := row
	row.Status = store.StatusStarting
	var err error
	if row, err = m.store.UpdateSandbox(ctx, row, maxConcurrent); err != nil {
		return paused, err
	}
	from := row.Node
	var rt runtime.Sandbox
	err = nerr
	if nerr == nil {
		rt, err = nd.Restore(ctx, nodeapi.RestoreRequest{SandboxID: row.ID, AccountID: row.AccountID, Snapshot: row.SnapshotDir, Template: row.Template, Size: row.Size})
	}
	if err != nil && m.objects != nil && movable(err) {
		// Its node is gone or cannot take it: another node of the region
		// fetches the snapshot from the store.
		pl := Placement{Region: row.Region, Template: row.Template, Size: row.Size, Networked: row.Network != "" && row.Network != runtime.NetworkOff, Exclude: []string{from}}
		for attempt := 0; attempt < placeAttempts && err != nil && movable(err); attempt++ {
			next, nnd, perr := m.nodes.Place(ctx, pl)
			if perr != nil {
				m.log.Warn("no other node can resume the sandbox", "sandbox", row.ID, "node", from, "err", perr)
				break
			}
			m.log.Info("resuming a sandbox on another node", "sandbox", row.ID, "from", from, "to", next, "why", err)
			moved := row
			moved.Node = next
			if moved, uerr := m.store.UpdateSandbox(ctx, moved, 0); uerr == nil {
				row = moved
			} else {
				err = uerr
				break
			}
			rt, err = nnd.Restore(ctx, nodeapi.RestoreRequest{SandboxID: row.ID, AccountID: row.AccountID, Snapshot: row.SnapshotDir, Template: row.Template, Size: row.Size})
			pl.Exclude = append(pl.Exclude, next)
		}
	}
	if err != nil {
		paused.Version, paused.Node = row.Version, row.Node
		if errors.Is(err, nodeapi.ErrSnapshotNotFound) {
			m.log.Error("a paused sandbox's snapshot is gone", "sandbox", row.ID, "node", row.Node, "err", err)
			m.Finish(ctx, row.ID, row.AccountID, store.StatusError, "the sandbox's snapshot was lost")
			return row, fmt.Errorf("%w: %w", ErrSnapshotLost, err)
		}
		if back, uerr := m.store.UpdateSandbox(ctx, paused, 0); uerr != nil {
			m.log.Error("putting a sandbox back to paused after a failed restore", "sandbox", row.ID, "err", uerr)
		} else {
			paused = back
		}
		if errors.Is(err, nodeapi.ErrSnapshotStoreUnavailable) || errors.Is(err, nodeapi.ErrSnapshotCorrupt) || errors.Is(err, nodeapi.ErrUnreachable) {
			return paused, err
		}
		return paused, fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	snap := row.SnapshotDir
	exp := m.now().UTC().Add(time.Duration(row.RemainingMS) * time.Millisecond)
	row.Status, row.RuntimeID, row.ExpiresAt, row.PausedAt, row.SnapshotDir, row.RemainingMS = store.StatusRunning, rt.ID(), &exp, nil, "", 0
	restored := row
	if row, err = m.store.UpdateSandbox(ctx, row, 0); err != nil {
		m.destroy(restored, rt.ID())
		return restored, err
	}
	m.removeSnapshot(row.Node, row.AccountID, snap)
	if from != row.Node {
		m.removeSnapshot(from, "", snap) // the old node's cache, if it is back
	}
	m.running.Store(row.ID, live{account: row.AccountID, rt: rt})
	return row, nil
}

// movable: a restore that failed so may succeed on another node.
func movable(err error) bool {
	return errors.Is(err, nodeapi.ErrUnreachable) || errors.Is(err, nodeapi.ErrNoCapacity) ||
		errors.Is(err, nodeapi.ErrDiskLow) || errors.Is(err, nodeapi.ErrTemplateNotBuilt)
}

// Terminate records the sandbox as terminated first — the end is final
// even if the runtime half fails — and then releases its runtime and
// snapshot on its node. Terminating a terminated sandbox returns it
// unchanged.
func (m *Manager) Terminate(ctx context.Context, row store.Sandbox, reason string) (store.Sandbox, error) {
	unlock := m.Lock(row.ID)
	defer unlock()
	m.running.Delete(row.ID)
	ctx = context.WithoutCancel(ctx)
	for attempt := 0; ; attempt++ {
		cur, err := m.store.GetSandbox(ctx, row.AccountID, row.ID)
		if err != nil {
			return cur, err
		}
		if cur.Status == store.StatusTerminated {
			return cur, nil
		}
		rtID, snap := cur.RuntimeID, cur.SnapshotDir
		now := m.now().UTC()
		cur.Status, cur.TerminatedAt, cur.ExpiresAt, cur.RuntimeID, cur.SnapshotDir = store.StatusTerminated, &now, nil, "", ""
		if cur.ErrorMessage == "" {
			cur.ErrorMessage = reason
		}
		updated, err := m.store.UpdateSandbox(ctx, cur, 0)
		if errors.Is(err, store.ErrStale) && attempt < 5 {
			continue
		}
		if err != nil {
			return cur, err
		}
		if rtID != "" {
			m.destroy(cur, rtID)
		}
		if snap != "" {
			m.removeSnapshot(cur.Node, cur.AccountID, snap)
		}
		return updated, nil
	}
}

// Finish moves a sandbox to a final status (terminated or error).
func (m *Manager) Finish(ctx context.Context, id, account string, status store.Status, reason string) {
	m.running.Delete(id)
	Finish(ctx, m.store, m.now, m.log, id, account, status, reason)
}

// RunDeadlines terminates running sandboxes whose running time is used up,
// twice a second while leader says so (nil: always), until ctx ends.
func (m *Manager) RunDeadlines(ctx context.Context, leader func() bool) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if leader != nil && !leader() {
			continue
		}
		rows, err := m.store.SandboxesByStatus(ctx, store.StatusRunning)
		if err != nil {
			continue
		}
		now := m.now()
		for _, row := range rows {
			if row.ExpiresAt != nil && !now.Before(*row.ExpiresAt) {
				if _, err := m.Terminate(ctx, row, store.EndExpired); err != nil {
					m.log.Warn("terminating an expired sandbox", "sandbox", row.ID, "err", err)
				}
			}
		}
	}
}

// destroy stops the runtime of a sandbox (row names its node and size)
// on its node.
func (m *Manager) destroy(row store.Sandbox, runtimeID string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nodeID := row.Node
	nd, err := m.nodes.Node(ctx, nodeID)
	if err == nil {
		err = nd.Destroy(ctx, runtimeID)
	}
	if err == nil {
		m.released(nodeID, row.Size)
	}
	if err != nil {
		m.log.Warn("destroying a sandbox's runtime failed; its node cleans it up at its next start", "node", nodeID, "runtime", runtimeID, "err", err)
	}
}

// released tells Nodes that keep their own count of what they placed
// (a fleet's, between the nodes' heartbeats) that a sandbox of size no
// longer takes room on node id.
func (m *Manager) released(id, size string) {
	if r, ok := m.nodes.(Releaser); ok {
		r.Released(id, size)
	}
}

// removeSnapshot deletes a snapshot: the node's copy and, when account is
// set and snapshots go to a store, its object (even if the node is gone).
func (m *Manager) removeSnapshot(nodeID, account, snapshotID string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nd, err := m.nodes.Node(ctx, nodeID)
	if err == nil {
		err = nd.RemoveSnapshot(ctx, snapshotID)
	}
	if err != nil {
		m.log.Warn("removing a snapshot failed; its node removes it at its next start", "node", nodeID, "snapshot", snapshotID, "err", err)
	}
	if m.objects == nil || account == "" {
		return
	}
	key, err := snapshot.SnapshotKey(account, snapshotID)
	if err == nil {
		err = m.objects.Delete(ctx, key)
	}
	if err != nil {
		m.log.Warn("deleting a snapshot's object failed; `orkestrd admin snapshots gc` removes it", "snapshot", snapshotID, "err", err)
	}
}

// Fork makes clones of a running or paused sandbox src (the caller holds
// its Lock): each clone (a row the caller filled in: id, account,
// template, size, network, region, timeout, metadata) starts from the
// same memory, processes and files, with a network identity of its own.
// All or nothing: the clones' rows are inserted in one transaction under
// the plan's concurrency limit (store.ErrLimit), and if any clone cannot
// be started every clone ends as an error. A running source is
// checkpointed live (it keeps running; the fork's snapshot is removed
// afterwards); a paused one's snapshot is used as it is.
//
// Without a snapshot store clones run on the source's node (a node reads
// only its own snapshots); with one, each is placed in the source's region
// like a create and fetches the snapshot (uploaded by the live checkpoint).
func (m *Manager) Fork(ctx context.Context, src store.Sandbox, clones []store.Sandbox, maxConcurrent int) ([]store.Sandbox, error) {
	if src.Status != store.StatusRunning && src.Status != store.StatusPaused {
		return nil, notReady(src.Status)
	}
	nd, err := m.nodes.Node(ctx, src.Node)
	if err != nil {
		return nil, err
	}
	if src.Status == store.StatusRunning {
		if _, err := m.lookup(ctx, nd, src); err != nil {
			return nil, err
		}
	}
	for i := range clones {
		clones[i].Status, clones[i].Node = store.StatusStarting, src.Node
		if m.objects != nil {
			// With a snapshot store a clone may start on any node of the
			// region (it fetches the snapshot); the source's node if
			// placement finds none.
			pl := Placement{Region: src.Region, Template: src.Template, Size: src.Size, Networked: src.Network != "" && src.Network != runtime.NetworkOff, Fresh: i == 0}
			if id, _, err := m.nodes.Place(ctx, pl); err == nil {
				clones[i].Node = id
			}
		}
	}
	if err := m.store.CreateSandboxes(ctx, clones, maxConcurrent); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	fail := func(reason string, err error) ([]store.Sandbox, error) {
		for _, c := range clones {
			m.Finish(ctx, c.ID, c.AccountID, store.StatusError, reason)
		}
		return nil, fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	snapID := src.SnapshotDir
	if src.Status == store.StatusRunning {
		snapID = src.ID + "-fork-" + ulid.MustNew(ulid.Now(), rand.Reader).String()
		snap, err := nd.CheckpointLive(ctx, src.RuntimeID, snapID)
		if err != nil {
			m.log.Error("fork: live checkpoint failed", "sandbox", src.ID, "node", src.Node, "err", err)
			if errors.Is(err, nodeapi.ErrSnapshotStoreUnavailable) {
				for _, c := range clones {
					m.Finish(ctx, c.ID, c.AccountID, store.StatusError, "fork failed: the snapshot store is unavailable")
				}
				return nil, err
			}
			return fail("fork failed: the source could not be checkpointed", err)
		}
		// Afterwards the fork's snapshot goes: its object and every
		// node's copy.
		defer func() {
			m.removeSnapshot(src.Node, src.AccountID, snap.ID)
			seen := map[string]bool{src.Node: true}
			for _, c := range clones {
				if !seen[c.Node] {
					seen[c.Node] = true
					m.removeSnapshot(c.Node, "", snap.ID)
				}
			}
		}()
	} else if m.objects != nil {
		// A paused source's snapshot stays; other nodes' copies go.
		defer func() {
			seen := map[string]bool{src.Node: true}
			for _, c := range clones {
				if !seen[c.Node] {
					seen[c.Node] = true
					m.removeSnapshot(c.Node, "", snapID)
				}
			}
		}()
	}
	rts := make([]runtime.Sandbox, len(clones))
	errs := make([]error, len(clones))
	var wg sync.WaitGroup
	for i, c := range clones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cn := nd
			if c.Node != src.Node {
				if cn, errs[i] = m.nodes.Node(ctx, c.Node); errs[i] != nil {
					return
				}
			}
			rts[i], errs[i] = cn.Restore(ctx, nodeapi.RestoreRequest{SandboxID: c.ID, AccountID: c.AccountID, Snapshot: snapID, Template: c.Template, Size: c.Size})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for i, rt := range rts {
			if rt != nil {
				m.destroy(clones[i], rt.ID())
			}
		}
		m.log.Error("fork: a clone could not be started", "sandbox", src.ID, "node", src.Node, "err", err)
		return fail("fork failed: a clone could not be started", err)
	}
	out := make([]store.Sandbox, len(clones))
	for i, c := range clones {
		exp := m.now().UTC().Add(time.Duration(c.TimeoutSeconds) * time.Second)
		c.Status, c.RuntimeID, c.ExpiresAt = store.StatusRunning, rts[i].ID(), &exp
		row, err := m.store.UpdateSandbox(ctx, c, 0)
		if err != nil {
			if cur, ok := m.adopted(ctx, c, rts[i]); ok {
				// Its node recorded it running while other clones
				// were still starting (fleet.AdoptAfter).
				out[i] = cur
				continue
			}
			// Terminated meanwhile (a DELETE of the new id): it goes.
			m.destroy(c, rts[i].ID())
			out[i] = c
			continue
		}
		m.running.Store(row.ID, live{account: row.AccountID, rt: rts[i]})
		out[i] = row
	}
	return out, nil
}

// CollectSnapshots removes (dry: lists) the objects of the snapshot store
// that no sandbox row references (a paused sandbox's snapshot, or one
// being resumed) and that are older than grace (0: the snapshot
// package's default, negative: none), e.g. left by a node that died
// between its upload and the pause's record, or by a delete that failed.
func CollectSnapshots(ctx context.Context, st store.Store, objects snapshot.Store, dryRun bool, grace time.Duration) ([]snapshot.Object, error) {
	rows, err := st.SandboxesByStatus(ctx, store.StatusPaused, store.StatusStarting)
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	for _, r := range rows {
		if r.SnapshotDir == "" {
			continue
		}
		if key, err := snapshot.SnapshotKey(r.AccountID, r.SnapshotDir); err == nil {
			live[key] = true
		}
	}
	return snapshot.CollectWith(ctx, objects, snapshot.CollectOptions{Referenced: func(key string) bool { return live[key] }, DryRun: dryRun, Grace: grace})
}
