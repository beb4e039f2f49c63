// Package testenv gives tests real runtimes: it finds runsc and a template,
// builds the agent, makes a gVisor driver in a private state directory and
// cgroup parent, and fails the test if anything is left behind afterwards.
package testenv

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/netpolicy"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
	"github.com/orkestr-eu/orkestr/internal/runtime/gvisor"
	"github.com/orkestr-eu/orkestr/internal/template"
)

// RepoRoot is the module's root directory.
func RepoRoot() string {
	_, file, _, _ := goruntime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// RequireRoot fails the test unless it runs as root: sandboxes need it.
// Under -short (`make test-unit`, the fast tier) the test is skipped instead:
// that tier runs without root, sandboxes or PostgreSQL; `make test` runs it.
func RequireRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: this test starts real gVisor sandboxes (run by `make test`)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("this test starts real gVisor sandboxes and must run as root (use `make test`)")
	}
}

// Runsc returns the runsc binary: $ORKESTR_RUNSC or bin/runsc.
func Runsc(t testing.TB) string {
	t.Helper()
	p := os.Getenv("ORKESTR_RUNSC")
	if p == "" {
		p = filepath.Join(RepoRoot(), "bin", "runsc")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("runsc not found at %s: run `make setup`", p)
	}
	return p
}

var (
	agentOnce sync.Once
	agentPath string
	agentErr  error
)

// AgentBinary builds orkestr-agent from this checkout once per test binary,
// so tests never run a stale agent.
func AgentBinary(t testing.TB) string {
	t.Helper()
	agentOnce.Do(func() {
		// One fixed place per checkout, replaced atomically: test binaries
		// of several packages build it at once, and nothing piles up in
		// /tmp. Checkouts of different versions (git worktrees) must not
		// share it: a host and an agent of different wire versions refuse
		// each other.
		sum := sha256.Sum256([]byte(RepoRoot()))
		dir := filepath.Join(os.TempDir(), "orkestr-test-agent-"+hex.EncodeToString(sum[:6]))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			agentErr = err
			return
		}
		tmp := filepath.Join(dir, "orkestr-agent."+strconv.Itoa(os.Getpid()))
		agentPath = filepath.Join(dir, "orkestr-agent")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", tmp, "./cmd/orkestr-agent")
		cmd.Dir = RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			agentErr = err
			agentPath = string(out)
			return
		}
		if err := os.Rename(tmp, agentPath); err != nil {
			agentErr = err
		}
	})
	if agentErr != nil {
		t.Fatalf("build agent: %v: %s", agentErr, agentPath)
	}
	return agentPath
}

// TemplateDir is $ORKESTR_TEMPLATE_DIR or the default.
func TemplateDir() string { return template.DirFromEnv() }

// Rootfs returns a built template's rootfs or fails.
func Rootfs(t testing.TB, name string) string {
	t.Helper()
	p, err := template.Store{Dir: TemplateDir()}.Rootfs(name)
	if err != nil {
		t.Fatalf("%v (run `make setup`)", err)
	}
	return p
}

// Small is the resources of the default small size.
var Small = runtime.Resources{CPU: 0.5, MemoryBytes: 512 << 20, PIDs: 512}

// Env is one test's private runtime.
type Env struct {
	Driver       *gvisor.Driver
	StateDir     string
	CgroupParent string
	Config       gvisor.Config
}

// LogLevel is the level of a test's server and driver log on stderr:
// warn, or ORKESTR_TEST_LOG_LEVEL (debug, info, warn, error) to see more
// of what a failing test's server did.
func LogLevel() slog.Level {
	var l slog.Level = slog.LevelWarn
	if v := os.Getenv("ORKESTR_TEST_LOG_LEVEL"); v != "" {
		_ = l.UnmarshalText([]byte(v))
	}
	return l
}

// NewDriver returns a reconciled gVisor driver that is closed (destroying
// its sandboxes) and checked for leaks when the test ends.
func NewDriver(t testing.TB) *Env {
	t.Helper()
	return NewDriverWith(t, nil)
}

// NewNetworkConfig is a network configuration for tests: a random
// instance (so parallel test binaries never share state), the given DNS
// upstream and allow-list.
func NewNetworkConfig(upstream string, allow ...string) *netpolicy.Config {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return &netpolicy.Config{Instance: "t" + hex.EncodeToString(b), Upstreams: []string{upstream}, AllowNames: allow}
}

// NewDriverWith is NewDriver with a change to the driver's configuration
// (e.g. a Network) applied first.
func NewDriverWith(t testing.TB, change func(*gvisor.Config)) *Env {
	t.Helper()
	RequireRoot(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	// Found before the state directory is made: a missing runsc fails the
	// test without leaving an empty directory behind.
	runsc, agent := Runsc(t), AgentBinary(t)
	// Short: runsc and Unix sockets put limits on path lengths.
	state, err := os.MkdirTemp("/run", "orkt-")
	if err != nil {
		t.Fatal(err)
	}
	// Registered first, so it runs last: also when the driver fails to
	// start below (a runsc that refuses its flags left the directory).
	t.Cleanup(func() { _ = os.RemoveAll(state) })
	cfg := gvisor.Config{
		Runsc:        runsc,
		AgentBinary:  agent,
		StateDir:     state,
		CgroupParent: "/orkestr-test-" + hex.EncodeToString(b),
		Log:          slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: LogLevel()})),
	}
	if change != nil {
		change(&cfg)
	}
	d, err := gvisor.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Reconcile(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	e := &Env{Driver: d, StateDir: state, CgroupParent: cfg.CgroupParent, Config: cfg}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := d.Close(ctx, true); err != nil {
			t.Errorf("close driver: %v", err)
		}
		e.AssertClean(t)
		_ = cgroupv1.Group(cfg.CgroupParent).Remove()
		_ = os.RemoveAll(state)
	})
	return e
}

// Reopen makes a second driver on the same state, as a restarted server
// would.
func (e *Env) Reopen(t testing.TB) *gvisor.Driver {
	t.Helper()
	d, err := gvisor.New(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// AssertClean fails the test if any sandbox resource of this env remains:
// runsc processes, cgroups, mounts, sandbox directories.
func (e *Env) AssertClean(t testing.TB) {
	t.Helper()
	if procs := ProcessesMentioning(e.StateDir); len(procs) > 0 {
		t.Errorf("leaked processes: %v", procs)
	}
	if kids := cgroupv1.Group(e.CgroupParent).Children(); len(kids) > 0 {
		t.Errorf("leaked cgroups: %v", kids)
	}
	if mounts := MountsUnder(e.StateDir); len(mounts) > 0 {
		t.Errorf("leaked mounts: %v", mounts)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.StateDir, "sandboxes")); len(ents) > 0 {
		t.Errorf("leaked sandbox directories: %d", len(ents))
	}
	if e.Config.Network != nil {
		if left := netpolicy.Leftovers(e.Config.Network.Instance); len(left) > 0 {
			t.Errorf("leaked network state: %v", left)
		}
	}
}

// ProcessesMentioning lists processes whose command line contains s.
func ProcessesMentioning(s string) []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	self := os.Getpid()
	for _, e := range ents {
		pid := e.Name()
		if pid == "self" || pid[0] < '0' || pid[0] > '9' || pid == itoa(self) {
			continue
		}
		b, err := os.ReadFile("/proc/" + pid + "/cmdline")
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, s) {
			out = append(out, pid+": "+trim(cmd, 120))
		}
	}
	return out
}

// MountsUnder lists mount points below dir.
func MountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

func itoa(i int) string { return strconv.Itoa(i) }

func trim(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// handedOut holds the addresses FreePort gave this process.
var handedOut = struct {
	sync.Mutex
	addrs map[string]bool
}{addrs: map[string]bool{}}

// FreePort returns a loopback address with a port free at the moment,
// never one it returned before in this process: the kernel may give a
// port just closed again to the next listener, and two calls in a row
// (etcd's client and peer ports) then got the same one.
func FreePort(t testing.TB) string {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if !handedOut.addrs[addr] {
			handedOut.addrs[addr] = true
			return addr
		}
	}
	t.Fatal("FreePort: the kernel gave only ports already handed out, 100 times")
	return ""
}
