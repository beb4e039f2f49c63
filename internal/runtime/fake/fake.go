// Package fake is an in-memory runtime driver for tests that need
// sandboxes but not isolation: no root, no processes, no files on disk but
// snapshots. A sandbox is a tree of files in memory and a tiny command
// interpreter that knows the basic vocabulary of the conformance suite
// (package runtimetest: echo, printf, cat, exit, sleep, pwd, true, false,
// ln -s, `;`, quotes, $NAME, `>&2`, `> FILE`) plus NAME=value, $?, read and
// `oom`, which ends like a process killed at the memory limit. It passes the conformance suite with
// the capabilities it declares (Capabilities), in a fraction of a second.
//
// Drivers live on a Host: a driver closed without destroying leaves its
// sandboxes running on the host for the next driver's Reconcile, as a
// restarted server would find them (Close(ctx, false) is also how a test
// makes a driver's process die: nothing of it runs on). Faults make creates, restores, claims
// and commands fail, and Sandbox.Kill stops a sandbox as a crash or the
// out-of-memory killer would, so callers can test their error paths.
//
// Where it differs from a real driver: commands are interpreted (no real
// processes, so no /proc, pipes or background jobs); a background process
// restored from a checkpoint resumes at the command it was running, which
// starts again (exact for cat, not for a half-done sleep); archives are
// refused where they would extract through any link (the agent allows
// links that stay inside the target); users have a plain permission model
// (owner and other bits of the directory written or the file read; the
// user owns /workspace and /home/user), no groups; terminals echo and
// translate line ends but draw nothing (no job control, no screen); network
// policies are only recorded; Stats are made up from what the sandbox holds
// (memory: a base plus its files).
package fake

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// Options configure a Host.
type Options struct {
	// Network lets Spec.Networked sandboxes be created (their policy is
	// only recorded); without it they are refused with ErrNoNetwork, as
	// on a host without a network configuration.
	Network bool
}

// Faults make a host's operations fail. A nil function never fails; a
// function returning an error fails the operation with it before anything
// is done.
type Faults struct {
	Create    func(runtime.Spec) error
	Restore   func(dir string) error
	Configure func(id string, c runtime.Claim) error
	Exec      func(id string, r runtime.ExecRequest) error
}

// Host is the machine fake drivers run sandboxes on.
type Host struct {
	opts Options

	mu     sync.Mutex
	faults Faults
	live   map[string]*Sandbox // every sandbox not yet stopped
	counts Counts
}

// Counts are the host's operations so far.
type Counts struct {
	Creates, Restores, Destroys, Checkpoints int
}

// NewHost returns an empty host.
func NewHost(o Options) *Host {
	return &Host{opts: o, live: map[string]*Sandbox{}}
}

// NewDriver returns a driver on h.
func (h *Host) NewDriver() *Driver {
	return &Driver{h: h, sandboxes: map[string]*Sandbox{}}
}

// SetFaults replaces the host's faults.
func (h *Host) SetFaults(f Faults) {
	h.mu.Lock()
	h.faults = f
	h.mu.Unlock()
}

func (h *Host) getFaults() Faults {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.faults
}

// Running lists the ids of the sandboxes running on the host, whichever
// driver holds them (or none): a test's leak check.
func (h *Host) Running() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, 0, len(h.live))
	for id := range h.live {
		out = append(out, id)
	}
	return out
}

// Counts returns the host's operation counts.
func (h *Host) Counts() Counts {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts
}

func (h *Host) forget(id string) {
	h.mu.Lock()
	delete(h.live, id)
	h.mu.Unlock()
}

// Driver is a fake runtime.Driver.
type Driver struct {
	h *Host

	mu        sync.Mutex
	sandboxes map[string]*Sandbox
	closed    bool
}

var _ runtime.Driver = (*Driver)(nil)

// ErrClosed is returned by a closed driver's Create and Restore.
var ErrClosed = errors.New("fake: driver closed")

// Name implements runtime.Driver.
func (d *Driver) Name() string { return "fake" }

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "f" + hex.EncodeToString(b)
}

// Create implements runtime.Driver. The rootfs must be an existing
// directory (its contents are not read: every sandbox starts from the same
// small tree).
func (d *Driver) Create(ctx context.Context, s runtime.Spec) (runtime.Sandbox, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := d.usable(); err != nil {
		return nil, err
	}
	if f := d.h.getFaults().Create; f != nil {
		if err := f(s); err != nil {
			return nil, err
		}
	}
	if err := checkRootfs(s.Rootfs); err != nil {
		return nil, err
	}
	if s.Networked && !d.h.opts.Network {
		return nil, fmt.Errorf("%w (the fake host was made without Options.Network)", runtime.ErrNoNetwork)
	}
	sb := newSandbox(d, state{
		Template: s.Template, Rootfs: s.Rootfs, Resources: s.Resources, Labels: copyMap(s.Labels),
		Networked: s.Networked, Tree: baseTree(), NextPID: 100,
	})
	d.h.mu.Lock()
	d.h.counts.Creates++
	d.h.mu.Unlock()
	d.add(sb)
	return sb, nil
}

func checkRootfs(p string) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("fake: rootfs %q must be absolute", p)
	}
	if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
		return fmt.Errorf("fake: rootfs %s is not a directory: %v", p, err)
	}
	return nil
}

func (d *Driver) usable() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	return nil
}

func (d *Driver) add(sb *Sandbox) {
	d.mu.Lock()
	d.sandboxes[sb.id] = sb
	d.mu.Unlock()
	d.h.mu.Lock()
	d.h.live[sb.id] = sb
	d.h.mu.Unlock()
}

func (d *Driver) forget(id string) {
	d.mu.Lock()
	delete(d.sandboxes, id)
	d.mu.Unlock()
}

// Restore implements runtime.Driver.
func (d *Driver) Restore(ctx context.Context, dir, rootfs string, labels map[string]string) (runtime.Sandbox, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := d.usable(); err != nil {
		return nil, err
	}
	if f := d.h.getFaults().Restore; f != nil {
		if err := f(dir); err != nil {
			return nil, err
		}
	}
	st, err := readSnapshot(dir)
	if err != nil {
		return nil, err
	}
	if rootfs != "" {
		if err := checkRootfs(rootfs); err != nil {
			return nil, err
		}
		st.Rootfs = rootfs
	}
	if labels != nil {
		st.Labels = copyMap(labels)
	}
	sb := newSandbox(d, st)
	d.h.mu.Lock()
	d.h.counts.Restores++
	d.h.mu.Unlock()
	d.add(sb)
	sb.resumeProcesses()
	return sb, nil
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

// List implements runtime.Driver.
func (d *Driver) List(ctx context.Context) ([]runtime.Info, error) {
	d.mu.Lock()
	all := make([]*Sandbox, 0, len(d.sandboxes))
	for _, sb := range d.sandboxes {
		all = append(all, sb)
	}
	d.mu.Unlock()
	out := make([]runtime.Info, 0, len(all))
	for _, sb := range all {
		out = append(out, sb.Info())
	}
	return out, nil
}

// Reconcile implements runtime.Driver: the host's sandboxes that no driver
// holds are adopted when keep says so (never pooled ones, whose pool is
// gone) and destroyed otherwise.
func (d *Driver) Reconcile(ctx context.Context, keep func(runtime.Info) bool) (runtime.ReconcileReport, error) {
	var rep runtime.ReconcileReport
	d.h.mu.Lock()
	var orphans []*Sandbox
	for _, sb := range d.h.live {
		if sb.driver() == nil {
			orphans = append(orphans, sb)
		}
	}
	d.h.mu.Unlock()
	for _, sb := range orphans {
		info := sb.Info()
		if !info.Pooled && info.State == runtime.StateRunning && keep != nil && keep(info) {
			sb.setDriver(d)
			d.add(sb)
			rep.Adopted = append(rep.Adopted, sb.id)
			continue
		}
		_ = sb.Destroy(ctx)
		rep.Destroyed = append(rep.Destroyed, sb.id)
	}
	return rep, nil
}

// Close implements runtime.Driver.
func (d *Driver) Close(ctx context.Context, destroy bool) error {
	d.mu.Lock()
	d.closed = true
	all := make([]*Sandbox, 0, len(d.sandboxes))
	for _, sb := range d.sandboxes {
		all = append(all, sb)
	}
	d.sandboxes = map[string]*Sandbox{}
	d.mu.Unlock()
	var errs []error
	for _, sb := range all {
		if destroy {
			errs = append(errs, sb.Destroy(ctx))
		} else {
			sb.setDriver(nil)
		}
	}
	return errors.Join(errs...)
}

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Host returns the host the driver runs on.
func (d *Driver) Host() *Host { return d.h }
