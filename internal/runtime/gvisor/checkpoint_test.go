package gvisor_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// counterLoop counts into /workspace/count, ten times a second, in the
// background of the exec that starts it.
const counterLoop = `i=0; while true; do i=$((i+1)); echo $i > /workspace/count; sleep 0.1; done &`

func readCount(t *testing.T, sb runtime.Sandbox) int {
	t.Helper()
	// The loop's `echo $i > count` truncates before it writes: a read in
	// between sees an empty file, so read until there is a number.
	s := strings.TrimSpace(sh(t, sb, `for i in 1 2 3 4 5 6 7 8 9 10; do c=$(cat /workspace/count); [ -n "$c" ] && break; sleep 0.01; done; echo "$c"`))
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("count %q: %v", s, err)
	}
	return n
}

// waitCountAbove waits until the counter passes n and returns it.
func waitCountAbove(t *testing.T, sb runtime.Sandbox, n int) int {
	t.Helper()
	var c int
	if !eventually(10*time.Second, func() bool { c = readCount(t, sb); return c > n }) {
		t.Fatalf("counter stuck at %d, want > %d", c, n)
	}
	return c
}

// checkpointed makes a sandbox with env, a running counter and files in
// /workspace and /tmp, and checkpoints it. It returns the snapshot and the
// counter's value just before the checkpoint.
func checkpointed(t *testing.T, env *testenv.Env) (runtime.Snapshot, int) {
	t.Helper()
	ctx := testCtx(t, time.Minute)
	sb := newSandbox(t, env)
	if err := sb.Configure(ctx, runtime.Claim{Env: map[string]string{"CLAIM_SECRET": "s3cr3t"}, Labels: map[string]string{"owner": "acct-1"}}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if out := run(t, sb, runtime.ExecRequest{Command: counterLoop}); out.ExitCode != 0 {
		t.Fatalf("start counter: %+v", out)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("a command that leaves a background loop took %v to return", d)
	}
	writeString(t, sb, "/workspace/ws.txt", "in workspace")
	writeString(t, sb, "/tmp/tmp.txt", "in tmpfs")
	sh(t, sb, "echo 'on the root overlay' > /etc/orkestr-note")
	before := waitCountAbove(t, sb, 5)

	dir := t.TempDir()
	id := sb.ID()
	snap, err := sb.Checkpoint(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Bytes <= 0 || snap.Dir != dir || snap.Template != "debian-12" || snap.Resources != testenv.Small || snap.Labels["owner"] != "acct-1" {
		t.Fatalf("snapshot: %+v", snap)
	}
	// The checkpointed sandbox is gone.
	if _, ok := env.Driver.Get(id); ok {
		t.Fatal("driver still has the checkpointed sandbox")
	}
	select {
	case <-sb.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after checkpoint")
	}
	if _, err := sb.Exec(ctx, runtime.ExecRequest{Command: "true"}); !errors.Is(err, runtime.ErrStopped) {
		t.Fatalf("exec on a checkpointed sandbox: got %v, want ErrStopped", err)
	}
	if list, _ := env.Driver.List(ctx); len(list) != 0 {
		t.Fatalf("driver lists %d sandboxes after the checkpoint", len(list))
	}
	return snap, before
}

func restore(t *testing.T, env *testenv.Env, dir string, labels map[string]string) runtime.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sb, err := env.Driver.Restore(ctx, dir, testenv.Rootfs(t, "debian-12"), labels)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Destroy(context.Background()) })
	return sb
}

func TestCheckpointRestore(t *testing.T) {
	env := testenv.NewDriver(t)
	snap, before := checkpointed(t, env)

	start := time.Now()
	sb := restore(t, env, snap.Dir, map[string]string{"restored": "yes"})
	t.Logf("restore took %v (snapshot %d KiB)", time.Since(start), snap.Bytes>>10)
	if got, ok := env.Driver.Get(sb.ID()); !ok || got.ID() != sb.ID() {
		t.Fatal("restored sandbox is not known to the driver")
	}
	if info := sb.Info(); info.State != runtime.StateRunning || info.Labels["restored"] != "yes" || info.Template != "debian-12" {
		t.Fatalf("restored info: %+v", info)
	}

	// Files on every layer survived.
	if got := readString(t, sb, "/workspace/ws.txt"); got != "in workspace" {
		t.Fatalf("/workspace file: %q", got)
	}
	if got := readString(t, sb, "/tmp/tmp.txt"); got != "in tmpfs" {
		t.Fatalf("/tmp file: %q", got)
	}
	if got := readString(t, sb, "/etc/orkestr-note"); got != "on the root overlay\n" {
		t.Fatalf("root overlay file: %q", got)
	}
	// The claim's env survived.
	if out := sh(t, sb, `echo "$CLAIM_SECRET"`); out != "s3cr3t\n" {
		t.Fatalf("env after restore: %q", out)
	}
	// The counter picks up where it was and keeps going.
	c := readCount(t, sb)
	if c < before {
		t.Fatalf("counter went back from %d to %d: the loop was restarted", before, c)
	}
	if c > before+50 {
		t.Fatalf("counter jumped from %d to %d", before, c)
	}
	later := waitCountAbove(t, sb, c+3)
	t.Logf("counter: %d before checkpoint, %d after restore, then %d", before, c, later)
	// One loop, not two.
	if loops := procsNamed(listProcs(t, sb), "sh"); len(loops) != 2 { // the loop and the listing shell
		t.Fatalf("shells after restore: %v", loops)
	}
	// The restored sandbox is fully usable: files, exec, stats.
	writeString(t, sb, "/workspace/after.txt", "after")
	if out := sh(t, sb, "cat /workspace/after.txt"); out != "after" {
		t.Fatalf("after restore: %q", out)
	}
	if st, err := sb.Stats(testCtx(t, 10*time.Second)); err != nil || st.MemoryLimitBytes != uint64(testenv.Small.MemoryBytes) || st.PIDsLimit != uint64(testenv.Small.PIDs) {
		t.Fatalf("stats after restore: %+v %v", st, err)
	}
}

func TestRestoreTwiceGivesIndependentClones(t *testing.T) {
	env := testenv.NewDriver(t)
	snap, before := checkpointed(t, env)

	// Both at once, from the same image.
	var clones [2]runtime.Sandbox
	var errs [2]error
	var wg sync.WaitGroup
	for i := range clones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			clones[i], errs[i] = env.Driver.Restore(testCtx(t, 30*time.Second), snap.Dir, testenv.Rootfs(t, "debian-12"), nil)
		}()
	}
	wg.Wait()
	for _, sb := range clones {
		if sb != nil {
			t.Cleanup(func() { _ = sb.Destroy(context.Background()) })
		}
	}
	if err := errors.Join(errs[:]...); err != nil {
		t.Fatal(err)
	}
	a, b := clones[0], clones[1]
	if a.ID() == b.ID() {
		t.Fatal("two restores share an id")
	}
	// Labels default to the snapshot's.
	if a.Info().Labels["owner"] != "acct-1" {
		t.Fatalf("labels of a restore without labels: %v", a.Info().Labels)
	}
	for _, sb := range []runtime.Sandbox{a, b} {
		if got := readString(t, sb, "/workspace/ws.txt"); got != "in workspace" {
			t.Fatalf("%s: %q", sb.ID(), got)
		}
		if c := readCount(t, sb); c < before {
			t.Fatalf("%s: counter %d < %d", sb.ID(), c, before)
		}
	}
	// Writes in one are not seen by the other, on any layer.
	writeString(t, a, "/workspace/only-a", "a")
	writeString(t, a, "/tmp/only-a", "a")
	sh(t, a, "echo a >> /etc/orkestr-note; rm /workspace/ws.txt")
	writeString(t, b, "/workspace/only-b", "b")
	if out := sh(t, b, "ls /workspace; cat /etc/orkestr-note; test -e /tmp/only-a && echo leak; :"); out != "count\nonly-b\nws.txt\non the root overlay\n" {
		t.Fatalf("clone b sees: %q", out)
	}
	if out := sh(t, a, "ls /workspace"); out != "count\nonly-a\n" {
		t.Fatalf("clone a sees: %q", out)
	}
	// Each clone runs its own counter: stopping it in one leaves the
	// other counting.
	sh(t, a, `for d in /proc/[0-9]*; do read -r l < $d/stat; case "$l" in *"(sh)"*) [ "${d#/proc/}" != "$$" ] && kill ${d#/proc/};; esac; done; :`)
	time.Sleep(300 * time.Millisecond)
	ca := readCount(t, a)
	cb := readCount(t, b)
	time.Sleep(500 * time.Millisecond)
	if got := readCount(t, a); got != ca {
		t.Fatalf("clone a's counter still runs after it was killed: %d -> %d", ca, got)
	}
	waitCountAbove(t, b, cb+2)
	// Destroying one leaves the other running.
	if err := a.Destroy(testCtx(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if out := sh(t, b, "cat /workspace/only-b"); out != "b" {
		t.Fatalf("clone b after a was destroyed: %q", out)
	}
}

// TestRestoreOnAnotherHost restores a snapshot with a second driver (its
// own state directory, as another host has) from a copy of the snapshot
// and a copy of the template at another path: the snapshot names no host
// path of the host that took it.
func TestRestoreOnAnotherHost(t *testing.T) {
	a := testenv.NewDriver(t)
	snap, before := checkpointed(t, a)
	b := testenv.NewDriver(t)

	// Our manifest names neither host A's directories nor its rootfs.
	// (runsc's own image keeps the spec the sandbox was started with, host
	// paths included, as a record; a restore mounts what the new bundle
	// says, which the restore below from other paths shows.)
	rootfs := testenv.Rootfs(t, "debian-12")
	for _, p := range []string{a.StateDir, rootfs} {
		if hits := grepTree(t, snap.Dir, p); len(hits) > 0 {
			for _, h := range hits {
				if !strings.HasPrefix(h, filepath.Join(snap.Dir, "image")+"/") {
					t.Errorf("the snapshot names %s in %s", p, h)
				}
			}
		}
	}
	moved := filepath.Join(t.TempDir(), "elsewhere")
	if out, err := exec.Command("cp", "-a", snap.Dir, moved).CombinedOutput(); err != nil {
		t.Fatalf("copy snapshot: %v %s", err, out)
	}
	if err := os.RemoveAll(snap.Dir); err != nil {
		t.Fatal(err)
	}
	// Host B's copy of the template lives elsewhere.
	otherRootfs := filepath.Join(t.TempDir(), "templates", "debian-12", "rootfs")
	if err := os.MkdirAll(filepath.Dir(otherRootfs), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", rootfs, otherRootfs).CombinedOutput(); err != nil {
		t.Fatalf("copy template: %v %s", err, out)
	}
	if err := os.WriteFile(filepath.Join(otherRootfs, "etc", "host-b"), []byte("b"), 0o644); err != nil {
		t.Fatal(err)
	}
	info, err := b.Driver.ReadSnapshot(moved)
	if err != nil || info.Template != "debian-12" || info.Bytes <= 0 {
		t.Fatalf("ReadSnapshot: %+v %v", info, err)
	}
	sb, err := b.Driver.Restore(testCtx(t, 30*time.Second), moved, otherRootfs, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Destroy(context.Background()) })
	if got := readString(t, sb, "/workspace/ws.txt"); got != "in workspace" {
		t.Fatalf("/workspace file: %q", got)
	}
	if got := readString(t, sb, "/etc/orkestr-note"); got != "on the root overlay\n" {
		t.Fatalf("root overlay file: %q", got)
	}
	if out := sh(t, sb, `echo "$CLAIM_SECRET"`); out != "s3cr3t\n" {
		t.Fatalf("env after restore: %q", out)
	}
	if got := readString(t, sb, "/etc/host-b"); got != "b" {
		t.Fatalf("the restored sandbox does not run on host B's template copy: %q", got)
	}
	c := readCount(t, sb)
	if c < before || c > before+50 {
		t.Fatalf("counter %d after restore on another host, %d before", c, before)
	}
	waitCountAbove(t, sb, c+2)
	// Host B's sandbox uses host B's directories only.
	if procs := testenv.ProcessesMentioning(a.StateDir); len(procs) > 0 {
		t.Fatalf("host A's state directory is used by %v", procs)
	}
}

// TestRestoreRefusesUnknownAgentBuild: a snapshot of an agent build this
// host does not have is refused with a clear error, not restored on a
// different binary.
func TestRestoreRefusesUnknownAgentBuild(t *testing.T) {
	env := testenv.NewDriver(t)
	snap, _ := checkpointed(t, env)
	p := filepath.Join(snap.Dir, "snapshot.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["format"] != float64(1) || m["agent"] == "" || m["rootfs"] != nil || m["agent_dir"] != nil {
		t.Fatalf("snapshot.json: %s", b)
	}
	for _, bad := range []string{"0123456789abcdef", "../../../../etc", ""} {
		m["agent"] = bad
		b, _ = json.Marshal(m)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := env.Driver.Restore(testCtx(t, 30*time.Second), snap.Dir, testenv.Rootfs(t, "debian-12"), nil)
		if err == nil || !strings.Contains(err.Error(), "agent build") {
			t.Fatalf("agent %q: got %v", bad, err)
		}
	}
}

// TestCheckpointLive writes a checkpoint of a running sandbox that keeps
// running and answering at once; clones restored from it start with its
// memory and files and then diverge from it and from each other.
func TestCheckpointLive(t *testing.T) {
	env := testenv.NewDriver(t)
	ctx := testCtx(t, 2*time.Minute)
	sb := newSandbox(t, env)
	if err := sb.Configure(ctx, runtime.Claim{Env: map[string]string{"CLAIM_SECRET": "s3cr3t"}}); err != nil {
		t.Fatal(err)
	}
	if out := run(t, sb, runtime.ExecRequest{Command: counterLoop}); out.ExitCode != 0 {
		t.Fatalf("start counter: %+v", out)
	}
	writeString(t, sb, "/workspace/ws.txt", "parent")
	before := waitCountAbove(t, sb, 5)
	lc, ok := sb.(runtime.LiveCheckpointer)
	if !ok {
		t.Fatal("the gVisor sandbox is not a LiveCheckpointer")
	}
	dir := t.TempDir()
	start := time.Now()
	snap, err := lc.CheckpointLive(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("live checkpoint took %v (%d KiB)", time.Since(start), snap.Bytes>>10)
	if snap.Bytes <= 0 || snap.Template != "debian-12" {
		t.Fatalf("snapshot: %+v", snap)
	}
	// The parent runs on: same counter, calls answered.
	if sb.Err() != nil {
		t.Fatalf("parent stopped: %v", sb.Err())
	}
	if _, ok := env.Driver.Get(sb.ID()); !ok {
		t.Fatal("the driver forgot the parent")
	}
	// The save ran at the platform's quota; the parent is back at its size's.
	sizeQuota(t, sb)
	pc := waitCountAbove(t, sb, before)
	// A second live checkpoint of the same sandbox works too.
	if _, err := lc.CheckpointLive(ctx, t.TempDir()); err != nil {
		t.Fatalf("second live checkpoint: %v", err)
	}
	waitCountAbove(t, sb, pc)

	clones := []runtime.Sandbox{restore(t, env, dir, nil), restore(t, env, dir, nil)}
	for _, c := range clones {
		sizeQuota(t, c) // restored at the platform's quota, then at its size's
	}
	for i, c := range clones {
		if got := readString(t, c, "/workspace/ws.txt"); got != "parent" {
			t.Fatalf("clone %d file: %q", i, got)
		}
		if out := sh(t, c, `echo "$CLAIM_SECRET"`); out != "s3cr3t\n" {
			t.Fatalf("clone %d env: %q", i, out)
		}
		if n := readCount(t, c); n < before {
			t.Fatalf("clone %d counter %d < %d", i, n, before)
		}
		writeString(t, c, "/workspace/ws.txt", "clone "+strconv.Itoa(i))
	}
	for i, c := range clones {
		if got := readString(t, c, "/workspace/ws.txt"); got != "clone "+strconv.Itoa(i) {
			t.Fatalf("clone %d after writes: %q", i, got)
		}
		waitCountAbove(t, c, readCount(t, c))
	}
	if got := readString(t, sb, "/workspace/ws.txt"); got != "parent" {
		t.Fatalf("parent after the clones wrote: %q", got)
	}
}

func grepTree(t *testing.T, dir, needle string) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(needle)) {
			hits = append(hits, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

// TestRestoreClocks: what a sandbox's clocks do across a checkpoint and
// a restore some seconds later (docs/api.md, "What survives a
// pause/resume"): the wall clock jumps forward with the host's, and so
// does the sandbox's uptime (gVisor's monotonic clock follows the host's).
func TestRestoreClocks(t *testing.T) {
	env := testenv.NewDriver(t)
	ctx := testCtx(t, time.Minute)
	sb := newSandbox(t, env)
	read := func(sb runtime.Sandbox) (wall, mono float64) {
		f := strings.Fields(sh(t, sb, `date +%s.%N; cut -d' ' -f1 /proc/uptime`))
		if len(f) != 2 {
			t.Fatalf("clocks: %q", f)
		}
		wall, _ = strconv.ParseFloat(f[0], 64)
		mono, _ = strconv.ParseFloat(f[1], 64)
		return wall, mono
	}
	w0, m0 := read(sb)
	dir := t.TempDir()
	if _, err := sb.Checkpoint(ctx, dir); err != nil {
		t.Fatal(err)
	}
	const gap = 3 * time.Second
	time.Sleep(gap)
	r := restore(t, env, dir, nil)
	w1, m1 := read(r)
	t.Logf("across a %v pause: wall clock +%.2fs, uptime +%.2fs", gap, w1-w0, m1-m0)
	if w1-w0 < gap.Seconds() {
		t.Fatalf("the wall clock moved %.2fs across a %v pause; it follows the host's", w1-w0, gap)
	}
	if m1-m0 < gap.Seconds() {
		t.Fatalf("uptime moved %.2fs across a %v pause (docs/api.md says it jumps too)", m1-m0, gap)
	}
}

// sizeQuota fails t unless sb's CPU quota is its size's.
func sizeQuota(t *testing.T, sb runtime.Sandbox) {
	t.Helper()
	st, err := sb.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := cgroupv1.QuotaMicros(sb.Info().Resources.CPU); st.CPUQuotaMicros != want {
		t.Errorf("sandbox %s: CPU quota %d µs, want its size's %d", sb.ID(), st.CPUQuotaMicros, want)
	}
}
