package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/buildinfo"
	"github.com/orkestr-eu/orkestr/internal/metering"
	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/pool"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/template"
)

// Recorder is where a node writes what only it sees: the usage it meters
// and the sandboxes that stopped on their own. The store is one.
type Recorder interface {
	metering.Sink
	// EndSandbox records that a running sandbox stopped by itself; false
	// if the record no longer names that runtime (paused, terminated).
	EndSandbox(ctx context.Context, sandboxID, runtimeID string, status store.Status, reason string) (bool, error)
}

var _ nodeapi.Node = (*Node)(nil)

// discard is the Recorder of a node that records nothing (selftest).
type discard struct{}

func (discard) AddUsage(context.Context, []store.UsageDelta) error { return nil }
func (discard) SandboxUsage(context.Context, string, string) (store.Usage, error) {
	return store.Usage{}, nil
}
func (discard) EndSandbox(context.Context, string, string, store.Status, string) (bool, error) {
	return false, nil
}

// live is what the node knows of a sandbox it runs for the store.
type live struct {
	sandboxID, account string
	res                runtime.Resources
	rt                 runtime.Sandbox
	since              time.Time
}

// Running is a sandbox the node runs for the store.
type Running struct {
	RuntimeID, SandboxID string
	Since                time.Time // when this node started (or adopted) it
}

// Running lists the sandboxes the node runs for the store.
func (n *Node) Running() []Running {
	var out []Running
	n.live.Range(func(k, v any) bool {
		l := v.(*live)
		out = append(out, Running{RuntimeID: k.(string), SandboxID: l.sandboxID, Since: l.since})
		return true
	})
	return out
}

// ID is the node's id in the fleet.
func (n *Node) ID() string { return n.cfg.ID }

// Region is the node's region.
func (n *Node) Region() string { return n.cfg.Region }

// Sampler meters the node's sandboxes.
func (n *Node) Sampler() *metering.Sampler { return n.sampler }

// Info implements nodeapi.Node.
func (n *Node) Info(ctx context.Context) (nodeapi.Info, error) {
	info := nodeapi.Info{
		ID: n.cfg.ID, Region: n.cfg.Region, Address: n.cfg.Address, Version: buildinfo.Version,
		APIVersion: nodeapi.APIVersion, Capacity: n.capacity(), NetworkEnabled: n.cfg.Network != nil,
		DiskLow: n.CheckDisk() != nil, Warm: map[string]int{},
	}
	n.live.Range(func(_, v any) bool {
		l := v.(*live)
		info.Running++
		info.Allocated.CPUs += l.res.CPU
		info.Allocated.MemoryBytes += l.res.MemoryBytes
		info.Allocated.DiskBytes += l.res.DiskBytes
		info.Allocated.Slots++
		return true
	})
	built, err := n.templates.List()
	if err != nil {
		return info, err
	}
	for _, t := range built {
		info.Templates = append(info.Templates, t.Name)
	}
	slices.Sort(info.Templates)
	for _, d := range n.pool.Depths() {
		info.Warm[d.Key.Template] += d.Ready
	}
	return info, nil
}

// capacity is the host's size: cores, memory, the state directory's disk
// and the operator's sandbox slots (default: one per 128 MiB of memory).
// It is measured once, at first use (every create checks the slots).
func (n *Node) capacity() nodeapi.Capacity {
	n.capOnce.Do(func() { n.capSize = measureCapacity(n.cfg) })
	return n.capSize
}

func measureCapacity(cfg Config) nodeapi.Capacity {
	c := nodeapi.Capacity{CPUs: float64(goruntime.NumCPU()), MemoryBytes: memTotal(), Slots: cfg.Slots}
	for _, dir := range []string{cfg.StateDir, cfg.DataDir} {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil {
			c.DiskBytes = int64(st.Blocks * uint64(st.Bsize))
			break
		}
	}
	if c.Slots <= 0 {
		c.Slots = max(int(c.MemoryBytes>>27), 1)
	}
	return c
}

func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// admit refuses a new running sandbox when the disk is under its reserve
// or every slot is taken.
func (n *Node) admit() error {
	if err := n.CheckDisk(); err != nil {
		if errors.Is(err, ErrDiskReserve) {
			return fmt.Errorf("%w: %w", nodeapi.ErrDiskLow, err)
		}
		return err
	}
	running := 0
	n.live.Range(func(_, _ any) bool { running++; return true })
	if slots := n.capacity().Slots; running >= slots {
		return fmt.Errorf("%w: %d of %d slots taken", nodeapi.ErrNoCapacity, running, slots)
	}
	return nil
}

// Create implements nodeapi.Node. A create for a sandbox id that runs
// here already (or is being started) answers with that sandbox: see
// startOnceByID.
func (n *Node) Create(ctx context.Context, r nodeapi.CreateRequest) (runtime.Sandbox, error) {
	return n.startOnceByID(ctx, r.SandboxID, r.AccountID, func() (runtime.Sandbox, error) {
		if err := n.admit(); err != nil {
			return nil, err
		}
		claim := r.Claim
		claim.Labels = map[string]string{"sandbox_id": r.SandboxID, "account_id": r.AccountID}
		rt, _, err := n.create(ctx, r.Template, r.Size, r.AccountID, claim)
		if err != nil {
			return nil, contractError(err)
		}
		n.track(r.SandboxID, r.AccountID, rt, n.cfg.Sizes[r.Size])
		return rt, nil
	})
}

// startCall is a create or a restore of one sandbox id under way.
type startCall struct {
	account string
	done    chan struct{}
	rt      runtime.Sandbox
	err     error
}

// startOnceByID runs start, a create or a restore of sandboxID, unless that
// sandbox runs here already or is being started: then the call answers
// with that sandbox (once it is started). The control plane's transport
// sends such a call again when its connection broke before the answer
// came, which the node may have acted on: without this a lost answer
// would start the sandbox twice, and leave one copy nobody owns. The same
// id for another account is refused (runtime.ErrExists). If the first
// call failed, a repeat tries again.
func (n *Node) startOnceByID(ctx context.Context, sandboxID, account string, start func() (runtime.Sandbox, error)) (runtime.Sandbox, error) {
	if sandboxID == "" {
		return start() // nothing to know a repeat by
	}
	conflict := func() error {
		return fmt.Errorf("%w: sandbox %s is already started on this node for another account", runtime.ErrExists, sandboxID)
	}
	for {
		if rt, acct, ok := n.runningSandbox(sandboxID); ok {
			if acct != account {
				return nil, conflict()
			}
			return rt, nil
		}
		c := &startCall{account: account, done: make(chan struct{})}
		v, loaded := n.starting.LoadOrStore(sandboxID, c)
		if !loaded {
			// A call that finished between the look-up above and the
			// store tracked its sandbox before it left the map.
			if rt, acct, ok := n.runningSandbox(sandboxID); ok {
				n.starting.Delete(sandboxID)
				close(c.done)
				if acct != account {
					return nil, conflict()
				}
				return rt, nil
			}
			func() {
				defer func() {
					n.starting.Delete(sandboxID)
					close(c.done)
				}()
				c.rt, c.err = start()
			}()
			return c.rt, c.err
		}
		prev := v.(*startCall)
		if prev.account != account {
			return nil, conflict()
		}
		select {
		case <-prev.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if prev.err == nil {
			return prev.rt, nil
		}
	}
}

// runningSandbox is the sandbox the node runs for a sandbox id, and its
// account.
func (n *Node) runningSandbox(sandboxID string) (rt runtime.Sandbox, account string, ok bool) {
	n.live.Range(func(_, v any) bool {
		if l := v.(*live); l.sandboxID == sandboxID {
			rt, account, ok = l.rt, l.account, true
			return false
		}
		return true
	})
	return rt, account, ok
}

// contractError gives the driver's and the template store's errors the
// contract's names, keeping their text.
func contractError(err error) error {
	switch {
	case errors.Is(err, template.ErrNotBuilt):
		return fmt.Errorf("%w: %w", nodeapi.ErrTemplateNotBuilt, err)
	case errors.Is(err, ErrUnknownSize):
		return fmt.Errorf("%w: %w", nodeapi.ErrUnknownSize, err)
	}
	return err
}

// Sandbox implements nodeapi.Node.
func (n *Node) Sandbox(_ context.Context, runtimeID string) (runtime.Sandbox, error) {
	if v, ok := n.live.Load(runtimeID); ok {
		return v.(*live).rt, nil
	}
	if rt, ok := n.driver.Get(runtimeID); ok {
		return rt, nil
	}
	return nil, fmt.Errorf("%w: %s", runtime.ErrNotFound, runtimeID)
}

// snapshotDir is where snapshot id lives on this node; ids are made by
// Checkpoint and never contain a path.
func (n *Node) snapshotDir(id string) (string, error) {
	if !strings.HasPrefix(id, "sbx_") || strings.ContainsAny(id, `/\`) || strings.Contains(id, "..") || len(id) > 128 {
		return "", fmt.Errorf("%w: %q is not a snapshot id", nodeapi.ErrSnapshotNotFound, id)
	}
	return filepath.Join(n.cfg.snapshotRoot(), id), nil
}

func (c Config) snapshotRoot() string {
	if c.SnapshotDir != "" {
		return c.SnapshotDir
	}
	return SnapshotRoot(c.DataDir)
}

// SnapshotRoot is where a node with this data directory keeps its
// snapshots by default, one directory per snapshot id (backups copy them).
func SnapshotRoot(dataDir string) string { return filepath.Join(dataDir, "snapshots") }

// Checkpoint implements nodeapi.Node. The snapshot id must be the
// sandbox's id, "-" and a suffix (the control plane uses a fresh ULID), and
// not exist yet: a retried pause never writes over another snapshot.
func (n *Node) Checkpoint(ctx context.Context, runtimeID, id string) (nodeapi.Snapshot, error) {
	v, ok := n.live.Load(runtimeID)
	if !ok {
		return nodeapi.Snapshot{}, fmt.Errorf("%w: %s", runtime.ErrNotFound, runtimeID)
	}
	l := v.(*live)
	if !strings.HasPrefix(id, l.sandboxID+"-") || len(id) == len(l.sandboxID)+1 {
		return nodeapi.Snapshot{}, fmt.Errorf("%w: snapshot id %q must be %q followed by a suffix", runtime.ErrInvalidRequest, id, l.sandboxID+"-")
	}
	dir, err := n.snapshotDir(id)
	if err != nil {
		return nodeapi.Snapshot{}, err
	}
	if _, err := os.Lstat(dir); err == nil {
		return nodeapi.Snapshot{}, fmt.Errorf("%w: snapshot %s exists already", runtime.ErrInvalidRequest, id)
	}
	n.untrack(runtimeID, true)
	snap, err := l.rt.Checkpoint(ctx, dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		select {
		case <-l.rt.Done():
			n.destroying.Delete(runtimeID)
		default: // still running: it is the node's again
			n.destroying.Delete(runtimeID)
			n.track(l.sandboxID, l.account, l.rt, l.res)
		}
		return nodeapi.Snapshot{}, err
	}
	if n.cfg.SnapshotStore == nil {
		return nodeapi.Snapshot{ID: id, Bytes: snap.Bytes}, nil
	}
	// Paused means durable: the snapshot is in the store before the
	// pause is reported. If it cannot be put there, the pause is undone.
	if _, err := n.upload(ctx, l.account, l.sandboxID, id, dir, snap); err != nil {
		n.cfg.Log.Warn("a snapshot could not be stored; undoing the pause", "sandbox", l.sandboxID, "snapshot", id, "err", err)
		if rerr := n.undoPause(context.WithoutCancel(ctx), l, runtimeID, dir); rerr != nil {
			n.cfg.Log.Error("undoing a pause failed; the sandbox is lost", "sandbox", l.sandboxID, "err", rerr)
			_ = os.RemoveAll(dir)
			return nodeapi.Snapshot{}, fmt.Errorf("%w (and the sandbox could not be restored: %v)", err, rerr)
		}
		_ = os.RemoveAll(dir)
		return nodeapi.Snapshot{}, err
	}
	n.evict(id)
	return nodeapi.Snapshot{ID: id, Bytes: snap.Bytes}, nil
}

// undoPause restores a sandbox from its own checkpoint in dir under its
// runtime id, as the node's again: a pause whose snapshot could not be
// stored leaves the sandbox running (its processes and memory as they
// were; open connections are cut, as at any restore).
func (n *Node) undoPause(ctx context.Context, l *live, runtimeID, dir string) error {
	ir, ok := n.driver.(runtime.InPlaceRestorer)
	if !ok {
		return fmt.Errorf("the %s runtime cannot restore in place", n.driver.Name())
	}
	rootfs, err := n.restoreRootfs(dir, l.rt.Info().Template)
	if err != nil {
		return err
	}
	rt, err := ir.RestoreAs(ctx, runtimeID, dir, rootfs, map[string]string{"sandbox_id": l.sandboxID, "account_id": l.account})
	if err != nil {
		return err
	}
	n.destroying.Delete(runtimeID)
	n.track(l.sandboxID, l.account, rt, l.res)
	return nil
}

// CheckpointLive implements nodeapi.Node: the sandbox stays the node's
// (metered, tracked) throughout.
func (n *Node) CheckpointLive(ctx context.Context, runtimeID, id string) (nodeapi.Snapshot, error) {
	v, ok := n.live.Load(runtimeID)
	if !ok {
		return nodeapi.Snapshot{}, fmt.Errorf("%w: %s", runtime.ErrNotFound, runtimeID)
	}
	l := v.(*live)
	lc, ok := l.rt.(runtime.LiveCheckpointer)
	if !ok {
		return nodeapi.Snapshot{}, fmt.Errorf("%w: the %s runtime cannot checkpoint a running sandbox", runtime.ErrInvalidRequest, n.driver.Name())
	}
	if !strings.HasPrefix(id, l.sandboxID+"-") || len(id) == len(l.sandboxID)+1 {
		return nodeapi.Snapshot{}, fmt.Errorf("%w: snapshot id %q must be %q followed by a suffix", runtime.ErrInvalidRequest, id, l.sandboxID+"-")
	}
	dir, err := n.snapshotDir(id)
	if err != nil {
		return nodeapi.Snapshot{}, err
	}
	if _, err := os.Lstat(dir); err == nil {
		return nodeapi.Snapshot{}, fmt.Errorf("%w: snapshot %s exists already", runtime.ErrInvalidRequest, id)
	}
	snap, err := lc.CheckpointLive(ctx, dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nodeapi.Snapshot{}, err
	}
	if n.cfg.SnapshotStore != nil {
		// Into the store too, so that clones may start on other nodes.
		if _, err := n.upload(ctx, l.account, l.sandboxID, id, dir, snap); err != nil {
			_ = os.RemoveAll(dir)
			return nodeapi.Snapshot{}, err
		}
	}
	return nodeapi.Snapshot{ID: id, Bytes: snap.Bytes}, nil
}

// Restore implements nodeapi.Node. A restore of a sandbox id that runs
// here already (or is being started) answers with that sandbox: see
// startOnceByID.
func (n *Node) Restore(ctx context.Context, r nodeapi.RestoreRequest) (runtime.Sandbox, error) {
	return n.startOnceByID(ctx, r.SandboxID, r.AccountID, func() (runtime.Sandbox, error) { return n.restore(ctx, r) })
}

func (n *Node) restore(ctx context.Context, r nodeapi.RestoreRequest) (runtime.Sandbox, error) {
	dir, err := n.snapshotDir(r.Snapshot)
	if err != nil {
		return nil, err
	}
	if err := n.admit(); err != nil {
		return nil, err
	}
	if err := n.fetch(ctx, r.AccountID, r.Snapshot, dir); err != nil {
		return nil, err
	}
	rootfs, err := n.restoreRootfs(dir, r.Template)
	if err != nil {
		return nil, err
	}
	rt, err := n.driver.Restore(ctx, dir, rootfs, map[string]string{"sandbox_id": r.SandboxID, "account_id": r.AccountID})
	if err != nil {
		return nil, err
	}
	res := rt.Info().Resources
	if sz, ok := n.cfg.Sizes[r.Size]; ok {
		res = sz
	}
	n.track(r.SandboxID, r.AccountID, rt, res)
	return rt, nil
}

// restoreRootfs is this node's copy of a snapshot's template: the one the
// snapshot names, of the same build (template.Record.Identity), else
// ErrTemplateNotBuilt.
func (n *Node) restoreRootfs(dir, tmpl string) (string, error) {
	if sr, ok := n.driver.(runtime.SnapshotReader); ok {
		snap, err := sr.ReadSnapshot(dir)
		if err != nil {
			return "", err
		}
		if snap.Template != "" && snap.Template != tmpl {
			return "", fmt.Errorf("%w: the snapshot is of template %q, not %q", runtime.ErrInvalidRequest, snap.Template, tmpl)
		}
		if snap.TemplateDigest != "" {
			rec, err := n.templates.Record(tmpl)
			if err != nil {
				return "", contractError(err)
			}
			if got := rec.Identity(); got != snap.TemplateDigest {
				return "", fmt.Errorf("%w: template %q on node %s is another build (%s) than the snapshot's (%s); copy the template directory from the node that built it", nodeapi.ErrTemplateNotBuilt, tmpl, n.cfg.ID, got, snap.TemplateDigest)
			}
		}
	}
	rootfs, err := n.templates.Rootfs(tmpl)
	if err != nil {
		return "", contractError(err)
	}
	return rootfs, nil
}

// RemoveSnapshot implements nodeapi.Node.
func (n *Node) RemoveSnapshot(_ context.Context, id string) error {
	dir, err := n.snapshotDir(id)
	if err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// Destroy implements nodeapi.Node.
func (n *Node) Destroy(ctx context.Context, runtimeID string) error {
	rt, err := n.Sandbox(ctx, runtimeID)
	if errors.Is(err, runtime.ErrNotFound) {
		return nil
	}
	n.untrack(runtimeID, true)
	defer n.destroying.Delete(runtimeID)
	return rt.Destroy(ctx)
}

// Reconcile implements nodeapi.Node: it adopts the sandboxes keep names
// (and meters them again), destroys every other one, removes every
// snapshot keep does not list, and starts the warm pools.
func (n *Node) Reconcile(ctx context.Context, keep nodeapi.Keep) (runtime.ReconcileReport, error) {
	rep, err := n.driver.Reconcile(ctx, func(i runtime.Info) bool {
		id, ok := keep.Sandboxes[i.ID]
		return ok && i.Labels["sandbox_id"] == id
	})
	if err != nil {
		return rep, fmt.Errorf("reconcile: %w", err)
	}
	for _, id := range rep.Adopted {
		if rt, ok := n.driver.Get(id); ok {
			info := rt.Info()
			n.track(info.Labels["sandbox_id"], info.Labels["account_id"], rt, info.Resources)
		}
	}
	ents, _ := os.ReadDir(n.cfg.snapshotRoot())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".part-") || strings.HasPrefix(e.Name(), "sbx_") && !slices.Contains(keep.Snapshots, e.Name()) {
			_ = os.RemoveAll(filepath.Join(n.cfg.snapshotRoot(), e.Name()))
			rep.Removed = append(rep.Removed, "snapshot "+e.Name())
		}
	}
	n.storeUnsaved(ctx, keep.Snapshots)
	if err := n.syncPools(); err != nil {
		return rep, err
	}
	n.startOnce.Do(func() { go n.scanTemplates() })
	return rep, nil
}

// Metrics implements nodeapi.Node.
func (n *Node) Metrics(ctx context.Context, runtimeID string, since time.Time) (nodeapi.Metrics, error) {
	v, ok := n.live.Load(runtimeID)
	if !ok {
		return nodeapi.Metrics{}, fmt.Errorf("%w: %s", runtime.ErrNotFound, runtimeID)
	}
	l := v.(*live)
	out := nodeapi.Metrics{IntervalSeconds: int(n.sampler.Interval().Seconds())}
	samples, latest, _ := n.sampler.Window(l.sandboxID, since)
	for _, s := range samples {
		out.Samples = append(out.Samples, nodeapi.Sample(s))
	}
	if latest != nil {
		s := nodeapi.Sample(*latest)
		out.Latest = &s
	}
	if life, err := n.sampler.Lifetime(ctx, l.account, l.sandboxID); err == nil {
		out.Lifetime = &life
	}
	if dr, ok := l.rt.(runtime.DiskReader); ok {
		if d, err := dr.Disk(); err == nil {
			out.Disk = &d
		}
	}
	return out, nil
}

// track meters a sandbox from now on and watches it: if it stops on its
// own (out of memory, crash) the store's record says so.
func (n *Node) track(sandboxID, account string, rt runtime.Sandbox, res runtime.Resources) {
	l := &live{sandboxID: sandboxID, account: account, res: res, rt: rt, since: time.Now()}
	n.live.Store(rt.ID(), l)
	n.sampler.Track(sandboxID, account, rt, res.CPU, int(res.MemoryBytes>>20))
	go func() {
		<-rt.Done()
		if _, planned := n.destroying.Load(rt.ID()); planned {
			return
		}
		if !n.live.CompareAndDelete(rt.ID(), l) {
			return
		}
		n.sampler.Untrack(sandboxID)
		reason := store.EndStopped
		if errors.Is(rt.Err(), runtime.ErrOutOfMemory) {
			reason = store.EndOutOfMemory
		}
		if n.cfg.Recorder != nil {
			n.recordEnd(sandboxID, rt.ID(), reason)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := rt.Destroy(ctx); err != nil {
			n.cfg.Log.Warn("destroying a stopped sandbox failed; it is cleaned up at the next start", "runtime", rt.ID(), "err", err)
		}
	}()
}

// recordEnd records that a sandbox stopped on its own. One that stops
// moments after its create was answered (a claim applied behind it that
// failed) can stop before the control plane has recorded it running:
// its row names no runtime yet and is not ended, so the record is tried
// again in the background for a few seconds.
func (n *Node) recordEnd(sandboxID, runtimeID, reason string) {
	end := func() (done bool) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		ended, err := n.cfg.Recorder.EndSandbox(ctx, sandboxID, runtimeID, store.StatusError, reason)
		if err != nil {
			n.cfg.Log.Error("recording the end of a sandbox", "sandbox", sandboxID, "err", err)
		}
		return ended || err != nil
	}
	if end() {
		return
	}
	go func() {
		for range 5 {
			time.Sleep(time.Second)
			if end() {
				return
			}
		}
	}()
}

// untrack stops metering a sandbox; planned marks its stop as the node's
// own doing (pause, terminate) so its watcher records nothing.
func (n *Node) untrack(runtimeID string, planned bool) {
	if planned {
		n.destroying.Store(runtimeID, true)
	}
	if v, ok := n.live.LoadAndDelete(runtimeID); ok {
		n.sampler.Untrack(v.(*live).sandboxID)
	}
}

// Templates lists the templates built on this host.
func (n *Node) Templates() ([]template.Record, error) { return n.templates.List() }

// PoolDepths reports every warm pool's ready sandboxes and target.
func (n *Node) PoolDepths() []pool.Depth { return n.pool.Depths() }

// RuntimeName names the node's driver ("gvisor").
func (n *Node) RuntimeName() string { return n.driver.Name() }

// RuntimeSandboxes counts every sandbox the driver runs, pooled included.
func (n *Node) RuntimeSandboxes(ctx context.Context) int {
	list, _ := n.driver.List(ctx)
	return len(list)
}
