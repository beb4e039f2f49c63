package bench

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// durations collects per-iteration times; report gives their median in ms.
type durations []time.Duration

func (ds *durations) add(d time.Duration) { *ds = append(*ds, d) }

func (ds durations) report(b *testing.B, unit string) { ds.reportQuantile(b, 0.5, unit) }

// reportQuantile reports the q-quantile (nearest rank; the median of an
// even count is the mean of the middle two) in ms.
func (ds durations) reportQuantile(b *testing.B, q float64, unit string) {
	if len(ds) == 0 {
		return
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	n := len(s)
	var m time.Duration
	switch {
	case q == 0.5 && n%2 == 0:
		m = (s[n/2-1] + s[n/2]) / 2
	case q == 0.5:
		m = s[n/2]
	default:
		m = s[min(n-1, int(math.Ceil(q*float64(n)))-1)]
	}
	b.ReportMetric(float64(m)/1e6, unit)
}

type samples []float64

func (s *samples) add(v float64) { *s = append(*s, v) }

func (s samples) median() float64 {
	if len(s) == 0 {
		return 0
	}
	c := slices.Clone(s)
	slices.Sort(c)
	if n := len(c); n%2 == 1 {
		return c[n/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// newID returns a fixed-length container id: runsc matches ids by prefix.
func newID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "rb" + hex.EncodeToString(b)
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// minimalSpec is an OCI spec that runs args on rootfs with the usual
// namespaces and mounts whose mount points the template already has.
func minimalSpec(rootfs string, readonly bool, cgroupsPath string, args ...string) *specs.Spec {
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args: args,
			Env:  []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cwd:  "/",
		},
		Root:     &specs.Root{Path: rootfs, Readonly: readonly},
		Hostname: "bench",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: cgroupsPath,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace},
			},
		},
	}
}

func writeBundle(b *testing.B, dir string, s *specs.Spec) string {
	b.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	j, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), j, 0o600); err != nil {
		b.Fatal(err)
	}
	return dir
}

// runTimed runs cmd with its output appended to logPath and returns how
// long it took; it fails the benchmark with the log's tail on error. A file,
// not a pipe: a detached sandbox keeps its stdio open.
func runTimed(b *testing.B, logPath string, cmd *exec.Cmd) time.Duration {
	b.Helper()
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	t0 := time.Now()
	err = cmd.Run()
	d := time.Since(t0)
	if err != nil {
		b.Fatalf("%s: %v: %s", strings.Join(cmd.Args, " "), err, tailFile(logPath, 5))
	}
	return d
}

func tailFile(path string, n int) string {
	bs, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(bs)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// rawRunsc drives runsc directly in a private root, with the flags our
// driver uses minus the agent channel, and the copy-on-write layer in
// sandbox memory so the shared template is never written.
type rawRunsc struct {
	bin    string
	root   string // runsc --root
	dir    string // bundles, images, log
	rootfs string
	log    string
}

func newRawRunsc(b *testing.B) *rawRunsc {
	b.Helper()
	testenv.RequireRoot(b)
	root, err := os.MkdirTemp("/run", "orkb-") // short: runsc limits path lengths
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	rs := &rawRunsc{bin: testenv.Runsc(b), root: root, dir: dir, rootfs: testenv.Rootfs(b, templateName), log: filepath.Join(dir, "runsc.log")}
	b.Cleanup(func() { rs.cleanup(b) })
	return rs
}

func (rs *rawRunsc) command(args ...string) *exec.Cmd {
	return exec.Command(rs.bin, append([]string{
		"--root", rs.root, "--platform=systrap", "--network=none", "--overlay2=root:memory",
	}, args...)...)
}

func (rs *rawRunsc) bundle(b *testing.B, args ...string) string {
	return writeBundle(b, filepath.Join(rs.dir, "bundle-"+randHex(4)), minimalSpec(rs.rootfs, false, "", args...))
}

func (rs *rawRunsc) imageDir(b *testing.B) string {
	d, err := os.MkdirTemp(rs.dir, "image-")
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// runTrue runs the bundle to exit; runsc deletes the container itself.
func (rs *rawRunsc) runTrue(b *testing.B, bundle string) time.Duration {
	return runTimed(b, rs.log, rs.command("run", "--bundle", bundle, newID()))
}

func (rs *rawRunsc) start(b *testing.B, bundle string) (string, time.Duration) {
	id := newID()
	return id, runTimed(b, rs.log, rs.command("run", "--detach", "--bundle", bundle, id))
}

func (rs *rawRunsc) exec(b *testing.B, id string) time.Duration {
	return runTimed(b, rs.log, rs.command("exec", id, "/bin/true"))
}

func (rs *rawRunsc) state(b *testing.B, id string) time.Duration {
	return runTimed(b, rs.log, rs.command("state", id))
}

func (rs *rawRunsc) checkpoint(b *testing.B, id, img string) time.Duration {
	return runTimed(b, rs.log, rs.command("checkpoint", "--image-path", img, id))
}

func (rs *rawRunsc) restore(b *testing.B, bundle, img string) (string, time.Duration) {
	id := newID()
	return id, runTimed(b, rs.log, rs.command("restore", "--detach", "--image-path", img, "--bundle", bundle, id))
}

func (rs *rawRunsc) delete(b *testing.B, id string) time.Duration {
	return runTimed(b, rs.log, rs.command("delete", "--force", id))
}

// cleanup deletes whatever containers are left (and says so), detaches the
// empty network namespace runsc keeps mounted under its root, and fails the
// benchmark if any process still mentions the root.
func (rs *rawRunsc) cleanup(b *testing.B) {
	out, _ := exec.Command(rs.bin, "--root", rs.root, "list", "--quiet").Output()
	for _, id := range strings.Fields(string(out)) {
		b.Errorf("runsc container %s left behind; deleting it", id)
		_ = exec.Command(rs.bin, "--root", rs.root, "delete", "--force", id).Run()
	}
	for _, mp := range testenv.MountsUnder(rs.root) {
		_ = unix.Unmount(mp, unix.MNT_DETACH)
	}
	waitGone(b, rs.root)
	if m := testenv.MountsUnder(rs.root); len(m) > 0 {
		b.Errorf("mounts left under %s: %v", rs.root, m)
	}
	if err := os.RemoveAll(rs.root); err != nil {
		b.Errorf("remove %s: %v", rs.root, err)
	}
}

// waitGone fails the benchmark if processes mentioning s outlive a short
// grace period (runsc's sandbox and gofer exit asynchronously after delete).
func waitGone(b *testing.B, s string) {
	var procs []string
	for range 100 {
		if procs = testenv.ProcessesMentioning(s); len(procs) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.Errorf("processes left behind: %v", procs)
}

// runcEnv drives Debian's runc in a private root and cgroup parent.
type runcEnv struct {
	bin      string
	root     string
	dir      string
	rootfs   string
	cgParent string
	log      string
}

func newRunc(b *testing.B) *runcEnv {
	b.Helper()
	testenv.RequireRoot(b)
	bin, err := exec.LookPath("runc")
	if err != nil {
		b.Skip("runc is not installed (apt-get install -y runc)")
	}
	root, err := os.MkdirTemp("/run", "orkc-")
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	rc := &runcEnv{
		bin: bin, root: root, dir: dir, rootfs: testenv.Rootfs(b, templateName),
		cgParent: "/orkestr-bench-" + randHex(4), log: filepath.Join(dir, "runc.log"),
	}
	b.Cleanup(func() { rc.cleanup(b) })
	return rc
}

func (rc *runcEnv) bundle(b *testing.B, args ...string) string {
	return writeBundle(b, filepath.Join(rc.dir, "bundle"), minimalSpec(rc.rootfs, true, rc.cgParent+"/runc", args...))
}

func (rc *runcEnv) run(b *testing.B, bundle string) time.Duration {
	return runTimed(b, rc.log, exec.Command(rc.bin, "--root", rc.root, "run", "--bundle", bundle, newID()))
}

func (rc *runcEnv) cleanup(b *testing.B) {
	out, _ := exec.Command(rc.bin, "--root", rc.root, "list", "--quiet").Output()
	for _, id := range strings.Fields(string(out)) {
		b.Errorf("runc container %s left behind; deleting it", id)
		_ = exec.Command(rc.bin, "--root", rc.root, "delete", "--force", id).Run()
	}
	if err := removeCgroupEverywhere(rc.cgParent); err != nil {
		b.Errorf("runc cgroups: %v", err)
	}
	if err := os.RemoveAll(rc.root); err != nil {
		b.Errorf("remove %s: %v", rc.root, err)
	}
}

// newDriver is testenv.NewDriver, whose cleanup also removes the driver's
// cgroup parent from the hierarchies orkestr does not manage (blkio,
// cpuset, devices, freezer, systemd): runsc creates it there for every
// sandbox and nothing else removes it. A sandbox group left there is a
// leak and fails the benchmark.
func newDriver(b *testing.B) *testenv.Env {
	b.Helper()
	var parent string
	// Registered before testenv's cleanup, so it runs after it.
	b.Cleanup(func() {
		if parent != "" {
			if err := removeCgroupEverywhere(parent); err != nil {
				b.Errorf("driver cgroups: %v", err)
			}
		}
	})
	env := testenv.NewDriver(b)
	parent = env.CgroupParent
	return env
}

// removeCgroupEverywhere removes path from every cgroup hierarchy (runc
// creates its parents in all of them, not only the ones orkestr uses). A
// child group still present there is a leak and reported as an error.
func removeCgroupEverywhere(path string) error {
	hs, err := os.ReadDir(cgroupv1.Root)
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hs {
		dir := filepath.Join(cgroupv1.Root, h.Name(), path)
		ents, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		for _, e := range ents {
			if e.IsDir() {
				errs = append(errs, errors.New("leaked cgroup "+filepath.Join(dir, e.Name())))
				_ = os.Remove(filepath.Join(dir, e.Name()))
			}
		}
		if err := os.Remove(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// memory of one sandbox's cgroup.
type memory struct {
	PssKiB, RssKiB uint64
	WorkingSet     uint64
	Procs          int
}

// sandboxMemory sums PSS and RSS of the processes in the sandbox's memory
// cgroup and reads the cgroup's working set.
func sandboxMemory(parent, id string) (memory, error) {
	var m memory
	g := cgroupv1.Group(filepath.Join(parent, id))
	procs, err := os.ReadFile(filepath.Join(cgroupv1.Root, "memory", string(g), "cgroup.procs"))
	if err != nil {
		return m, err
	}
	for _, f := range strings.Fields(string(procs)) {
		kv := readKV(filepath.Join("/proc", f, "smaps_rollup"))
		m.PssKiB += kv["Pss:"]
		m.RssKiB += kv["Rss:"]
		m.Procs++
	}
	st, err := g.Read()
	if err != nil {
		return m, err
	}
	m.WorkingSet = st.MemoryWorkingSet
	return m, nil
}

// readKV reads "key value [unit]" lines; unreadable files give an empty map.
func readKV(path string) map[string]uint64 {
	out := map[string]uint64{}
	bs, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	sc := bufio.NewScanner(bytes.NewReader(bs))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
			out[f[0]] = v
		}
	}
	return out
}

func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
