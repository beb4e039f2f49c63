package fake

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// state is everything a sandbox is, and what a checkpoint saves.
type state struct {
	Template  string
	Rootfs    string
	Resources runtime.Resources
	Labels    map[string]string
	Env       map[string]string
	Hostname  string
	Networked bool
	Network   string // the claim's mode of a networked sandbox
	CreatedAt time.Time
	Tree      *tree
	Procs     []procState
	NextPID   int
}

// Sandbox is a fake runtime.Sandbox.
type Sandbox struct {
	h  *Host
	id string

	mu      sync.Mutex
	drv     *Driver // nil while no driver holds it
	st      state
	stopErr error
	done    chan struct{}
	// long ends the calls that may run for ever (attach, watch) when the
	// sandbox stops.
	long       context.Context
	cancelLong context.CancelFunc
	kills      map[int]func(sig int) // running commands by id
	nextKill   int
	cpuNanos   uint64
	oomKills   uint64
	procs      map[int]*process
	procOrder  []int
	watchers   map[*watcher]struct{}
	destroyed  bool
}

var (
	_ runtime.Sandbox     = (*Sandbox)(nil)
	_ runtime.DiskReader  = (*Sandbox)(nil)
	_ runtime.UsageReader = (*Sandbox)(nil)
	_ runtime.Processes   = (*Sandbox)(nil)
	_ runtime.FileOps     = (*Sandbox)(nil)
)

func newSandbox(d *Driver, st state) *Sandbox {
	if st.CreatedAt.IsZero() {
		st.CreatedAt = time.Now().UTC()
	}
	sb := &Sandbox{
		h: d.h, id: newID(), drv: d, st: st, done: make(chan struct{}),
		kills: map[int]func(int){}, procs: map[int]*process{}, watchers: map[*watcher]struct{}{},
	}
	sb.st.CreatedAt = time.Now().UTC()
	sb.long, sb.cancelLong = context.WithCancel(context.Background())
	return sb
}

func (sb *Sandbox) driver() *Driver {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.drv
}

func (sb *Sandbox) setDriver(d *Driver) {
	sb.mu.Lock()
	sb.drv = d
	sb.mu.Unlock()
}

// ID implements runtime.Sandbox.
func (sb *Sandbox) ID() string { return sb.id }

// Info implements runtime.Sandbox.
func (sb *Sandbox) Info() runtime.Info {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	state := runtime.StateRunning
	if sb.stopErr != nil {
		state = runtime.StateStopped
	}
	network := runtime.NetworkOff
	if sb.st.Networked {
		network = sb.st.Network
		if network == "" {
			network = "deny"
		}
	}
	return runtime.Info{
		ID: sb.id, Template: sb.st.Template, Resources: sb.st.Resources, Labels: copyMap(sb.st.Labels),
		State: state, CreatedAt: sb.st.CreatedAt, Pooled: sb.st.Labels["pool"] != "", Network: network,
	}
}

// Done implements runtime.Sandbox.
func (sb *Sandbox) Done() <-chan struct{} { return sb.done }

// Err implements runtime.Sandbox.
func (sb *Sandbox) Err() error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.stopErr
}

// Kill stops the sandbox for reason, as if it crashed (runtime.ErrStopped)
// or the host's out-of-memory killer ended it (runtime.ErrOutOfMemory):
// calls in flight and later ones fail with reason, Done is closed. The
// sandbox stays known to its driver until destroyed, as a real one does.
func (sb *Sandbox) Kill(reason error) {
	if reason == nil {
		reason = runtime.ErrStopped
	}
	sb.stop(reason)
}

// stop ends the sandbox once: every running command and process is killed.
func (sb *Sandbox) stop(reason error) {
	sb.mu.Lock()
	if sb.stopErr != nil {
		sb.mu.Unlock()
		return
	}
	sb.stopErr = reason
	kills := make([]func(int), 0, len(sb.kills))
	for _, k := range sb.kills {
		kills = append(kills, k)
	}
	sb.mu.Unlock()
	sb.cancelLong()
	for _, k := range kills {
		k(int(syscall.SIGKILL))
	}
	close(sb.done)
}

// begin refuses calls to a stopped sandbox.
func (sb *Sandbox) begin() error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.stopErr
}

// Destroy implements runtime.Sandbox.
func (sb *Sandbox) Destroy(ctx context.Context) error {
	sb.stop(runtime.ErrStopped)
	sb.mu.Lock()
	first := !sb.destroyed
	sb.destroyed = true
	d := sb.drv
	sb.mu.Unlock()
	if d != nil {
		d.forget(sb.id)
	}
	sb.h.forget(sb.id)
	if first {
		sb.h.mu.Lock()
		sb.h.counts.Destroys++
		sb.h.mu.Unlock()
	}
	return nil
}

// maxRequest bounds a command with its env, as the agent's frame does.
const maxRequest = wire.MaxFrame - 4096

func checkEnv(env map[string]string) (int, error) {
	n := 0
	for k, v := range env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return 0, fmt.Errorf("%w: environment variable %q: a name must be non-empty without '=' or NUL, a value without NUL", runtime.ErrInvalidRequest, k)
		}
		n += len(k) + len(v) + 2
	}
	return n, nil
}

// Configure implements runtime.Sandbox.
func (sb *Sandbox) Configure(ctx context.Context, c runtime.Claim) error {
	if err := sb.begin(); err != nil {
		return err
	}
	if f := sb.h.getFaults().Configure; f != nil {
		if err := f(sb.id, c); err != nil {
			return err
		}
	}
	n, err := checkEnv(c.Env)
	if err != nil {
		return err
	}
	if n > maxRequest {
		return fmt.Errorf("%w: the claim's environment is %d bytes, over %d", runtime.ErrInvalidRequest, n, maxRequest)
	}
	sb.mu.Lock()
	networked := sb.st.Networked
	sb.mu.Unlock()
	mode := c.Network
	if mode == "" {
		mode = runtime.NetworkOff
	}
	switch {
	case !networked && mode != runtime.NetworkOff:
		return fmt.Errorf("%w: sandbox %s was started without a network and cannot be given network %q", runtime.ErrInvalidRequest, sb.id, mode)
	case networked && mode == runtime.NetworkOff:
		return fmt.Errorf("%w: sandbox %s has a network interface; network \"off\" needs a sandbox started without one", runtime.ErrInvalidRequest, sb.id)
	case networked && mode != runtime.NetworkRestricted && mode != runtime.NetworkOpen:
		return fmt.Errorf("%w: unknown network mode %q", runtime.ErrInvalidRequest, mode)
	}
	if c.Resources != (runtime.Resources{}) {
		if err := sb.SetResources(c.Resources); err != nil {
			return err
		}
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopErr != nil {
		return sb.stopErr
	}
	sb.st.Env = copyMap(c.Env)
	if networked {
		sb.st.Network = mode
	}
	if c.Hostname != "" {
		sb.st.Hostname = c.Hostname
		_ = sb.writeLocked("/etc/hostname", []byte(c.Hostname+"\n"), 0o644, true, 0)
	}
	if sb.st.Labels == nil {
		sb.st.Labels = map[string]string{}
	}
	delete(sb.st.Labels, "pool")
	maps.Copy(sb.st.Labels, c.Labels)
	return nil
}

// Exec implements runtime.Sandbox with the package's command interpreter.
func (sb *Sandbox) Exec(ctx context.Context, r runtime.ExecRequest) (runtime.ExecResult, error) {
	if err := ctx.Err(); err != nil {
		return runtime.ExecResult{}, err
	}
	if err := sb.begin(); err != nil {
		return runtime.ExecResult{}, err
	}
	sh, cmds, err := sb.prepare(r.Command, r.Env, r.Cwd, r.User)
	if err != nil {
		return runtime.ExecResult{}, err
	}
	if f := sb.h.getFaults().Exec; f != nil {
		if err := f(sb.id, r); err != nil {
			return runtime.ExecResult{}, err
		}
	}
	start := time.Now()
	in := newInbuf(1<<20, true)
	if r.Stdin != nil {
		go func() {
			_, err := io.Copy(in, r.Stdin)
			if err == nil {
				err = io.EOF
			}
			in.closeWrite(err)
		}()
	} else {
		in.closeWrite(io.EOF)
	}
	sh.stdin = in
	sh.stdout, sh.stderr = orDiscard(r.Stdout), orDiscard(r.Stderr)

	k := newKiller(in)
	sh.killed, sh.sig = k.ch, k.signal
	id := sb.track(k.kill)
	defer sb.untrack(id)
	finished := make(chan struct{})
	defer close(finished)
	var timedOut, cancelled bool
	var timeout <-chan time.Time
	if r.Timeout > 0 {
		tm := time.NewTimer(r.Timeout)
		defer tm.Stop()
		timeout = tm.C
	}
	var mu sync.Mutex
	go func() {
		for {
			select {
			case <-finished:
				return
			case <-ctx.Done():
				mu.Lock()
				cancelled = true
				mu.Unlock()
				k.kill(int(syscall.SIGKILL))
				return
			case <-timeout:
				mu.Lock()
				timedOut = true
				mu.Unlock()
				k.kill(int(syscall.SIGKILL))
				return
			case s := <-r.Signals:
				k.kill(int(s))
			}
		}
	}()
	st := sh.run(cmds, 0, nil)
	in.kill(errKilled) // a pump still feeding stdin stops
	dur := time.Since(start)
	sb.mu.Lock()
	sb.cpuNanos += uint64(dur / 100) // a sleeping command costs little
	stopErr := sb.stopErr
	sb.mu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	switch {
	case cancelled:
		return runtime.ExecResult{}, ctx.Err()
	case stopErr != nil:
		return runtime.ExecResult{}, stopErr
	}
	return runtime.ExecResult{
		ExitCode: st.Code, Signal: st.Signal, Duration: dur, TimedOut: timedOut, OOMKilled: st.OOM,
		Blocked: []runtime.BlockedConnection{},
	}, nil
}

// prepare checks a command and makes the shell that runs it.
func (sb *Sandbox) prepare(command string, env map[string]string, cwd, user string) (*shell, []simple, error) {
	if strings.ContainsRune(command, 0) {
		return nil, nil, fmt.Errorf("%w: the command contains a NUL byte", runtime.ErrInvalidRequest)
	}
	n, err := checkEnv(env)
	if err != nil {
		return nil, nil, err
	}
	if n+len(command) > maxRequest {
		return nil, nil, fmt.Errorf("%w: the command and its environment are %d bytes, over %d", runtime.ErrInvalidRequest, n+len(command), maxRequest)
	}
	uid, err := uidOf(user)
	if err != nil {
		return nil, nil, err
	}
	if cwd == "" {
		cwd = "/workspace"
	}
	if err := wire.CheckPath(cwd); err != nil {
		return nil, nil, fmt.Errorf("%w: working directory: %v", runtime.ErrInvalidRequest, err)
	}
	sb.mu.Lock()
	w, err := sb.st.Tree.resolve(cwd, true)
	all := map[string]string{"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
	if user == runtime.UserUser {
		all["HOME"] = "/home/user"
	}
	maps.Copy(all, sb.st.Env)
	sb.mu.Unlock()
	if err != nil || w.n == nil || w.n.Kind != kindDir {
		return nil, nil, fmt.Errorf("%w: working directory %s does not exist or is not a directory", runtime.ErrFileNotFound, cwd)
	}
	maps.Copy(all, env)
	cmds, err := parse(command)
	sh := &shell{sb: sb, cwd: path.Clean(cwd), uid: uid, vars: all}
	if err != nil {
		// The shell's own answer to a script it cannot parse.
		lit := func(ss ...string) []word {
			out := make([]word, len(ss))
			for i, s := range ss {
				out[i] = word{{Lit: s}}
			}
			return out
		}
		cmds = []simple{{Args: lit("printf", "sh: 1: Syntax error: %s\\n", "unterminated quote or redirection"), StdoutTo: "&2"}, {Args: lit("exit", "2")}}
	}
	return sh, cmds, nil
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// track registers a running command's kill function so a stop ends it.
func (sb *Sandbox) track(kill func(int)) int {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	sb.nextKill++
	sb.kills[sb.nextKill] = kill
	if sb.stopErr != nil {
		go kill(int(syscall.SIGKILL))
	}
	return sb.nextKill
}

func (sb *Sandbox) untrack(id int) {
	sb.mu.Lock()
	delete(sb.kills, id)
	sb.mu.Unlock()
}

var errKilled = errors.New("killed")

// killer ends one command: it closes ch once and remembers the signal.
type killer struct {
	once sync.Once
	ch   chan struct{}
	sig  int
	mu   sync.Mutex
	in   *inbuf
}

func newKiller(in *inbuf) *killer { return &killer{ch: make(chan struct{}), in: in} }

func (k *killer) kill(sig int) {
	k.once.Do(func() {
		k.mu.Lock()
		k.sig = sig
		k.mu.Unlock()
		close(k.ch)
		if k.in != nil {
			k.in.kill(errKilled)
		}
	})
}

func (k *killer) signal() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.sig
}

// countOOM records a command the memory limit ended (the `oom` command).
func (sb *Sandbox) countOOM() {
	sb.mu.Lock()
	sb.oomKills++
	sb.mu.Unlock()
}

// Stats implements runtime.Sandbox: limits are the sandbox's resources,
// memory is a base plus what its files hold.
func (sb *Sandbox) Stats(ctx context.Context) (runtime.Stats, error) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopErr != nil {
		return runtime.Stats{}, sb.stopErr
	}
	r := sb.st.Resources
	return runtime.Stats{
		CPUNanos: sb.cpuNanos, MemoryBytes: sb.memoryLocked(), MemoryLimitBytes: uint64(max(r.MemoryBytes, 0)),
		ProcessOOMKills: sb.oomKills, PIDs: uint64(1 + len(sb.kills)), PIDsLimit: uint64(max(r.PIDs, 0)),
		CPUQuotaMicros: int64(r.CPU * 100000), CPUPeriodMicros: 100000, ReadAt: time.Now().UTC(),
	}, nil
}

func (sb *Sandbox) memoryLocked() uint64 { return 8<<20 + uint64(sb.st.Tree.Used) }

// Usage implements runtime.UsageReader.
func (sb *Sandbox) Usage(ctx context.Context) (runtime.Usage, error) {
	st, err := sb.Stats(ctx)
	if err != nil {
		return runtime.Usage{}, err
	}
	return runtime.Usage{CPUNanos: st.CPUNanos, MemoryBytes: st.MemoryBytes, MemoryLimitBytes: st.MemoryLimitBytes}, nil
}

// Disk implements runtime.DiskReader: the bytes its files hold.
func (sb *Sandbox) Disk() (runtime.Disk, error) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopErr != nil {
		return runtime.Disk{}, sb.stopErr
	}
	return runtime.Disk{UsedBytes: uint64(sb.st.Tree.Used), LimitBytes: uint64(max(sb.st.Resources.DiskBytes, 0))}, nil
}

// SetResources implements runtime.Sandbox.
func (sb *Sandbox) SetResources(r runtime.Resources) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopErr != nil {
		return sb.stopErr
	}
	disk := sb.st.Resources.DiskBytes
	if r.DiskBytes != 0 && r.DiskBytes != disk {
		return fmt.Errorf("%w: the disk quota of a running sandbox is fixed (%d MiB)", runtime.ErrInvalidRequest, disk>>20)
	}
	r.DiskBytes = disk
	sb.st.Resources = r
	return nil
}

// procLabel names a process for errors.
func procLabel(pid int) string { return "process " + strconv.Itoa(pid) }
