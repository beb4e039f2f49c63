package gvisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/agent/client"
	"github.com/orkestr-eu/orkestr/internal/agent/wire"
	"github.com/orkestr-eu/orkestr/internal/netpolicy"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
)

// sandbox is one runsc container and the channel to its agent.
type sandbox struct {
	d   *Driver
	ch  *client.Channel
	pid int // the runsc sandbox process on the host

	mu       sync.Mutex
	m        meta
	inflight int
	idle     *sync.Cond // signalled when inflight drops
	pausing  bool
	// applying is closed when the claim ConfigureBehind took is applied;
	// nil when none is being applied. Operations wait for it in begin.
	applying chan struct{}
	// applyingNet is the network mode of the claim being applied, which
	// Info reports already.
	applyingNet string
	stopErr     error // set once the sandbox stopped
	done        chan struct{}
	unwatch     func()
	destroyO    sync.Once
	// filestore is the /proc path of the copy-on-write layer's backing
	// file, found on first use (see Disk).
	filestore string
	memEvents *os.File // the memory threshold eventfd (oom.go)
	oomKills  atomic.Uint64
	meterMu   sync.Mutex
	meter     cgroupv1.MeterCache // Usage's, between metering rounds
	// long is cancelled when a pause starts or the sandbox stops: it ends
	// the calls that may run for ever (attached processes, watches) and
	// are not waited for.
	long       context.Context
	cancelLong context.CancelFunc
}

var (
	_ runtime.Sandbox              = (*sandbox)(nil)
	_ runtime.DiskReader           = (*sandbox)(nil)
	_ runtime.LiveCheckpointer     = (*sandbox)(nil)
	_ runtime.BackgroundConfigurer = (*sandbox)(nil)
)

func newSandbox(d *Driver, m meta, ch *client.Channel, pid int) *sandbox {
	sb := &sandbox{d: d, ch: ch, pid: pid, m: m, done: make(chan struct{})}
	sb.long, sb.cancelLong = context.WithCancel(context.Background())
	sb.idle = sync.NewCond(&sb.mu)
	unwatch, err := watcher.watch(pid, sb.exited)
	if err != nil {
		d.log.Warn("cannot watch sandbox process; exits are noticed on next use", "sandbox", m.ID, "err", err)
		unwatch = func() {}
	}
	sb.unwatch = unwatch
	sb.watchMemory()
	return sb
}

// exited runs when the sandbox process ends by itself: the out-of-memory
// killer, a crash, or the agent exiting.
func (sb *sandbox) exited() {
	sb.mu.Lock()
	pausing := sb.pausing
	sb.mu.Unlock()
	if pausing {
		// A checkpoint stops the sandbox process; Checkpoint itself
		// settles the sandbox's state.
		sb.stop(runtime.ErrStopped)
		return
	}
	reason := runtime.ErrStopped
	if st, err := sb.d.cgroup(sb.m.ID).Read(); err == nil {
		switch {
		case st.OOMKills > 0 || st.UnderOOM:
			reason = fmt.Errorf("%w (limit %d MiB; it outgrew it faster than its processes could be killed, up to the host limit of %d MiB)", runtime.ErrOutOfMemory, sb.m.Resources.MemoryBytes>>20, st.MemoryLimit>>20)
		case st.PIDsLimitHits > 0:
			// gVisor's sentry dies when the host refuses it a task (it
			// needs host processes and threads for the sandbox's
			// processes). The sandbox's own cap keeps its commands under
			// that, unless a command left the capping cgroup.
			reason = fmt.Errorf("%w: it reached the host's limit of %d tasks (processes and threads; its own limit is %d)", runtime.ErrStopped, st.PIDsLimit, sb.m.Resources.PIDs)
		}
	}
	sb.stop(reason)
	sb.d.log.Warn("sandbox stopped on its own", "sandbox", sb.m.ID, "reason", reason)
}

func (sb *sandbox) stop(reason error) {
	sb.mu.Lock()
	first := sb.stopErr == nil
	if first {
		sb.stopErr = reason
		sb.idle.Broadcast()
	}
	sb.mu.Unlock()
	if first {
		sb.unwatchMemory()
		sb.cancelLong()
		sb.ch.Fail(reason)
		close(sb.done)
	}
}

func (sb *sandbox) ID() string { return sb.m.ID }

func (sb *sandbox) Info() runtime.Info {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	st := runtime.StateRunning
	if sb.stopErr != nil {
		st = runtime.StateStopped
	}
	i := metaInfo(sb.m, st)
	if sb.applyingNet != "" {
		i.Network = sb.applyingNet
	}
	return i
}

func (sb *sandbox) Done() <-chan struct{} { return sb.done }

func (sb *sandbox) Err() error { return sb.stopped() }

func (sb *sandbox) waitReady(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- sb.ch.WaitReady(ctx) }()
	select {
	case err := <-errc:
		return err
	case <-sb.done:
		return sb.stopped()
	}
}

// waitRedialed waits for an agent session dialed after redial request gen
// (Channel.WaitRedialed), or for the sandbox to stop.
func (sb *sandbox) waitRedialed(ctx context.Context, gen, before uint64) error {
	errc := make(chan error, 1)
	go func() { errc <- sb.ch.WaitRedialed(ctx, gen, before) }()
	select {
	case err := <-errc:
		return err
	case <-sb.done:
		return sb.stopped()
	}
}

func (sb *sandbox) stopped() error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.stopErr
}

// begin admits an operation unless the sandbox is stopped or being
// paused, once a claim being applied behind (ConfigureBehind) is applied.
func (sb *sandbox) begin() error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.beginLocked()
}

// beginLocked is begin with sb.mu held.
func (sb *sandbox) beginLocked() error {
	sb.waitClaimLocked()
	if sb.stopErr != nil {
		return sb.stopErr
	}
	if sb.pausing {
		return fmt.Errorf("%w: it is being paused", runtime.ErrBusy)
	}
	sb.inflight++
	return nil
}

// waitClaimLocked returns once no claim is being applied behind its
// caller (ConfigureBehind); sb.mu is held, and let go while it waits.
func (sb *sandbox) waitClaimLocked() {
	for sb.applying != nil {
		applied := sb.applying
		sb.mu.Unlock()
		<-applied
		sb.mu.Lock()
	}
}

func (sb *sandbox) end() {
	sb.mu.Lock()
	sb.endLocked()
	sb.mu.Unlock()
}

func (sb *sandbox) endLocked() {
	sb.inflight--
	if sb.inflight == 0 {
		sb.idle.Broadcast()
	}
}

// checkPath applies the files API's path rules on the host, so a bad path is
// refused before it is sent (and a huge one cannot break the request frame).
func checkPath(p string) error {
	if err := wire.CheckPath(p); err != nil {
		return fmt.Errorf("%w: %v", runtime.ErrInvalidPath, err)
	}
	return nil
}

// mapErr turns channel and agent errors into runtime errors.
func (sb *sandbox) mapErr(err error) error {
	if err == nil {
		return nil
	}
	var we *wire.Error
	if errors.As(err, &we) {
		var base error
		switch we.Code {
		case wire.CodeNotFound:
			base = runtime.ErrFileNotFound
		case wire.CodeInvalidPath:
			base = runtime.ErrInvalidPath
		case wire.CodeIsDir:
			base = runtime.ErrIsDir
		case wire.CodeNotDir, wire.CodeExists:
			// The agent reports "exists" only when a parent to create is
			// taken by something that is not a directory (a dangling
			// symlink): for the caller that is a non-directory in the path.
			base = runtime.ErrNotDir
		case wire.CodeNotEmpty:
			base = runtime.ErrNotEmpty
		case wire.CodeNoSpace:
			base = runtime.ErrNoSpace
		case wire.CodePermission:
			base = runtime.ErrPermission
		case wire.CodeBadRequest:
			base = runtime.ErrInvalidRequest
		case wire.CodeInvalidArchive:
			base = runtime.ErrInvalidArchive
		case wire.CodeTooLarge:
			base = runtime.ErrTooLarge
		case wire.CodeNoProcess:
			base = runtime.ErrNoProcess
		case wire.CodeNoUser:
			base = runtime.ErrNoUser
		case wire.CodeReadOnly:
			base = runtime.ErrReadOnly
		case wire.CodeBusy:
			base = runtime.ErrFileBusy
		case wire.CodeIO:
			base = runtime.ErrIO
		case wire.CodeLimit:
			base = runtime.ErrFileLimit
		case wire.CodeInternal:
			base = runtime.ErrAgentFailed
		default:
			base = runtime.ErrAgent
		}
		return fmt.Errorf("%w: %s", base, we.Message)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	// The connection broke: if the sandbox died, say why.
	select {
	case <-sb.done:
		return sb.stopped()
	case <-time.After(500 * time.Millisecond):
	}
	if errors.Is(err, runtime.ErrOutOfMemory) || errors.Is(err, runtime.ErrStopped) {
		return err
	}
	return fmt.Errorf("%w: %v", runtime.ErrAgent, err)
}

func (sb *sandbox) Configure(ctx context.Context, c runtime.Claim) error {
	if err := sb.begin(); err != nil {
		return err
	}
	defer sb.end()
	sb.mu.Lock()
	m := sb.m
	sb.mu.Unlock()
	if err := checkClaim(m, c); err != nil {
		return err
	}
	return sb.apply(ctx, c, m.Pooled)
}

// claimTimeout bounds a claim applied behind its caller: cgroup writes, a
// network policy and one agent call.
const claimTimeout = 30 * time.Second

// ConfigureBehind implements runtime.BackgroundConfigurer. The claim is
// admitted, checked and marked as being applied in one hold of sb.mu, so
// no operation slips in before it.
func (sb *sandbox) ConfigureBehind(c runtime.Claim) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if err := sb.beginLocked(); err != nil {
		return err
	}
	if err := checkClaim(sb.m, c); err != nil {
		sb.endLocked()
		return err
	}
	applied := make(chan struct{})
	sb.applying = applied
	if sb.m.Net != nil {
		sb.applyingNet = c.Network
	}
	pooled := sb.m.Pooled
	sb.claimed(c) // for Info at once; apply records it again, with meta.json
	go sb.applyBehind(c, pooled, applied)
	return nil
}

// applyBehind applies a claim ConfigureBehind took, stops the sandbox if
// that fails, and then lets the operations waiting for it in.
func (sb *sandbox) applyBehind(c runtime.Claim, pooled bool, applied chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), claimTimeout)
	err := sb.apply(ctx, c, pooled)
	cancel()
	if err != nil && sb.stopped() == nil { // not destroyed meanwhile
		sb.d.log.Warn("a claimed sandbox could not be configured; stopping it", "sandbox", sb.m.ID, "err", err)
		sb.stop(fmt.Errorf("%w: its claim could not be applied: %v", runtime.ErrStopped, err))
	}
	sb.mu.Lock()
	sb.applying, sb.applyingNet = nil, ""
	sb.endLocked()
	sb.mu.Unlock()
	close(applied)
}

// checkClaim is what Configure refuses for the claim itself, checked
// before anything is applied.
func checkClaim(m meta, c runtime.Claim) error {
	if err := (wire.Configure{Env: c.Env, Hostname: c.Hostname}).Check(); err != nil {
		return fmt.Errorf("%w: %v", runtime.ErrInvalidRequest, err)
	}
	if err := diskFixed(m.Resources.DiskBytes, c.Resources.DiskBytes); err != nil {
		return err
	}
	mode := c.Network
	if mode == "" {
		mode = runtime.NetworkOff
	}
	switch {
	case m.Net == nil && mode != runtime.NetworkOff:
		return fmt.Errorf("%w: sandbox %s was started without a network and cannot be given network %q", runtime.ErrInvalidRequest, m.ID, mode)
	case m.Net != nil && mode == runtime.NetworkOff:
		return fmt.Errorf("%w: sandbox %s has a network interface; network \"off\" needs a sandbox started without one", runtime.ErrInvalidRequest, m.ID)
	case m.Net != nil && mode != runtime.NetworkRestricted && mode != runtime.NetworkOpen:
		return fmt.Errorf("%w: unknown network mode %q", runtime.ErrInvalidRequest, mode)
	}
	return nil
}

// claimed records claim c in the sandbox's record (sb.mu held): it is no
// longer pooled, and carries the claim's labels.
func (sb *sandbox) claimed(c runtime.Claim) {
	sb.m.Pooled = false
	if sb.m.Labels == nil {
		sb.m.Labels = map[string]string{}
	}
	delete(sb.m.Labels, "pool")
	for k, v := range c.Labels {
		sb.m.Labels[k] = v
	}
}

// apply applies claim c, checked (checkClaim), as an operation in
// flight; pooled says whether the sandbox was still pooled when the claim
// was taken.
func (sb *sandbox) apply(ctx context.Context, c runtime.Claim, pooled bool) error {
	if pooled {
		// First: what follows already runs in the sandbox, for its user.
		g := sb.d.cgroup(sb.m.ID)
		if err := errors.Join(g.SetCPUIdle(false), g.SetCPUShares(defaultCPUShares)); err != nil {
			return err
		}
	}
	if c.Resources != (runtime.Resources{}) {
		if err := sb.setResources(c.Resources); err != nil {
			return err
		}
	}
	if err := sb.configureNetwork(ctx, c); err != nil {
		return err
	}
	if err := sb.ch.Configure(ctx, wire.Configure{Env: c.Env, Hostname: c.Hostname}); err != nil {
		return sb.mapErr(err)
	}
	sb.mu.Lock()
	sb.claimed(c)
	m := sb.m
	sb.mu.Unlock()
	return writeJSON(filepath.Join(sb.d.sandboxDir(m.ID), "meta.json"), m)
}

// configureNetwork applies a claim's network mode to a networked
// sandbox; checkClaim refused a mode the sandbox cannot take.
func (sb *sandbox) configureNetwork(ctx context.Context, c runtime.Claim) error {
	sb.mu.Lock()
	att := sb.m.Net
	sb.mu.Unlock()
	if att == nil {
		return nil
	}
	a, err := sb.d.net.SetPolicy(ctx, sb.m.ID, netpolicy.Mode(c.Network), c.NetworkAllow)
	if err != nil {
		return err
	}
	sb.mu.Lock()
	sb.m.Net = &a
	sb.mu.Unlock()
	return nil
}

func (sb *sandbox) Exec(ctx context.Context, r runtime.ExecRequest) (runtime.ExecResult, error) {
	if err := sb.begin(); err != nil {
		return runtime.ExecResult{}, err
	}
	defer sb.end()
	start := time.Now()
	e := wire.Exec{Command: r.Command, Env: r.Env, Cwd: r.Cwd, TimeoutMS: r.Timeout.Milliseconds(), User: r.User}
	st, err := sb.ch.Exec(ctx, e, client.ExecIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Signals: r.Signals})
	if err != nil {
		return runtime.ExecResult{}, sb.mapErr(err)
	}
	return runtime.ExecResult{
		ExitCode: st.ExitCode, Signal: st.Signal, TimedOut: st.TimedOut, OOMKilled: st.OOMKilled,
		Duration: time.Duration(st.DurationMS) * time.Millisecond,
		Blocked:  sb.blocked(start, time.Now()),
	}, nil
}

// blocked returns what the network policy refused between since and until.
func (sb *sandbox) blocked(since, until time.Time) []runtime.BlockedConnection {
	out := []runtime.BlockedConnection{}
	if sb.d.net == nil {
		return out
	}
	for _, b := range sb.d.net.Blocked(sb.m.ID, since, until) {
		out = append(out, runtime.BlockedConnection{Time: b.Time, Host: b.Host, Port: b.Port})
	}
	return out
}

func fileInfo(fi wire.FileInfo) runtime.FileInfo {
	return runtime.FileInfo{
		Name: fi.Name, Path: fi.Path, IsDir: fi.IsDir, Size: fi.Size, Mode: fi.Mode,
		Modified: time.Unix(0, fi.ModifiedNS).UTC(), Symlink: fi.Symlink,
	}
}

func (sb *sandbox) ReadFile(ctx context.Context, path string, w io.Writer) (runtime.FileInfo, error) {
	return sb.ReadFileAs(ctx, "", path, w)
}

func (sb *sandbox) ReadFileAs(ctx context.Context, user, path string, w io.Writer) (runtime.FileInfo, error) {
	if err := checkPath(path); err != nil {
		return runtime.FileInfo{}, err
	}
	if err := sb.begin(); err != nil {
		return runtime.FileInfo{}, err
	}
	defer sb.end()
	fi, err := sb.ch.ReadFileAs(ctx, user, path, w)
	return fileInfo(fi), sb.mapErr(err)
}

func (sb *sandbox) WriteFile(ctx context.Context, path string, mode uint32, r io.Reader) (int64, error) {
	return sb.WriteFileAs(ctx, "", path, mode, r)
}

func (sb *sandbox) WriteFileAs(ctx context.Context, user, path string, mode uint32, r io.Reader) (int64, error) {
	if err := checkPath(path); err != nil {
		return 0, err
	}
	if err := sb.begin(); err != nil {
		return 0, err
	}
	defer sb.end()
	n, err := sb.ch.WriteFileAs(ctx, user, path, mode, r)
	return n, sb.mapErr(err)
}

func (sb *sandbox) Untar(ctx context.Context, dir string, limit int64, r io.Reader) (runtime.Extracted, error) {
	if err := checkPath(dir); err != nil {
		return runtime.Extracted{}, err
	}
	if err := sb.begin(); err != nil {
		return runtime.Extracted{}, err
	}
	defer sb.end()
	x, err := sb.ch.Untar(ctx, dir, limit, r)
	return runtime.Extracted{Entries: x.Entries, Bytes: x.Bytes}, sb.mapErr(err)
}

func (sb *sandbox) Tar(ctx context.Context, dir, compression string, w io.Writer) error {
	if err := checkPath(dir); err != nil {
		return err
	}
	if err := sb.begin(); err != nil {
		return err
	}
	defer sb.end()
	return sb.mapErr(sb.ch.Tar(ctx, dir, compression, w))
}

func (sb *sandbox) List(ctx context.Context, path string) ([]runtime.FileInfo, error) {
	return sb.ListAs(ctx, "", path)
}

func (sb *sandbox) ListAs(ctx context.Context, user, path string) ([]runtime.FileInfo, error) {
	if err := checkPath(path); err != nil {
		return nil, err
	}
	if err := sb.begin(); err != nil {
		return nil, err
	}
	defer sb.end()
	ents, err := sb.ch.ListAs(ctx, user, path)
	if err != nil {
		return nil, sb.mapErr(err)
	}
	out := make([]runtime.FileInfo, len(ents))
	for i, e := range ents {
		out[i] = fileInfo(e)
	}
	return out, nil
}

func (sb *sandbox) Stat(ctx context.Context, path string) (runtime.FileInfo, error) {
	if err := checkPath(path); err != nil {
		return runtime.FileInfo{}, err
	}
	if err := sb.begin(); err != nil {
		return runtime.FileInfo{}, err
	}
	defer sb.end()
	fi, err := sb.ch.Stat(ctx, path)
	return fileInfo(fi), sb.mapErr(err)
}

func (sb *sandbox) Remove(ctx context.Context, path string, recursive bool) error {
	return sb.RemoveAs(ctx, "", path, recursive)
}

func (sb *sandbox) RemoveAs(ctx context.Context, user, path string, recursive bool) error {
	if err := checkPath(path); err != nil {
		return err
	}
	if err := sb.begin(); err != nil {
		return err
	}
	defer sb.end()
	return sb.mapErr(sb.ch.RemoveAs(ctx, user, path, recursive))
}

func (sb *sandbox) MkdirAll(ctx context.Context, path string, mode uint32) error {
	if err := checkPath(path); err != nil {
		return err
	}
	if err := sb.begin(); err != nil {
		return err
	}
	defer sb.end()
	return sb.mapErr(sb.ch.MkdirAll(ctx, path, mode))
}

func (sb *sandbox) Stats(ctx context.Context) (runtime.Stats, error) {
	st, err := sb.d.cgroup(sb.m.ID).Read()
	if err != nil {
		if e := sb.stopped(); e != nil {
			return runtime.Stats{}, e
		}
		return runtime.Stats{}, fmt.Errorf("read cgroup of %s: %w", sb.m.ID, err)
	}
	// The limits reported are the sandbox's own (its size), not the host
	// cgroup's, which are set above them (cgroupLimits).
	sb.mu.Lock()
	res := sb.m.Resources
	sb.mu.Unlock()
	memLimit, pidsLimit := st.MemoryLimit, st.PIDsLimit
	if res.MemoryBytes > 0 {
		memLimit = uint64(res.MemoryBytes)
	}
	if res.PIDs > 0 {
		pidsLimit = uint64(res.PIDs)
	}
	return runtime.Stats{
		CPUNanos: st.CPUNanos, MemoryBytes: st.MemoryWorkingSet, MemoryLimitBytes: memLimit,
		MemoryFailures: st.MemoryFailcnt, OOMKills: st.OOMKills, ProcessOOMKills: sb.oomKills.Load(), PIDs: st.PIDs, PIDsLimit: pidsLimit,
		CPUQuotaMicros: st.CPUQuotaMicros, CPUPeriodMicros: st.CPUPeriodMicros, ReadAt: st.ReadAt,
	}, nil
}

// Usage reads only what metering needs (runtime.UsageReader), as cheaply
// as cgroupv1.ReadMeterUsage can: an idle sandbox's reading is two files.
func (sb *sandbox) Usage(ctx context.Context) (runtime.Usage, error) {
	sb.meterMu.Lock()
	u, err := sb.d.cgroup(sb.m.ID).ReadMeterUsage(&sb.meter)
	sb.meterMu.Unlock()
	if err != nil {
		if e := sb.stopped(); e != nil {
			return runtime.Usage{}, e
		}
		return runtime.Usage{}, fmt.Errorf("read cgroup of %s: %w", sb.m.ID, err)
	}
	sb.mu.Lock()
	mem := sb.m.Resources.MemoryBytes
	sb.mu.Unlock()
	if mem > 0 {
		u.MemoryLimit = uint64(mem)
	}
	return runtime.Usage{CPUNanos: u.CPUNanos, MemoryBytes: u.MemoryWorkingSet, MemoryLimitBytes: u.MemoryLimit}, nil
}

func (sb *sandbox) SetResources(r runtime.Resources) error {
	// After the claim's own limits, not under them.
	sb.mu.Lock()
	sb.waitClaimLocked()
	sb.mu.Unlock()
	if err := sb.setResources(r); err != nil {
		return err
	}
	// An adopting process applies the CPU quota meta.json names.
	sb.mu.Lock()
	m := sb.m
	sb.mu.Unlock()
	return writeJSON(filepath.Join(sb.d.sandboxDir(m.ID), "meta.json"), m)
}

// setResources is SetResources without saving meta.json, for Configure,
// which saves it once at its end.
func (sb *sandbox) setResources(r runtime.Resources) error {
	sb.mu.Lock()
	disk := sb.m.Resources.DiskBytes
	sb.mu.Unlock()
	if err := diskFixed(disk, r.DiskBytes); err != nil {
		return err
	}
	r.DiskBytes = disk
	if err := sb.d.cgroup(sb.m.ID).Apply(cgroupLimits(r)); err != nil {
		return err
	}
	sb.mu.Lock()
	memChanged := sb.m.Resources.MemoryBytes != r.MemoryBytes
	sb.m.Resources = r
	sb.mu.Unlock()
	if memChanged && sb.stopped() == nil {
		sb.unwatchMemory()
		sb.watchMemory()
	}
	return nil
}

// diskFixed refuses a disk quota other than the one the sandbox started
// with (want 0 keeps it): runsc sizes the copy-on-write layer at start.
func diskFixed(disk, want int64) error {
	if want != 0 && want != disk {
		return fmt.Errorf("%w: the disk quota of a running sandbox is fixed (%d MiB); start one with %d MiB instead", runtime.ErrInvalidRequest, disk>>20, want>>20)
	}
	return nil
}

// Disk implements runtime.DiskReader. The copy-on-write layer is a sparse
// file that runsc creates in the sandbox's overlay directory and unlinks at
// once; the sandbox process keeps it open, so it is found among that
// process's file descriptors, and its allocated blocks are what the
// sandbox's writes cost the host's disk (gVisor punches holes for deleted
// data, so this falls when files are removed).
func (sb *sandbox) Disk() (runtime.Disk, error) {
	sb.mu.Lock()
	path, limit := sb.filestore, uint64(max(sb.m.Resources.DiskBytes, 0))
	sb.mu.Unlock()
	if path == "" {
		var err error
		if path, err = findFilestore(sb.pid, filepath.Join(sb.d.sandboxDir(sb.m.ID), "overlay")); err != nil {
			if e := sb.stopped(); e != nil {
				return runtime.Disk{}, e
			}
			return runtime.Disk{}, err
		}
		sb.mu.Lock()
		sb.filestore = path
		sb.mu.Unlock()
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if e := sb.stopped(); e != nil {
			return runtime.Disk{}, e
		}
		return runtime.Disk{}, fmt.Errorf("gvisor: disk use of %s: %w", sb.m.ID, err)
	}
	return runtime.Disk{UsedBytes: uint64(st.Blocks) * 512, LimitBytes: limit}, nil
}

// findFilestore returns the /proc path of the file descriptor by which
// process pid holds a file created in dir.
func findFilestore(pid int, dir string) (string, error) {
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		return "", fmt.Errorf("gvisor: list the sandbox process's files: %w", err)
	}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err == nil && strings.HasPrefix(target, dir+"/") {
			return filepath.Join(fdDir, e.Name()), nil
		}
	}
	return "", fmt.Errorf("gvisor: the sandbox process %d holds no file in %s", pid, dir)
}

// snapshotFormat is the version of snapshot.json and the layout beside
// it. 0 named host paths (rootfs, agent_dir); 1 names the template by name
// and digest and the agent by build, so it restores on any host.
const snapshotFormat = 1

// snapshotMeta is written beside the runsc image. It holds no host path:
// the bundle (rootfs, agent, channel and overlay directories) is written
// afresh by the restoring host.
type snapshotMeta struct {
	Format         int               `json:"format"`
	Template       string            `json:"template"`
	TemplateDigest string            `json:"template_digest,omitempty"`
	Agent          string            `json:"agent"` // agent build (installAgent)
	Resources      runtime.Resources `json:"resources"`
	Labels         map[string]string `json:"labels,omitempty"`
	CreatedAt      time.Time         `json:"created_at"`
	// Network and NetworkAllow are the policy the restored sandbox gets.
	Network      string   `json:"network,omitempty"`
	NetworkAllow []string `json:"network_allow,omitempty"`
	// Host paths of format 0, read to restore an old snapshot only.
	LegacyRootfs   string `json:"rootfs,omitempty"`
	LegacyAgentDir string `json:"agent_dir,omitempty"`
	// CgroupV2 is meta.CgroupV2 of the sandbox taken.
	CgroupV2 bool `json:"cgroup_v2,omitempty"`
}

func readSnapshot(dir string) (snapshotMeta, error) {
	var s snapshotMeta
	if err := readJSON(filepath.Join(dir, "snapshot.json"), &s); err != nil {
		return s, fmt.Errorf("gvisor: %s is not a snapshot: %w", dir, err)
	}
	return s, nil
}

// drainTimeout bounds how long a checkpoint waits for calls in flight; calls
// still running after it are cut off (their commands are killed by the
// agent) so that a long stream cannot hold a pause forever.
const drainTimeout = 5 * time.Second

// drainForCheckpoint marks the sandbox as being checkpointed (what says
// so in the ErrBusy of a second one), ends its long-running calls and
// waits for the others in flight, cutting them off after drainTimeout.
func (sb *sandbox) drainForCheckpoint(what string) (meta, error) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopErr != nil {
		return meta{}, sb.stopErr
	}
	if sb.pausing {
		return meta{}, fmt.Errorf("%w: already being %s", runtime.ErrBusy, what)
	}
	sb.pausing = true
	sb.cancelLong()
	deadline := time.AfterFunc(drainTimeout, func() { sb.ch.Disconnect() })
	for sb.inflight > 0 && sb.stopErr == nil {
		sb.idle.Wait()
	}
	deadline.Stop()
	return sb.m, nil
}

// endCheckpoint lets calls in again after a checkpoint that left the
// sandbox running.
func (sb *sandbox) endCheckpoint() {
	sb.mu.Lock()
	sb.pausing = false
	sb.long, sb.cancelLong = context.WithCancel(context.Background())
	sb.mu.Unlock()
}

func (sb *sandbox) Checkpoint(ctx context.Context, dir string) (runtime.Snapshot, error) {
	m, err := sb.drainForCheckpoint("paused")
	if err != nil {
		return runtime.Snapshot{}, err
	}
	undoPause := sb.endCheckpoint

	image := filepath.Join(dir, "image")
	if err := os.MkdirAll(image, 0o700); err != nil {
		undoPause()
		return runtime.Snapshot{}, err
	}
	sizeQuota := sb.platformQuota(m)
	undoPause = func() {
		sizeQuota()
		sb.endCheckpoint()
	}
	if _, err := sb.d.rs.runNet(ctx, filepath.Join(sb.d.sandboxDir(m.ID), "overlay"), m.Resources.DiskBytes, m.Net != nil, m.CgroupV2, "checkpoint", "--image-path", image, m.ID); err != nil {
		undoPause()
		if e := sb.stopped(); e != nil {
			return runtime.Snapshot{}, e
		}
		return runtime.Snapshot{}, fmt.Errorf("gvisor: checkpoint: %w", err)
	}
	snap, err := writeSnapshotMeta(dir, m)
	if err != nil {
		return runtime.Snapshot{}, err
	}
	size, _ := dirSize(dir)
	// The checkpoint stopped the container; what remains is host state.
	if err := sb.Destroy(context.WithoutCancel(ctx)); err != nil {
		sb.d.log.Warn("cleanup after checkpoint failed", "sandbox", m.ID, "err", err)
	}
	return runtime.Snapshot{Dir: dir, Bytes: size, Template: m.Template, TemplateDigest: m.TemplateDigest, Resources: m.Resources, Labels: snap.Labels, CreatedAt: snap.CreatedAt}, nil
}

// platformQuota lifts sandbox m's CPU quota to platformCPU's for a
// checkpoint (the save is the platform's work, and the sandbox's tasks are
// stopped while it runs) and returns what puts the size's quota back.
func (sb *sandbox) platformQuota(m meta) (sizeQuota func()) {
	g := sb.d.cgroup(m.ID)
	if err := g.SetCPUQuota(platformCPU(m.Resources)); err != nil {
		sb.d.log.Warn("lifting the CPU quota for a checkpoint", "sandbox", m.ID, "err", err)
	}
	return func() {
		if err := g.SetCPUQuota(m.Resources.CPU); err != nil && sb.stopped() == nil {
			sb.d.log.Warn("putting the CPU quota back after a checkpoint", "sandbox", m.ID, "err", err)
		}
	}
}

// writeSnapshotMeta writes snapshot.json for sandbox m into dir.
func writeSnapshotMeta(dir string, m meta) (snapshotMeta, error) {
	snap := snapshotMeta{
		Format: snapshotFormat, Template: m.Template, TemplateDigest: m.TemplateDigest, Agent: filepath.Base(m.AgentDir),
		Resources: m.Resources, Labels: copyLabels(m.Labels), CreatedAt: time.Now().UTC(), CgroupV2: m.CgroupV2,
	}
	if m.Net != nil {
		snap.Network, snap.NetworkAllow = string(m.Net.Mode), m.Net.Allow
	}
	return snap, writeJSON(filepath.Join(dir, "snapshot.json"), snap)
}

// CheckpointLive implements runtime.LiveCheckpointer: it writes a
// checkpoint to dir and the sandbox keeps running (runsc checkpoint
// --leave-running), for forks. Calls in flight are drained first, as for
// a pause, and the long-running ones (attached processes, watches) end: the
// save breaks the agent's connection, so the host drops it and waits for
// the agent to dial again before it takes calls.
func (sb *sandbox) CheckpointLive(ctx context.Context, dir string) (runtime.Snapshot, error) {
	m, err := sb.drainForCheckpoint("forked")
	if err != nil {
		return runtime.Snapshot{}, err
	}
	defer sb.endCheckpoint()
	image := filepath.Join(dir, "image")
	if err := os.MkdirAll(image, 0o700); err != nil {
		return runtime.Snapshot{}, err
	}
	before := sb.ch.Sessions()
	sizeQuota := sb.platformQuota(m)
	_, err = sb.d.rs.runNet(ctx, filepath.Join(sb.d.sandboxDir(m.ID), "overlay"), m.Resources.DiskBytes, m.Net != nil, m.CgroupV2, "checkpoint", "--leave-running", "--image-path", image, m.ID)
	sizeQuota()
	// Whatever the outcome, the save may have broken the agent's
	// connection without either end noticing: the agent (PID 1) is asked
	// to drop it and dial again, and calls resume on the new session. The
	// request is numbered (wire.RedialName): an agent that already
	// redialed on its own since reads the number at its dial and ignores
	// the signal, so the signal never closes the fresh session, and the
	// host waits for a session dialed after the request. (The host does
	// not close its end first: the agent would redial at once.)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sb.d.cfg.ReadyTimeout)
	defer cancel()
	var rerr error
	gen, gerr := sb.ch.RequestRedial()
	if gerr == nil {
		_, gerr = sb.d.rs.runNet(ctx, "", 0, m.Net != nil, m.CgroupV2, "kill", m.ID, "USR1")
	}
	if gerr != nil {
		sb.d.log.Warn("asking the agent to redial after a live checkpoint", "sandbox", m.ID, "err", gerr)
		sb.ch.Disconnect()
		rerr = sb.waitReady(rctx)
	} else {
		rerr = sb.waitRedialed(rctx, gen, before)
	}
	if err != nil {
		if e := sb.stopped(); e != nil {
			return runtime.Snapshot{}, e
		}
		return runtime.Snapshot{}, fmt.Errorf("gvisor: live checkpoint: %w", err)
	}
	if rerr != nil {
		return runtime.Snapshot{}, fmt.Errorf("gvisor: the agent did not come back after a live checkpoint: %w", rerr)
	}
	snap, err := writeSnapshotMeta(dir, m)
	if err != nil {
		return runtime.Snapshot{}, err
	}
	size, _ := dirSize(dir)
	return runtime.Snapshot{Dir: dir, Bytes: size, Template: m.Template, TemplateDigest: m.TemplateDigest, Resources: m.Resources, Labels: snap.Labels, CreatedAt: snap.CreatedAt}, nil
}

func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n, err
}

func (sb *sandbox) Destroy(ctx context.Context) error {
	var err error
	sb.destroyO.Do(func() {
		sb.unwatch()
		sb.stop(runtime.ErrStopped)
		err = sb.d.destroy(ctx, sb.m.ID)
		sb.d.forget(sb.m.ID)
	})
	return err
}

// detach lets go of a sandbox without stopping it, for the next process to
// adopt.
func (sb *sandbox) detach() {
	sb.unwatch()
	sb.unwatchMemory()
	_ = sb.ch.Close()
	sb.d.forget(sb.m.ID)
}
