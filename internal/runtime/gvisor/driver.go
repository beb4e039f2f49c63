// Package gvisor runs sandboxes in gVisor (runsc, systrap platform): each
// sandbox is a runsc container whose PID 1 is orkestr-agent, rooted on a
// shared read-only template with a private copy-on-write layer, limited by
// cgroup v1, reached over a per-sandbox Unix socket, with no network or a
// policed one (package netpolicy).
package gvisor

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/orkestr-eu/orkestr/internal/agent/client"
	"github.com/orkestr-eu/orkestr/internal/netpolicy"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
)

// Config configures a Driver.
type Config struct {
	Runsc        string // path of the runsc binary
	AgentBinary  string // path of the static orkestr-agent binary
	StateDir     string // runtime state: runsc root, per-sandbox directories
	CgroupParent string // parent of every sandbox's cgroup, e.g. "/orkestr"
	Platform     string // runsc platform; "systrap" unless set
	Debug        bool   // keep runsc debug logs in each sandbox directory
	ReadyTimeout time.Duration
	Log          *slog.Logger
	// Network enables networked sandboxes; nil: every sandbox is "off".
	// Its Instance should be unique per StateDir.
	Network *netpolicy.Config
	// ExtraCAs are PEM CA certificates appended to every new sandbox's
	// trust store (CABundlePath); restored and adopted sandboxes keep
	// what they had.
	ExtraCAs []byte
}

// Driver is the gVisor runtime.Driver.
type Driver struct {
	cfg      Config
	rs       *runsc
	agentDir string // content-addressed copy of the agent binary
	log      *slog.Logger
	net      *netpolicy.Manager // nil without networking

	mu        sync.Mutex
	sandboxes map[string]*sandbox
	oomKills  atomic.Uint64 // processes killed at their sandbox's memory limit
}

var _ runtime.Driver = (*Driver)(nil)

// New prepares the state directory. It starts nothing; call Reconcile once
// before creating sandboxes so leftovers of a previous process are handled.
func New(cfg Config) (*Driver, error) {
	if cfg.Platform == "" {
		cfg.Platform = "systrap"
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = "/orkestr"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 15 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("gvisor: state dir %q must be an absolute path", cfg.StateDir)
	}
	if _, err := os.Stat(cfg.Runsc); err != nil {
		return nil, fmt.Errorf("gvisor: runsc not found at %s (run `make setup`): %w", cfg.Runsc, err)
	}
	for _, d := range []string{"runsc", "sandboxes", "agent"} {
		if err := os.MkdirAll(filepath.Join(cfg.StateDir, d), 0o700); err != nil {
			return nil, err
		}
	}
	agentDir, err := installAgent(cfg.AgentBinary, filepath.Join(cfg.StateDir, "agent"))
	if err != nil {
		return nil, err
	}
	debugDir := ""
	if cfg.Debug {
		debugDir = filepath.Join(cfg.StateDir, "debug")
		if err := os.MkdirAll(debugDir, 0o700); err != nil {
			return nil, err
		}
	}
	var nm *netpolicy.Manager
	if cfg.Network != nil {
		nc := *cfg.Network
		if nc.Log == nil {
			nc.Log = cfg.Log
		}
		if nm, err = netpolicy.New(nc); err != nil {
			return nil, err
		}
	}
	d := &Driver{
		net:       nm,
		cfg:       cfg,
		rs:        &runsc{bin: cfg.Runsc, root: filepath.Join(cfg.StateDir, "runsc"), platform: cfg.Platform, debugDir: debugDir},
		agentDir:  agentDir,
		log:       cfg.Log,
		sandboxes: map[string]*sandbox{},
	}
	return d, nil
}

// installAgent copies the agent binary into a directory named by its hash, so
// a running or checkpointed sandbox keeps the exact binary it started with
// even after the host's agent is upgraded.
func installAgent(src, base string) (string, error) {
	f, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("gvisor: agent binary: %w (run `make build`)", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	dir := filepath.Join(base, hex.EncodeToString(h.Sum(nil))[:16])
	dst := filepath.Join(dir, "orkestr-agent")
	if _, err := os.Stat(dst); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if _, err := f.Seek(0, 0); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, ".agent-*")
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(tmp, f); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return "", err
	}
	tmp.Close()
	if err := os.Chmod(tmp.Name(), 0o755); err != nil {
		return "", err
	}
	return dir, os.Rename(tmp.Name(), dst)
}

// NetworkBlocked returns the network policy's refusals since start by
// reason (nil without networking).
func (d *Driver) NetworkBlocked() map[string]uint64 {
	if d.net == nil {
		return nil
	}
	return d.net.BlockedCounts()
}

// Name implements runtime.Driver.
func (d *Driver) Name() string { return "gvisor" }

// newID returns a fixed-length runsc container id: runsc matches ids by
// prefix, so no id may be a prefix of another.
func newID() string {
	return "o" + strings.ToLower(ulid.MustNew(ulid.Now(), rand.Reader).String())
}

func validID(id string) bool {
	if len(id) != 27 || id[0] != 'o' {
		return false
	}
	for _, c := range id[1:] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}

// meta is the on-disk record of a sandbox, enough to adopt or clean it up
// after the owning process died.
type meta struct {
	ID       string `json:"id"`
	Template string `json:"template"`
	// TemplateDigest names the template's build (runtime.Spec).
	TemplateDigest string            `json:"template_digest,omitempty"`
	Rootfs         string            `json:"rootfs"`
	AgentDir       string            `json:"agent_dir"`
	Resources      runtime.Resources `json:"resources"`
	Labels         map[string]string `json:"labels,omitempty"`
	Pooled         bool              `json:"pooled"`
	CreatedAt      time.Time         `json:"created_at"`
	// Net is the sandbox's network; nil for network "off".
	Net *netpolicy.Attachment `json:"net,omitempty"`
	// Networked asks start for a network (Net is filled in by start).
	Networked bool `json:"networked,omitempty"`
	// CgroupV2: the sandbox kernel has a cgroup v2 hierarchy (runsc
	// --in-sandbox-cgroup=v2; every new sandbox). A restore must use what
	// its snapshot was taken with: false for older snapshots.
	CgroupV2 bool `json:"cgroup_v2,omitempty"`
}

func (d *Driver) sandboxDir(id string) string { return filepath.Join(d.cfg.StateDir, "sandboxes", id) }

func (d *Driver) cgroup(id string) cgroupv1.Group {
	return cgroupv1.Group(filepath.Join(d.cfg.CgroupParent, id))
}

// Create implements runtime.Driver.
func (d *Driver) Create(ctx context.Context, s runtime.Spec) (runtime.Sandbox, error) {
	if !filepath.IsAbs(s.Rootfs) {
		return nil, fmt.Errorf("gvisor: rootfs %q must be absolute", s.Rootfs)
	}
	if _, err := os.Stat(filepath.Join(s.Rootfs, "bin/sh")); err != nil {
		return nil, fmt.Errorf("gvisor: template %q has no /bin/sh at %s: %w", s.Template, s.Rootfs, err)
	}
	m := meta{
		ID: newID(), Template: s.Template, TemplateDigest: s.TemplateDigest, Rootfs: s.Rootfs, AgentDir: d.agentDir,
		Resources: s.Resources, Labels: copyLabels(s.Labels), Pooled: s.Labels["pool"] != "", CreatedAt: time.Now().UTC(),
		Networked: s.Networked, CgroupV2: true,
	}
	return d.start(ctx, m, "", "", nil)
}

// Restore implements runtime.Driver. The snapshot names no host path: the
// rootfs is this host's copy of the snapshot's template, and the agent is
// this host's install of the agent build the snapshot was taken with.
func (d *Driver) Restore(ctx context.Context, dir, rootfs string, labels map[string]string) (runtime.Sandbox, error) {
	return d.restore(ctx, newID(), dir, rootfs, labels)
}

// RestoreAs implements runtime.InPlaceRestorer: the restored sandbox takes
// the id of the one the snapshot was taken of (destroyed by its
// checkpoint), so a pause that cannot be kept is undone in place.
func (d *Driver) RestoreAs(ctx context.Context, id, dir, rootfs string, labels map[string]string) (runtime.Sandbox, error) {
	if !validID(id) {
		return nil, fmt.Errorf("%w: %q is not a sandbox id of this driver", runtime.ErrInvalidRequest, id)
	}
	if _, ok := d.Get(id); ok {
		return nil, fmt.Errorf("%w: sandbox %s still runs", runtime.ErrInvalidRequest, id)
	}
	return d.restore(ctx, id, dir, rootfs, labels)
}

func (d *Driver) restore(ctx context.Context, id, dir, rootfs string, labels map[string]string) (runtime.Sandbox, error) {
	snap, err := readSnapshot(dir)
	if err != nil {
		return nil, err
	}
	if rootfs == "" {
		// Snapshots of format 0 named the host's rootfs.
		rootfs = snap.LegacyRootfs
	}
	if !filepath.IsAbs(rootfs) {
		return nil, fmt.Errorf("gvisor: restoring %s needs the rootfs of template %q", dir, snap.Template)
	}
	agentDir, err := d.agentFor(snap)
	if err != nil {
		return nil, err
	}
	if labels == nil {
		labels = snap.Labels
	}
	m := meta{
		ID: id, Template: snap.Template, TemplateDigest: snap.TemplateDigest, Rootfs: rootfs, AgentDir: agentDir,
		Resources: snap.Resources, Labels: copyLabels(labels), CreatedAt: time.Now().UTC(),
		Networked: snap.Network != "" && snap.Network != runtime.NetworkOff,
		CgroupV2:  snap.CgroupV2,
	}
	return d.start(ctx, m, filepath.Join(dir, "image"), snap.Network, snap.NetworkAllow)
}

// ReadSnapshot implements runtime.SnapshotReader.
func (d *Driver) ReadSnapshot(dir string) (runtime.Snapshot, error) {
	snap, err := readSnapshot(dir)
	if err != nil {
		return runtime.Snapshot{}, err
	}
	size, _ := dirSize(dir)
	return runtime.Snapshot{Dir: dir, Bytes: size, Template: snap.Template, TemplateDigest: snap.TemplateDigest,
		Resources: snap.Resources, Labels: copyLabels(snap.Labels), CreatedAt: snap.CreatedAt}, nil
}

// agentFor is this host's directory of the agent build a snapshot was
// taken with: the restored memory runs that exact binary, which is mapped
// from /agent.
func (d *Driver) agentFor(snap snapshotMeta) (string, error) {
	build := snap.Agent
	if build == "" && snap.LegacyAgentDir != "" {
		build = filepath.Base(snap.LegacyAgentDir)
	}
	if !validAgentBuild(build) {
		return "", fmt.Errorf("gvisor: the snapshot names no valid agent build (%q)", build)
	}
	dir := filepath.Join(d.cfg.StateDir, "agent", build)
	if _, err := os.Stat(filepath.Join(dir, "orkestr-agent")); err != nil {
		return "", fmt.Errorf("gvisor: the snapshot was taken with agent build %s, which this host does not have (it runs %s): restore it on a host of the same orkestr version", build, filepath.Base(d.agentDir))
	}
	return dir, nil
}

// validAgentBuild: an agent build is named by the first 16 hex digits of
// the binary's SHA-256 (installAgent).
func validAgentBuild(s string) bool {
	if len(s) != 16 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// start creates (or, with image set, restores) the runsc container for m and
// waits for its agent. A networked sandbox gets its namespace first, with
// mode (deny when empty) applied before the sandbox runs. On any failure
// everything made so far is undone.
func (d *Driver) start(ctx context.Context, m meta, image, mode string, allow []string) (_ runtime.Sandbox, err error) {
	dir := d.sandboxDir(m.ID)
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	undo = append(undo, func() { _ = os.RemoveAll(dir) })
	for _, sub := range []string{"channel", "overlay"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, err
		}
	}
	if err := writeJSON(filepath.Join(dir, "meta.json"), m); err != nil {
		return nil, err
	}
	netnsPath, resolvConf := "", ""
	if m.Networked {
		if d.net == nil {
			return nil, fmt.Errorf("%w (the server runs without network configuration)", runtime.ErrNoNetwork)
		}
		a, err := d.net.Attach(ctx, m.ID)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", runtime.ErrNoNetwork, err)
		}
		undo = append(undo, func() { _ = d.net.Detach(context.Background(), a) })
		if mode != "" && mode != runtime.NetworkOff {
			if a, err = d.net.SetPolicy(ctx, m.ID, netpolicy.Mode(mode), allow); err != nil {
				return nil, err
			}
		}
		m.Net = &a
		netnsPath, resolvConf = a.NetnsPath(), filepath.Join(dir, "resolv.conf")
		if err := os.WriteFile(resolvConf, a.ResolvConf(), 0o644); err != nil {
			return nil, err
		}
	}
	if err := writeJSON(filepath.Join(dir, "meta.json"), m); err != nil {
		return nil, err
	}
	ch, err := client.Listen(filepath.Join(dir, "channel"), d.log)
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { _ = ch.Close() })
	spec := bundleSpec(m.Rootfs, m.AgentDir, filepath.Join(dir, "channel"), string(d.cgroup(m.ID)), m.Resources, netnsPath, resolvConf)
	if m.Pooled {
		// A warm pool's refill yields the CPU to claimed sandboxes until
		// it is claimed itself (Configure restores the weight); once
		// runsc is done, it is SCHED_IDLE as well (idleWhilePooled).
		shares := uint64(pooledCPUShares)
		spec.Linux.Resources.CPU.Shares = &shares
	}
	if err := writeBundle(filepath.Join(dir, "bundle"), spec); err != nil {
		return nil, err
	}
	console, err := os.OpenFile(filepath.Join(dir, "console.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer console.Close()

	undo = append(undo, func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = d.rs.delete(cctx, m.ID)
		d.cleanupMounts(m.ID)
		_ = d.cgroup(m.ID).Remove()
	})
	args := []string{"run", "--detach", "--bundle", filepath.Join(dir, "bundle"), m.ID}
	if image != "" {
		args = []string{"restore", "--detach", "--image-path", image, "--bundle", filepath.Join(dir, "bundle"), m.ID}
	}
	// runsc must not die with ctx while the container is half made: the
	// undo step deletes it instead.
	cmd := d.rs.command(context.WithoutCancel(ctx), filepath.Join(dir, "overlay"), m.Resources.DiskBytes, m.Networked, m.CgroupV2, args...)
	cmd.Stdout = console
	cmd.Stderr = console
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("gvisor: runsc %s: %w: %s", args[0], err, tail(filepath.Join(dir, "console.log")))
	}
	if m.Pooled {
		defer d.idleWhilePooled(m.ID)(&err)
	}
	st, err := d.rs.state(ctx, m.ID)
	if err != nil {
		return nil, err
	}
	sb := newSandbox(d, m, ch, st.PID)
	rctx, cancel := context.WithTimeout(ctx, d.cfg.ReadyTimeout)
	defer cancel()
	if err := sb.waitReady(rctx); err != nil {
		return nil, fmt.Errorf("gvisor: sandbox agent did not come up: %w (console: %s)", err, tail(filepath.Join(dir, "console.log")))
	}
	if image == "" && len(d.cfg.ExtraCAs) > 0 {
		if err := installCAs(rctx, sb, d.cfg.ExtraCAs); err != nil {
			return nil, fmt.Errorf("gvisor: installing the extra CA certificates: %w", err)
		}
	}
	// From here on the sandbox's own commands run: at its size's quota.
	if err := d.cgroup(m.ID).SetCPUQuota(m.Resources.CPU); err != nil {
		return nil, fmt.Errorf("gvisor: applying the CPU quota of sandbox %s: %w", m.ID, err)
	}
	d.mu.Lock()
	d.sandboxes[m.ID] = sb
	d.mu.Unlock()
	return sb, nil
}

// idleWhilePooled makes a pooled sandbox's cpu group SCHED_IDLE (cpu.idle,
// Linux ≥ 5.15, also in v1) for the rest of its start (its agent and
// pre-started shell) and while it waits: it runs only on CPU that no
// claimed sandbox wants, and any of their wakeups preempts it at once.
// Not before `runsc run` has returned: runsc joins and leaves the
// sandbox's cgroups itself, taking the host's cgroup locks (and sleeping
// in an RCU sync while it holds them); at idle priority on a busy host it
// would hold them for as long as the host stays busy, and every other
// start and claim waits for them. A start still unfinished after
// pooledIdleBoot continues at the low weight, so a pool refills on a host
// kept busy by claimed sandboxes; it waits idle once ready. Call the
// returned function with start's error when start returns.
func (d *Driver) idleWhilePooled(id string) (done func(*error)) {
	g := d.cgroup(id)
	_ = g.SetCPUIdle(true)
	var (
		mu             sync.Mutex
		finished, slow bool
	)
	t := time.AfterFunc(pooledIdleBoot, func() {
		mu.Lock()
		defer mu.Unlock()
		if !finished {
			slow = true
			_ = g.SetCPUIdle(false)
		}
	})
	return func(err *error) {
		t.Stop()
		mu.Lock()
		defer mu.Unlock()
		finished = true
		if slow && *err == nil {
			*err = g.SetCPUIdle(true)
		}
	}
}

// Get implements runtime.Driver.
func (d *Driver) Get(id string) (runtime.Sandbox, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	sb, ok := d.sandboxes[id]
	if !ok {
		return nil, false
	}
	return sb, true
}

// List implements runtime.Driver: the sandboxes this driver runs now.
func (d *Driver) List(ctx context.Context) ([]runtime.Info, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]runtime.Info, 0, len(d.sandboxes))
	for _, sb := range d.sandboxes {
		out = append(out, sb.Info())
	}
	return out, nil
}

func (d *Driver) forget(id string) {
	d.mu.Lock()
	delete(d.sandboxes, id)
	d.mu.Unlock()
}

// destroy removes every host resource of sandbox id, whether or not this
// process knows it.
func (d *Driver) destroy(ctx context.Context, id string) error {
	var errs []error
	if err := d.rs.delete(ctx, id); err != nil {
		errs = append(errs, err)
	}
	d.cleanupMounts(id)
	var m meta
	if readJSON(filepath.Join(d.sandboxDir(id), "meta.json"), &m) == nil && m.Net != nil && d.net != nil {
		if err := d.net.Detach(ctx, *m.Net); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.cgroup(id).Remove(); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(d.sandboxDir(id)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// cleanupMounts detaches mounts runsc may leave under its root for id (an
// nsfs mount of the sandbox's network namespace).
func (d *Driver) cleanupMounts(id string) {
	for _, mp := range mountsUnder(d.rs.root) {
		if strings.Contains(mp, id) {
			_ = unmount(mp)
		}
	}
}

// Close implements runtime.Driver.
func (d *Driver) Close(ctx context.Context, destroy bool) error {
	d.mu.Lock()
	all := make([]*sandbox, 0, len(d.sandboxes))
	for _, sb := range d.sandboxes {
		all = append(all, sb)
	}
	d.mu.Unlock()
	var errs []error
	for _, sb := range all {
		if destroy {
			errs = append(errs, sb.Destroy(ctx))
		} else {
			sb.detach()
		}
	}
	left := 0
	if !destroy {
		ents, _ := os.ReadDir(filepath.Join(d.cfg.StateDir, "sandboxes"))
		left = len(ents)
	}
	if left == 0 {
		// runsc keeps one empty network namespace mounted under its root
		// for all --network=none sandboxes; with none left it goes too.
		for _, mp := range mountsUnder(d.rs.root) {
			if err := unmount(mp); err != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
			}
		}
		if len(cgroupv1.Group(d.cfg.CgroupParent).Children()) == 0 {
			_ = cgroupv1.Group(d.cfg.CgroupParent).Remove()
		}
	}
	if d.net != nil {
		// With no sandbox left the table goes too; otherwise it stays
		// for the next process to adopt the sandboxes with.
		errs = append(errs, d.net.Close(ctx, left == 0))
	}
	return errors.Join(errs...)
}

// Reconcile implements runtime.Driver.
func (d *Driver) Reconcile(ctx context.Context, keep func(runtime.Info) bool) (runtime.ReconcileReport, error) {
	var rep runtime.ReconcileReport
	var errs []error
	containers, err := d.rs.list(ctx)
	if err != nil {
		return rep, err
	}
	state := map[string]containerState{}
	for _, c := range containers {
		state[c.ID] = c
	}
	seen := map[string]bool{}
	ents, err := os.ReadDir(filepath.Join(d.cfg.StateDir, "sandboxes"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return rep, err
	}
	for _, e := range ents {
		id := e.Name()
		seen[id] = true
		if _, known := d.Get(id); known {
			continue
		}
		var m meta
		merr := readJSON(filepath.Join(d.sandboxDir(id), "meta.json"), &m)
		st, exists := state[id]
		alive := exists && st.Status == "running" && processAlive(st.PID)
		if merr == nil && validID(id) && alive && !m.Pooled && keep != nil && keep(metaInfo(m, runtime.StateRunning)) {
			if err := d.adopt(ctx, m, st.PID); err == nil {
				rep.Adopted = append(rep.Adopted, id)
				continue
			} else {
				d.log.Warn("could not re-adopt sandbox; destroying it", "sandbox", id, "err", err)
			}
		}
		if err := d.destroy(ctx, id); err != nil {
			errs = append(errs, err)
		}
		rep.Destroyed = append(rep.Destroyed, id)
	}
	for id := range state {
		if !seen[id] {
			if err := d.destroy(ctx, id); err != nil {
				errs = append(errs, err)
			}
			rep.Removed = append(rep.Removed, "runsc:"+id)
		}
	}
	if d.net != nil {
		// After the sandboxes: only adopted ones keep their network.
		var keepNet []netpolicy.Attachment
		for _, id := range rep.Adopted {
			var m meta
			if readJSON(filepath.Join(d.sandboxDir(id), "meta.json"), &m) == nil && m.Net != nil {
				keepNet = append(keepNet, *m.Net)
			}
		}
		removed, err := d.net.Start(ctx, keepNet)
		rep.Removed = append(rep.Removed, removed...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, g := range cgroupv1.Group(d.cfg.CgroupParent).Children() {
		id := filepath.Base(string(g))
		if _, known := d.Get(id); known || seen[id] {
			continue
		}
		if err := g.Remove(); err != nil {
			errs = append(errs, err)
		}
		rep.Removed = append(rep.Removed, "cgroup:"+string(g))
	}
	return rep, errors.Join(errs...)
}

// adopt takes over a running sandbox left by a previous process: it listens
// on the sandbox's socket again and waits for the agent to redial.
func (d *Driver) adopt(ctx context.Context, m meta, pid int) error {
	ch, err := client.Listen(filepath.Join(d.sandboxDir(m.ID), "channel"), d.log)
	if err != nil {
		return err
	}
	sb := newSandbox(d, m, ch, pid)
	rctx, cancel := context.WithTimeout(ctx, d.cfg.ReadyTimeout)
	defer cancel()
	if err := sb.waitReady(rctx); err != nil {
		_ = ch.Close()
		return err
	}
	// A process that stopped while it started this sandbox left it at
	// platformCPU's quota.
	if err := d.cgroup(m.ID).SetCPUQuota(m.Resources.CPU); err != nil {
		_ = ch.Close()
		return fmt.Errorf("applying the CPU quota: %w", err)
	}
	d.mu.Lock()
	d.sandboxes[m.ID] = sb
	d.mu.Unlock()
	return nil
}

func metaInfo(m meta, st runtime.State) runtime.Info {
	network := runtime.NetworkOff
	if m.Net != nil {
		network = string(m.Net.Mode)
	}
	return runtime.Info{
		ID: m.ID, Template: m.Template, Resources: m.Resources, Labels: copyLabels(m.Labels),
		State: st, CreatedAt: m.CreatedAt, Pooled: m.Pooled, Network: network,
	}
}

func copyLabels(l map[string]string) map[string]string {
	if l == nil {
		return nil
	}
	out := make(map[string]string, len(l))
	for k, v := range l {
		out[k] = v
	}
	return out
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// tail returns the end of a log file for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return lastLines(string(b), 5)
}
