package gvisor_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/netpolicy"
	"github.com/orkestr-eu/orkestr/internal/netpolicy/nettest"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
	"github.com/orkestr-eu/orkestr/internal/runtime/gvisor"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// crashOwnerEnv carries the driver config to the owner subprocess.
const crashOwnerEnv = "ORKESTR_TEST_CRASH_OWNER"

// TestCrashOwner is not a test of its own: TestKill9ThenReconcile runs the
// test binary again with crashOwnerEnv set, and this function then plays a
// server that owns sandboxes until it is killed with SIGKILL.
func TestCrashOwner(t *testing.T) {
	raw := os.Getenv(crashOwnerEnv)
	if raw == "" {
		t.Skip("helper process for TestKill9ThenReconcile")
	}
	var cfg gvisor.Config
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	d, err := gvisor.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := d.Reconcile(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for i, keep := range []string{"yes", "no"} {
		networked := cfg.Network != nil
		sb, err := d.Create(ctx, runtime.Spec{Template: "debian-12", Rootfs: testenv.Rootfs(t, "debian-12"), Resources: testenv.Small, Networked: networked})
		if err != nil {
			t.Fatal(err)
		}
		claim := runtime.Claim{Env: map[string]string{"OWNER_SECRET": fmt.Sprint("s", i)}, Labels: map[string]string{"keep": keep}}
		if networked {
			claim.Network = []string{runtime.NetworkRestricted, runtime.NetworkOpen}[i]
		}
		if err := sb.Configure(ctx, claim); err != nil {
			t.Fatal(err)
		}
		if networked {
			// The kept one is allowed allowed.test's address before
			// the crash: the next process must keep that.
			if _, err := sb.Exec(ctx, runtime.ExecRequest{Command: "getent hosts allowed.test"}); err != nil {
				t.Fatal(err)
			}
		}
		// A process that must survive the owner's death in the kept sandbox.
		if _, err := sb.Exec(ctx, runtime.ExecRequest{Command: "nohup sh -c 'while true; do date +%s%N >> /workspace/ticks; sleep 0.1; done' >/dev/null 2>&1 &"}); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("SANDBOX %s %s\n", sb.ID(), keep)
	}
	fmt.Println("READY")
	select {} // until SIGKILL
}

func TestKill9ThenReconcile(t *testing.T) { kill9ThenReconcile(t, false) }

// TestKill9ThenReconcileNetwork is TestKill9ThenReconcile with networked
// sandboxes (restricted kept, open dropped): the kept one keeps its
// network and policy, the dropped one's namespace, veth and set elements
// go, and the final close leaves no network state.
func TestKill9ThenReconcileNetwork(t *testing.T) { kill9ThenReconcile(t, true) }

func kill9ThenReconcile(t *testing.T, networked bool) {
	var env *testenv.Env
	if networked {
		env, _ = netEnv(t)
	} else {
		env = testenv.NewDriver(t)
	}
	cfgJSON, _ := json.Marshal(env.Config)
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashOwner$", "-test.v")
	cmd.Env = append(os.Environ(), crashOwnerEnv+"="+string(cfgJSON))
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	sc := bufio.NewScanner(stdout)
	ready := make(chan struct{})
	go func() {
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 3 && f[0] == "SANDBOX" {
				ids[f[1]] = f[2]
			}
			if sc.Text() == "READY" {
				close(ready)
				return
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(90 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("owner process did not start its sandboxes")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if len(testenv.ProcessesMentioning(env.StateDir)) == 0 {
		t.Fatal("expected the sandboxes to outlive their owner")
	}

	var kept, dropped string
	for id, k := range ids {
		if k == "yes" {
			kept = id
		} else {
			dropped = id
		}
	}
	// As if the owner died while it started the kept sandbox: it was
	// still at the platform's boot quota.
	quotaFile := filepath.Join(cgroupv1.Root, "cpu", env.CgroupParent, kept, "cpu.cfs_quota_us")
	if err := os.WriteFile(quotaFile, []byte(strconv.FormatInt(cgroupv1.QuotaMicros(2), 10)), 0o644); err != nil {
		t.Fatal(err)
	}

	// A new process on the same state adopts the sandbox it wants and
	// destroys everything else.
	d2 := env.Reopen(t)
	t.Cleanup(func() { _ = d2.Close(context.Background(), true) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := d2.Reconcile(ctx, func(i runtime.Info) bool { return i.Labels["keep"] == "yes" })
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Adopted, []string{kept}) || !slices.Contains(rep.Destroyed, dropped) {
		t.Fatalf("reconcile report %+v; want %s adopted and %s destroyed", rep, kept, dropped)
	}
	if _, ok := d2.Get(dropped); ok {
		t.Fatal("destroyed sandbox still known")
	}
	sb, ok := d2.Get(kept)
	if !ok {
		t.Fatal("adopted sandbox not known")
	}
	if st, err := sb.Stats(ctx); err != nil || st.CPUQuotaMicros != cgroupv1.QuotaMicros(testenv.Small.CPU) {
		t.Errorf("the adopted sandbox's CPU quota is %d µs (err %v), want its size's %d", st.CPUQuotaMicros, err, cgroupv1.QuotaMicros(testenv.Small.CPU))
	}
	// The adopted sandbox answers, kept its env and its background process.
	var out bytes.Buffer
	res, err := sb.Exec(ctx, runtime.ExecRequest{Command: `a=$(wc -l < /workspace/ticks); sleep 0.5; b=$(wc -l < /workspace/ticks); echo "$OWNER_SECRET $((b>a))"`, Stdout: &out})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("exec in adopted sandbox: %v %+v", err, res)
	}
	if got := strings.TrimSpace(out.String()); got != "s0 1" {
		t.Fatalf("adopted sandbox lost state: %q", got)
	}
	if procs := testenv.ProcessesMentioning(dropped); len(procs) > 0 {
		t.Fatalf("destroyed sandbox left processes: %v", procs)
	}
	if networked {
		for _, l := range netpolicy.Leftovers(env.Config.Network.Instance) {
			if strings.Contains(l, dropped) {
				t.Errorf("network state of the destroyed sandbox left: %s", l)
			}
		}
		// Still restricted, still allowed what it resolved before.
		o := run(t, sb, runtime.ExecRequest{Command: "getent hosts allowed.test >/dev/null || echo NODNS; timeout 5 bash -c 'exec 3<>/dev/tcp/" + nettest.Allowed.String() + "/8080; head -1 <&3'; timeout 3 bash -c 'echo > /dev/tcp/" + nettest.Forbidden.String() + "/8080' && echo LEAK"})
		if !strings.Contains(o.Stdout, "hello") || strings.Contains(o.Stdout, "LEAK") || strings.Contains(o.Stdout, "NODNS") {
			t.Errorf("adopted sandbox's network: %q %q", o.Stdout, o.Stderr)
		}
		if info := sb.Info(); info.Network != runtime.NetworkRestricted {
			t.Errorf("adopted sandbox has network %q", info.Network)
		}
	}
	if err := d2.Close(ctx, true); err != nil {
		t.Fatal(err)
	}
}
