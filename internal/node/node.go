// Package node runs sandboxes on this host: it owns the runtime driver, the
// warm pools and the reconciliation of leftovers at start. The API server
// talks to a Node in-process today and over HTTP when hosts are split.
package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/metering"
	"github.com/orkestr-eu/orkestr/internal/netpolicy"
	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/pool"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/gvisor"
	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/template"
)

// Resources maps the operator's size menu to runtime limits. A size
// without a pids limit gets 512.
func Resources(sizes map[string]config.Size) map[string]runtime.Resources {
	out := make(map[string]runtime.Resources, len(sizes))
	for name, sz := range sizes {
		pids := sz.PIDs
		if pids == 0 {
			pids = 512
		}
		out[name] = runtime.Resources{CPU: sz.CPU, MemoryBytes: int64(sz.MemoryMB) << 20, PIDs: pids, DiskBytes: int64(sz.DiskMBOrDefault()) << 20}
	}
	return out
}

// Config configures a Node.
type Config struct {
	DataDir     string // the server's data directory; names this node's runtime state
	StateDir    string // runtime state; default /run/orkestr/<hash of DataDir>
	TemplateDir string // host-wide templates
	Runsc       string
	AgentBinary string
	PoolSize    int                          // warm sandboxes per built template at size small; 0 disables
	Sizes       map[string]runtime.Resources // default: the sizes of config.Default()
	Log         *slog.Logger
	// Network enables networked sandboxes (nil: network "off" only). Its
	// Instance is filled in from DataDir.
	Network *netpolicy.Config
	// NetworkPoolSize is the networked part of each warm pool (at most
	// PoolSize).
	NetworkPoolSize int
	// NetworkAccounts adds allow-list names per account id.
	NetworkAccounts map[string][]string
	// ExtraCAs are PEM CA certificates every new sandbox trusts (config
	// sandbox_ca_files): appended to its trust store, with the variables
	// of gvisor.CAEnv under its environment.
	ExtraCAs []byte
	// DiskReserveBytes is the host disk kept free (see CheckDisk); 0: none.
	DiskReserveBytes int64
	// PoolDemand lets the warm pools grow with demand (pool.Demand);
	// zero: every pool stays at PoolSize.
	PoolDemand pool.Demand

	// ID and Region name the node in the fleet; Address is the base URL
	// of its node API ("" in process).
	ID, Region, Address string
	// Slots caps the sandboxes the node runs at once; 0: one per 128 MiB
	// of host memory.
	Slots int
	// SnapshotDir is where checkpoints are kept; default DataDir/snapshots.
	// With a SnapshotStore it is a cache of the store's snapshots.
	SnapshotDir string
	// SnapshotStore makes pauses durable and portable: a checkpoint is
	// sealed (with SnapshotKeys' data key of the account) and put there
	// before Checkpoint returns, and a restore of a snapshot this node
	// does not hold gets it from there. nil: snapshots stay on this node.
	SnapshotStore snapshot.Store
	SnapshotKeys  *snapshot.Keyring
	// SnapshotCacheBytes bounds the snapshots kept in SnapshotDir once
	// they are durable (least recently used go first); 0: no bound.
	SnapshotCacheBytes int64
	// Recorder receives metered usage and sandboxes that stopped on their
	// own (the store); required.
	Recorder Recorder
	// Metering tunes the sampler (Interval, FlushEvery, Clock, hooks); its
	// Sink is the Recorder.
	Metering metering.Config
}

// Instance names one data directory's runtime state on this host (state
// directory, cgroups, network namespaces and nftables table), so that
// several servers (or test runs) never touch each other's sandboxes.
func Instance(dataDir string) string { return instance(dataDir) }

func instance(dataDir string) string {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		abs = dataDir
	}
	h := sha256.Sum256([]byte(abs))
	return hex.EncodeToString(h[:])[:12]
}

// Node is one host's sandbox runner.
type Node struct {
	cfg       Config
	driver    runtime.Driver
	pool      *pool.Pool
	templates template.Store

	diskReserve atomic.Int64

	mu       sync.Mutex
	warm     map[string]string // template → the build its pool was filled from
	stopScan chan struct{}

	sampler    *metering.Sampler
	live       sync.Map // runtime id -> *live: what this node runs for the store
	destroying sync.Map // runtime ids stopped on purpose (their watcher records nothing)
	starting   sync.Map // sandbox id -> *startCall: a create or restore under way
	startOnce  sync.Once
	capOnce    sync.Once
	capSize    nodeapi.Capacity
	fetching   sync.Map // snapshot id -> *sync.Mutex: one download at a time
	cacheMu    sync.Mutex
}

// templateScanEvery is how often the node looks for templates built (or
// rebuilt) by `orkestrd admin template build` while it runs.
const templateScanEvery = 3 * time.Second

// Resolved fills in the defaults Open and the driver need: the logger,
// sizes, the state directory and the network's instance name (both named
// after the data directory).
func (cfg Config) Resolved() (Config, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Sizes == nil {
		cfg.Sizes = Resources(config.Default().Sizes)
	}
	id := instance(cfg.DataDir)
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join("/run/orkestr", id)
	}
	if cfg.Network != nil && cfg.Network.Instance == "" {
		if _, err := exec.LookPath("nft"); err != nil {
			return cfg, fmt.Errorf("sandbox networking is enabled but the nft command is missing: install the Debian package nftables, or set network.enabled: false in the config")
		}
		nc := *cfg.Network
		nc.Instance = id
		cfg.Network = &nc
	}
	return cfg, nil
}

// GVisor is the gVisor driver a resolved config describes.
func GVisor(cfg Config) (runtime.Driver, error) {
	return gvisor.New(gvisor.Config{
		Runsc: cfg.Runsc, AgentBinary: cfg.AgentBinary, StateDir: cfg.StateDir,
		CgroupParent: "/orkestr/" + instance(cfg.DataDir), Log: cfg.Log, Network: cfg.Network, ExtraCAs: cfg.ExtraCAs,
	})
}

// Open is New with the gVisor driver of cfg (what orkestrd and the tests
// run).
func Open(cfg Config) (*Node, error) {
	cfg, err := cfg.Resolved()
	if err != nil {
		return nil, err
	}
	d, err := GVisor(cfg)
	if err != nil {
		return nil, err
	}
	return New(cfg, d)
}

// New runs sandboxes on this host with driver d; Reconcile then settles
// what a previous process left and fills the pools.
func New(cfg Config, d runtime.Driver) (*Node, error) {
	cfg, err := cfg.Resolved()
	if err != nil {
		return nil, err
	}
	if cfg.Recorder == nil {
		cfg.Recorder = discard{}
	}
	if cfg.ID == "" {
		cfg.ID = "local"
	}
	warnIfMemory(cfg.StateDir, cfg.Log)
	n := &Node{cfg: cfg, driver: d, pool: pool.New(d, cfg.Log), templates: template.Store{Dir: cfg.TemplateDir},
		warm: map[string]string{}, stopScan: make(chan struct{})}
	mc := cfg.Metering
	mc.Sink, mc.Log = cfg.Recorder, cfg.Log
	n.sampler = metering.New(mc)
	n.diskReserve.Store(cfg.DiskReserveBytes)
	n.pool.SetDemand(cfg.PoolDemand)
	return n, nil
}

// RunMetering samples and meters the node's sandboxes until ctx ends;
// WaitMetering returns once the last usage is in the store.
func (n *Node) RunMetering(ctx context.Context) { n.sampler.Run(ctx) }

// WaitMetering waits for RunMetering's final flush.
func (n *Node) WaitMetering() { n.sampler.Wait() }

// scanTemplates keeps the pools in step with the template store.
func (n *Node) scanTemplates() {
	t := time.NewTicker(templateScanEvery)
	defer t.Stop()
	for {
		select {
		case <-n.stopScan:
			return
		case <-t.C:
			if err := n.syncPools(); err != nil {
				n.cfg.Log.Warn("scanning templates", "err", err)
			}
		}
	}
}

// syncPools gives every built template a warm pool of its small size. A
// template rebuilt since its pool was filled gets its pool emptied and
// refilled from the new build; one that was removed loses its pool.
func (n *Node) syncPools() error {
	if n.cfg.PoolSize <= 0 {
		return nil
	}
	built, err := n.templates.List()
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	seen := map[string]bool{}
	for _, t := range built {
		seen[t.Name] = true
		build := t.BuiltAt.String() + " " + t.Digest
		old, had := n.warm[t.Name]
		if had && old == build {
			continue
		}
		spec, err := n.Spec(t.Name, "small")
		if err != nil {
			n.cfg.Log.Warn("template cannot be pooled", "template", t.Name, "err", err)
			continue
		}
		for _, key := range n.poolKeys(t.Name) {
			target := n.PoolTarget(key)
			if had {
				n.cfg.Log.Info("template rebuilt; refilling its pool", "pool", key.String())
				n.pool.SetTarget(key, spec, 0)
			} else {
				n.cfg.Log.Info("warming the pool of a template", "pool", key.String(), "target", target)
			}
			n.pool.SetTarget(key, spec, target)
		}
		n.warm[t.Name] = build
	}
	for name := range n.warm {
		if !seen[name] {
			for _, key := range n.poolKeys(name) {
				n.pool.SetTarget(key, runtime.Spec{}, 0)
			}
			delete(n.warm, name)
		}
	}
	return nil
}

// PoolKeys are the warm pools of a template.
func (n *Node) PoolKeys(tmpl string) []pool.Key { return n.poolKeys(tmpl) }

// PoolTarget is how many sandboxes key's pool keeps.
func (n *Node) PoolTarget(k pool.Key) int {
	if k.Networked {
		return n.networkPoolSize()
	}
	return n.cfg.PoolSize
}

// poolKeys are the warm pools of a template: network off, and networked
// when networking is on and has a pool.
func (n *Node) poolKeys(tmpl string) []pool.Key {
	keys := []pool.Key{{Template: tmpl, Size: "small"}}
	if n.networkPoolSize() > 0 {
		keys = append(keys, pool.Key{Template: tmpl, Size: "small", Networked: true})
	}
	return keys
}

func (n *Node) networkPoolSize() int {
	if n.cfg.Network == nil {
		return 0
	}
	return min(n.cfg.NetworkPoolSize, n.cfg.PoolSize)
}

// NetworkBlocked returns the network policy's refusals since start by
// reason (nil without networking).
func (n *Node) NetworkBlocked() map[string]uint64 {
	if d, ok := n.driver.(interface{ NetworkBlocked() map[string]uint64 }); ok {
		return d.NetworkBlocked()
	}
	return nil
}

// OOMKills is how many sandbox processes were killed at their sandbox's
// memory limit since start (0 for a driver that does not do that).
func (n *Node) OOMKills() uint64 {
	if d, ok := n.driver.(interface{ OOMKills() uint64 }); ok {
		return d.OOMKills()
	}
	return 0
}

// NetworkEnabled says whether restricted and open sandboxes can run here.
func (n *Node) NetworkEnabled() bool { return n.cfg.Network != nil }

// ErrUnknownSize is returned for a size not in Sizes.
var ErrUnknownSize = errors.New("unknown size")

// Spec resolves a template and size into a runtime spec.
func (n *Node) Spec(tmpl, size string) (runtime.Spec, error) {
	res, ok := n.cfg.Sizes[size]
	if !ok {
		return runtime.Spec{}, fmt.Errorf("%w %q", ErrUnknownSize, size)
	}
	rootfs, err := n.templates.Rootfs(tmpl)
	if err != nil {
		return runtime.Spec{}, err
	}
	rec, err := n.templates.Record(tmpl)
	if err != nil {
		return runtime.Spec{}, err
	}
	return runtime.Spec{Template: tmpl, TemplateDigest: rec.Identity(), Rootfs: rootfs, Resources: res}, nil
}

// create claims a warm sandbox (or starts one) for template and size,
// with claim.Network as its network mode. account picks the account's
// additions to the allow-list.
func (n *Node) create(ctx context.Context, tmpl, size, account string, claim runtime.Claim) (runtime.Sandbox, bool, error) {
	spec, err := n.Spec(tmpl, size)
	if err != nil {
		return nil, false, err
	}
	networked := claim.Network != "" && claim.Network != runtime.NetworkOff
	if networked && n.cfg.Network == nil {
		return nil, false, runtime.ErrNoNetwork
	}
	if networked {
		claim.NetworkAllow = append(claim.NetworkAllow, n.cfg.NetworkAccounts[account]...)
	}
	claim.Resources = spec.Resources
	claim.Env = n.withTemplateEnv(tmpl, claim.Env)
	return n.pool.Claim(ctx, pool.Key{Template: tmpl, Size: size, Networked: networked}, spec, claim)
}

// withTemplateEnv puts the template's own environment (an image's ENV,
// e.g. PATH and PYTHON_VERSION) under the sandbox's variables, and under
// that the trust store variables when extra CAs are configured.
func (n *Node) withTemplateEnv(tmpl string, env map[string]string) map[string]string {
	rec, err := n.templates.Record(tmpl)
	if (err != nil || len(rec.Env) == 0) && len(n.cfg.ExtraCAs) == 0 {
		return env
	}
	out := make(map[string]string, len(rec.Env)+len(env)+len(gvisor.CAEnv))
	if len(n.cfg.ExtraCAs) > 0 {
		for k, v := range gvisor.CAEnv {
			out[k] = v
		}
	}
	for _, kv := range rec.Env {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			out[k] = v
		}
	}
	for k, v := range env {
		out[k] = v
	}
	return out
}

// warnIfMemory warns when the state directory, where every sandbox's
// copy-on-write layer (its disk) lives, is a tmpfs: /run is one on most
// hosts, so what sandboxes write would take the host's memory.
func warnIfMemory(stateDir string, log *slog.Logger) {
	var st unix.Statfs_t
	if unix.Statfs(stateDir, &st) == nil && st.Type == unix.TMPFS_MAGIC {
		log.Warn("the state directory is a tmpfs: what sandboxes write to their disks takes host memory; give --state-dir a directory on disk", "state_dir", stateDir)
	}
}

// ErrDiskReserve is returned by CheckDisk when the host's free disk is
// under the operator's reserve.
var ErrDiskReserve = errors.New("the host's free disk is under its reserve")

// DiskSpace is the free space of one filesystem the node writes to.
type DiskSpace struct {
	Path       string // the directory whose filesystem this is
	FreeBytes  uint64 // available to unprivileged writers
	TotalBytes uint64
}

// DiskSpaces reads the free space where sandboxes write: the state
// directory (their copy-on-write layers) and the data directory
// (snapshots, the SQLite store). A filesystem holding both is listed once.
func (n *Node) DiskSpaces() ([]DiskSpace, error) {
	var out []DiskSpace
	seen := map[uint64]bool{}
	var errs []error
	for _, p := range []string{n.cfg.StateDir, n.cfg.DataDir} {
		if p == "" {
			continue
		}
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err != nil {
			errs = append(errs, fmt.Errorf("statfs %s: %w", p, err))
			continue
		}
		var fi unix.Stat_t
		if unix.Stat(p, &fi) == nil {
			if seen[fi.Dev] {
				continue
			}
			seen[fi.Dev] = true
		}
		out = append(out, DiskSpace{Path: p, FreeBytes: st.Bavail * uint64(st.Bsize), TotalBytes: st.Blocks * uint64(st.Bsize)})
	}
	return out, errors.Join(errs...)
}

// DiskReserve is the operator's reserve in bytes.
func (n *Node) DiskReserve() int64 { return n.diskReserve.Load() }

// SetDiskReserve changes the reserve while the node runs.
func (n *Node) SetDiskReserve(bytes int64) { n.diskReserve.Store(bytes) }

// CheckDisk refuses new sandboxes (creates and resumes) while any
// filesystem the node writes to has less free space than the reserve:
// the sandboxes already running, the store and the snapshots need it.
func (n *Node) CheckDisk() error {
	reserve := n.diskReserve.Load()
	if reserve <= 0 {
		return nil
	}
	spaces, err := n.DiskSpaces()
	if err != nil {
		return err
	}
	for _, d := range spaces {
		if d.FreeBytes < uint64(reserve) {
			return fmt.Errorf("%w: %s has %d MiB free, the reserve is %d MiB", ErrDiskReserve, d.Path, d.FreeBytes>>20, reserve>>20)
		}
	}
	return nil
}

// Close empties the pools; with destroy set every sandbox goes too,
// otherwise claimed sandboxes keep running for the next start to adopt.
func (n *Node) Close(ctx context.Context, destroy bool) error {
	n.mu.Lock()
	select {
	case <-n.stopScan:
	default:
		close(n.stopScan)
	}
	n.mu.Unlock()
	return errors.Join(n.pool.Close(ctx), n.driver.Close(ctx, destroy))
}

// ExecutableDir is the directory of the running binary, where `make build`
// puts runsc and orkestr-agent beside orkestrd.
func ExecutableDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "."
	}
	return filepath.Dir(exe)
}

// NetworkConfig turns the operator's network section into the runtime's
// (nil when networking is disabled).
func NetworkConfig(c config.Network) (*netpolicy.Config, error) {
	if !c.Enabled {
		return nil, nil
	}
	r, err := netip.ParsePrefix(c.Range)
	if err != nil {
		return nil, fmt.Errorf("network.range: %w", err)
	}
	nc := &netpolicy.Config{Range: r, AllowNames: c.AllowNames(netpolicy.DefaultAllowNames), Upstreams: c.Upstreams}
	for _, s := range c.AllowPrivate {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("network.allow_private: %w", err)
		}
		nc.AllowPrivate = append(nc.AllowPrivate, p)
	}
	if err := netpolicy.ValidateNames(nc.AllowNames); err != nil {
		return nil, fmt.Errorf("network.allow: %w", err)
	}
	for acct, names := range c.Accounts {
		if err := netpolicy.ValidateNames(names); err != nil {
			return nil, fmt.Errorf("network.accounts.%s: %w", acct, err)
		}
	}
	return nc, nil
}
