package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"

	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// binDir holds the orkestrd built from this checkout for this test binary;
// TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "orkestr-bench-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

var (
	orkestrdOnce sync.Once
	orkestrdErr  error
)

// orkestrdBinary builds cmd/orkestrd once per test binary, and only when an
// API benchmark runs. Symbols are kept so that perf can name functions.
// $ORKESTR_BENCH_ORKESTRD names another binary instead (to measure an
// older build against this one).
func orkestrdBinary(b *testing.B) string {
	b.Helper()
	if serverBuild == "base" {
		return baseOrkestrd(b)
	}
	if p := os.Getenv("ORKESTR_BENCH_ORKESTRD"); p != "" {
		return p
	}
	path := filepath.Join(binDir, "orkestrd")
	orkestrdOnce.Do(func() {
		cmd := exec.Command("go", "build", "-trimpath", "-o", path, "./cmd/orkestrd")
		cmd.Dir = testenv.RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			orkestrdErr = fmt.Errorf("%v: %s", err, out)
		}
	})
	if orkestrdErr != nil {
		b.Fatalf("build orkestrd: %v", orkestrdErr)
	}
	return path
}

// baseRev names a git revision whose orkestrd, agent and CLI the pool and
// data benchmarks measure beside this checkout's, in the same invocation
// (sub-benchmarks build=base and build=head).
var baseRev = flag.String("api.base-rev", "", "BenchmarkAPITTIRow, BenchmarkAPIBurstTTI, BenchmarkDataFiles, BenchmarkDataFilesSDKs: also measure orkestrd, the agent and the CLI built from this git revision (build=base) before this checkout's (build=head)")

// serverBuild is "base" while a build=base sub-benchmark runs.
var serverBuild string

// forBuilds runs f once, or with -api.base-rev once per build, base first.
func forBuilds(b *testing.B, f func(b *testing.B)) {
	if *baseRev == "" {
		f(b)
		return
	}
	for _, name := range []string{"base", "head"} {
		b.Run("build="+name, func(b *testing.B) {
			serverBuild = name
			defer func() { serverBuild = "" }()
			f(b)
		})
	}
}

var (
	baseOnce sync.Once
	basePath string
	baseErr  error
)

// baseOrkestrd builds cmd/orkestrd, cmd/orkestr-agent and cmd/orkestr from
// *baseRev (git archive into a temporary directory, removed afterwards)
// once per test binary, and returns orkestrd's path.
func baseOrkestrd(b *testing.B) string {
	b.Helper()
	baseOnce.Do(func() {
		src, err := os.MkdirTemp("", "orkestr-bench-base-")
		if err != nil {
			baseErr = err
			return
		}
		defer os.RemoveAll(src)
		archive := exec.Command("sh", "-c", `git -C "$1" archive --format=tar "$2" | tar -x -C "$3"`, "sh", testenv.RepoRoot(), *baseRev, src)
		if out, err := archive.CombinedOutput(); err != nil {
			baseErr = fmt.Errorf("git archive %s: %v: %s", *baseRev, err, out)
			return
		}
		basePath = filepath.Join(binDir, "orkestrd-base")
		for _, t := range []struct{ out, pkg, ldflags string }{
			{basePath, "./cmd/orkestrd", ""},
			{filepath.Join(binDir, "orkestr-agent-base"), "./cmd/orkestr-agent", "-s -w"},
			{filepath.Join(binDir, "orkestr-base"), "./cmd/orkestr", ""},
		} {
			cmd := exec.Command("go", "build", "-trimpath", "-ldflags="+t.ldflags, "-o", t.out, t.pkg)
			cmd.Dir = src
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				baseErr = fmt.Errorf("build %s at %s: %v: %s", t.pkg, *baseRev, err, out)
				return
			}
		}
	})
	if baseErr != nil {
		b.Fatalf("base build: %v", baseErr)
	}
	return basePath
}

// agentBinary is the agent the server of the running build injects.
func agentBinary(b *testing.B) string {
	if serverBuild == "base" {
		baseOrkestrd(b)
		return filepath.Join(binDir, "orkestr-agent-base")
	}
	return testenv.AgentBinary(b)
}

// benchConfig gives the bootstrap account's plan (team) room for any burst
// the benchmarks make: no rate limit to speak of, 500 sandboxes at once.
const benchConfig = `plans:
  team:
    allowed_sizes: [small, medium, large]
    max_concurrent: 500
    snapshot_cap: 10
    rate_limit: {requests_per_second: 1000000, burst: 1000000}
`

var bootstrapKeyRE = regexp.MustCompile(`ork_[0-9A-Za-z]{43}`)

// apiServer is one `orkestrd serve` started for a benchmark.
type apiServer struct {
	b        *testing.B
	cmd      *exec.Cmd
	exited   chan struct{}
	url      string
	key      string
	dataDir  string
	stateDir string
	template string         // the one template the server has
	cgroup   cgroupv1.Group // the server's cgroup parent, /orkestr/<instance>
	logPath  string
	hc       *http.Client
	client   *orkestr.Client
}

// startServer starts orkestrd with a fresh data directory and a template
// directory of its own holding only template (hard links to the built one:
// the server warms a pool for every template it sees, and other templates'
// pools would fill and refill beside the one measured), with poolSize
// warm small sandboxes of it, and returns once it answers /healthz. At the
// end of the benchmark every sandbox it still lists is terminated through
// the API, the server is stopped with SIGTERM (which destroys the pool),
// and anything left on the host (processes, cgroups, mounts, state) fails
// the benchmark and is removed.
func startServer(b *testing.B, poolSize int, template string, extraArgs ...string) *apiServer {
	b.Helper()
	return startServerWith(b, poolSize, template, "", extraArgs...)
}

// startServerWith is startServer with extraConfig appended to the
// server's YAML config (and extraArgs to its command line).
func startServerWith(b *testing.B, poolSize int, template, extraConfig string, extraArgs ...string) *apiServer {
	b.Helper()
	testenv.RequireRoot(b)
	bin := orkestrdBinary(b)
	agent := agentBinary(b)
	testenv.Rootfs(b, template)
	templateDir := b.TempDir()
	if out, err := exec.Command("cp", "-al", filepath.Join(testenv.TemplateDir(), template), templateDir).CombinedOutput(); err != nil {
		b.Fatalf("linking template %s into the server's template dir (same filesystem as %s needed): %v: %s", template, testenv.TemplateDir(), err, out)
	}
	dataDir := b.TempDir()
	stateDir, err := os.MkdirTemp("/run", "orkba-") // short: socket paths
	if err != nil {
		b.Fatal(err)
	}
	cfgPath := filepath.Join(dataDir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(benchConfig+extraConfig), 0o600); err != nil {
		b.Fatal(err)
	}
	addr := testenv.FreePort(b)
	logDir := b.TempDir()
	logPath := filepath.Join(logDir, "orkestrd.log")
	outPath := filepath.Join(logDir, "orkestrd.out")
	logf, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	outf, err := os.Create(outPath)
	if err != nil {
		b.Fatal(err)
	}
	defer outf.Close()
	cmd := exec.Command(bin, "serve", "--listen", addr, "--data-dir", dataDir, "--state-dir", stateDir,
		"--runsc", testenv.Runsc(b), "--agent", agent, "--template-dir", templateDir,
		"--pool-size="+strconv.Itoa(poolSize), "--config", cfgPath, "--log-level", "info")
	cmd.Args = append(cmd.Args, extraArgs...)
	// stdout carries only the one-time bootstrap key; stderr the log.
	cmd.Stdout, cmd.Stderr = outf, logf
	// If this process dies (a timeout's SIGQUIT), the server stops too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	abs, _ := filepath.Abs(dataDir)
	h := sha256.Sum256([]byte(abs))
	s := &apiServer{
		b: b, cmd: cmd, exited: make(chan struct{}), url: "http://" + addr, template: template,
		dataDir: dataDir, stateDir: stateDir, logPath: logPath,
		cgroup: cgroupv1.Group("/orkestr/" + hex.EncodeToString(h[:])[:12]),
		hc: &http.Client{Transport: &http.Transport{
			MaxIdleConns: 512, MaxIdleConnsPerHost: 512, IdleConnTimeout: time.Minute,
			DialContext: (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		}},
	}
	go func() { _ = cmd.Wait(); close(s.exited) }()
	b.Cleanup(s.shutdown)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := s.health(); err == nil {
			break
		}
		select {
		case <-s.exited:
			b.Fatalf("orkestrd exited at start: %s", tailFile(logPath, 20))
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("orkestrd did not answer /healthz in 2 minutes: %s", tailFile(logPath, 20))
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, _ := os.ReadFile(outPath)
	key := bootstrapKeyRE.Find(out)
	if key == nil {
		b.Fatalf("orkestrd printed no bootstrap key: %q", out)
	}
	s.key = string(key)
	s.client, err = orkestr.NewClient(orkestr.WithAPIKey(s.key), orkestr.WithBaseURL(s.url),
		orkestr.WithHTTPClient(s.hc), orkestr.WithMaxRetries(0))
	if err != nil {
		b.Fatal(err)
	}
	return s
}

type health struct {
	Sandboxes int `json:"sandboxes"`
	Pools     []struct {
		Template string `json:"template"`
		Ready    int    `json:"ready"`
		Target   int    `json:"target"`
	} `json:"pools"`
}

func (s *apiServer) health() (health, error) {
	var h health
	resp, err := s.hc.Get(s.url + "/healthz")
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return h, fmt.Errorf("healthz: %s", resp.Status)
	}
	return h, json.NewDecoder(resp.Body).Decode(&h)
}

// ready is how many warm sandboxes the pool holds.
func (s *apiServer) ready() int {
	h, err := s.health()
	if err != nil {
		s.b.Fatalf("healthz: %v", err)
	}
	for _, p := range h.Pools {
		if p.Template == s.template {
			return p.Ready
		}
	}
	return 0
}

// peakPoolTarget is the highest target the server's log says a pool grew
// to ("warm pool grows with demand"), 0 if none grew. (/healthz reports
// the configured pool_size.)
func (s *apiServer) peakPoolTarget() int {
	b, _ := os.ReadFile(s.logPath)
	peak := 0
	for _, m := range growRE.FindAllSubmatch(b, -1) {
		if n, err := strconv.Atoi(string(m[1])); err == nil && n > peak {
			peak = n
		}
	}
	return peak
}

var growRE = regexp.MustCompile(`warm pool grows with demand.*?\bto"?[=:](\d+)`)

// waitPool waits until the pool holds n warm sandboxes; progress, if not
// nil, is called with the count whenever it changes.
func (s *apiServer) waitPool(n int, timeout time.Duration, progress func(int)) {
	s.b.Helper()
	deadline := time.Now().Add(timeout)
	last := -1
	for {
		r := s.ready()
		if r != last && progress != nil {
			progress(r)
		}
		last = r
		if r >= n {
			return
		}
		if time.Now().After(deadline) {
			s.b.Fatalf("pool holds %d of %d warm sandboxes after %v: %s", r, n, timeout, tailFile(s.logPath, 10))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// create makes a sandbox of the server's template through the SDK.
func (s *apiServer) create(ctx context.Context, size string) *orkestr.Sandbox {
	s.b.Helper()
	sb, err := s.client.CreateSandbox(ctx, orkestr.CreateParams{Template: s.template, Size: size})
	if err != nil {
		s.b.Fatalf("create: %v", err)
	}
	return sb
}

func (s *apiServer) terminate(sb *orkestr.Sandbox) {
	s.b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := sb.Terminate(ctx); err != nil {
		s.b.Fatalf("terminate %s: %v", sb.ID, err)
	}
}

// terminateAll terminates sbs, a few at a time.
func (s *apiServer) terminateAll(sbs []*orkestr.Sandbox) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	sem := make(chan struct{}, 4)
	for _, sb := range sbs {
		if sb == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := sb.Terminate(ctx); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("terminate %s: %w", sb.ID, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// pid is the server's process id.
func (s *apiServer) pid() int { return s.cmd.Process.Pid }

// shutdown terminates what the benchmark left running, stops the server
// and checks that nothing of it is left on the host.
func (s *apiServer) shutdown() {
	b := s.b
	select {
	case <-s.exited:
		b.Errorf("orkestrd exited during the benchmark: %s", tailFile(s.logPath, 20))
	default:
		if s.client != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			var left []*orkestr.Sandbox
			for sb, err := range s.client.ListSandboxes(ctx, orkestr.ListParams{Limit: 200}) {
				if err != nil {
					b.Errorf("list sandboxes: %v", err)
					break
				}
				if sb.Status != orkestr.StatusTerminated {
					left = append(left, sb)
				}
			}
			cancel()
			if len(left) > 0 {
				b.Errorf("%d sandboxes left running by the benchmark; terminating them", len(left))
				if err := s.terminateAll(left); err != nil {
					b.Error(err)
				}
			}
		}
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(time.Minute):
			b.Errorf("orkestrd did not stop within a minute of SIGTERM; killing it")
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	}
	if st := s.cmd.ProcessState; st != nil && !st.Success() {
		b.Errorf("orkestrd: %v: %s", st, tailFile(s.logPath, 10))
	}
	s.hc.CloseIdleConnections()
	s.assertClean()
	_ = os.RemoveAll(s.stateDir)
}

// assertClean fails the benchmark if the server left processes, sandbox
// state, mounts or cgroups, and removes them.
func (s *apiServer) assertClean() {
	b := s.b
	ents, _ := os.ReadDir(filepath.Join(s.stateDir, "sandboxes"))
	if len(ents) > 0 {
		b.Errorf("%d sandbox directories left in %s; deleting them", len(ents), s.stateDir)
		for _, e := range ents {
			_ = exec.Command(testenv.Runsc(b), "--root", filepath.Join(s.stateDir, "runsc"), "delete", "--force", e.Name()).Run()
		}
	}
	waitGone(b, s.stateDir)
	if m := testenv.MountsUnder(s.stateDir); len(m) > 0 {
		b.Errorf("mounts left under %s: %v", s.stateDir, m)
		for _, mp := range m {
			_ = unix.Unmount(mp, unix.MNT_DETACH)
		}
	}
	if kids := s.cgroup.Children(); len(kids) > 0 {
		b.Errorf("cgroups left: %v", kids)
	}
	// Also in the hierarchies orkestr does not manage, where runsc
	// creates the server's cgroup parent and the server leaves it
	// behind (empty) when it stops: removed here, not counted as a leak.
	if err := removeCgroupEverywhere(string(s.cgroup)); err != nil {
		b.Errorf("server cgroups: %v", err)
	}
}

// cpuTime is the user+system CPU time a process has used so far.
func cpuTime(pid int) (time.Duration, error) {
	bs, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces; fields after it are
	// fixed. utime and stime are fields 14 and 15, in clock ticks (100 Hz
	// on Linux).
	rest := string(bs[strings.LastIndexByte(string(bs), ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// hostBusy is the CPU time all cores of the host have spent busy (not
// idle, not waiting for I/O) since boot, from /proc/stat.
func hostBusy() time.Duration {
	bs, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(bs), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i != 3 && i != 4 && i < 8 { // guest time is already in user
			busy += n
		}
	}
	return time.Duration(busy) * 10 * time.Millisecond
}

// perfRecord starts `perf record -g` of args (e.g. "-p", pid or "-a") into
// out for d; wait ends it.
func perfRecord(b *testing.B, out string, d time.Duration, args ...string) (wait func()) {
	b.Helper()
	argv := append([]string{"record", "-F", "999", "-g", "-o", out}, args...)
	argv = append(argv, "--", "sleep", strconv.FormatFloat(d.Seconds(), 'f', 3, 64))
	cmd := exec.Command("perf", argv...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatalf("perf: %v", err)
	}
	return func() {
		if err := cmd.Wait(); err != nil {
			b.Errorf("perf: %v", err)
		}
	}
}

// childrenCPU is the user+system CPU time of this process's children that
// have exited and been waited for (the runsc invocations of a driver).
func childrenCPU() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_CHILDREN, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
