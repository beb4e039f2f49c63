package gvisor_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/netpolicy"
	"github.com/orkestr-eu/orkestr/internal/netpolicy/nettest"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/gvisor"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

func netEnv(t *testing.T) (*testenv.Env, *nettest.Internet) {
	in := nettest.Start(t)
	env := testenv.NewDriverWith(t, func(c *gvisor.Config) {
		c.Network = testenv.NewNetworkConfig(in.DNS, "allowed.test", "*.allowed.test")
	})
	return env, in
}

// netSandbox starts a python-3.11 sandbox with network mode (off: not
// networked at all).
func netSandbox(t *testing.T, env *testenv.Env, mode string) runtime.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sb, err := env.Driver.Create(ctx, runtime.Spec{Template: "python-3.11", Rootfs: testenv.Rootfs(t, "python-3.11"), Resources: testenv.Small, Networked: mode != runtime.NetworkOff})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Destroy(context.Background()) })
	if err := sb.Configure(ctx, runtime.Claim{Network: mode, Hostname: "sandbox"}); err != nil {
		t.Fatal(err)
	}
	return sb
}

// probeScript connects to each "host:port" argument (names resolved by
// the sandbox's resolver) and prints one line per target: "ok <greeting>"
// or "fail <error>".
const probeScript = `
import socket, sys
for t in sys.argv[1:]:
    h, p = t.rsplit(":", 1)
    try:
        s = socket.create_connection((h, int(p)), timeout=1.5)
        print("ok", s.recv(100).decode().strip())
        s.close()
    except Exception as e:
        print("fail", type(e).__name__, e)
`

func probe(t *testing.T, sb runtime.Sandbox, targets ...string) (map[string]string, execOut) {
	t.Helper()
	out := run(t, sb, runtime.ExecRequest{Command: "python3 -c '" + probeScript + "' " + strings.Join(targets, " ")})
	lines := strings.Split(strings.TrimSpace(out.Stdout), "\n")
	if len(lines) != len(targets) {
		t.Fatalf("probe output %q (stderr %q)", out.Stdout, out.Stderr)
	}
	res := map[string]string{}
	for i, tg := range targets {
		res[tg] = lines[i]
	}
	return res, out
}

func tgt(a fmt.Stringer) string { return fmt.Sprintf("%s:%d", a, nettest.Port) }

func TestNetworkModes(t *testing.T) {
	env, _ := netEnv(t)
	api := nettest.HostListener(t)
	off := netSandbox(t, env, runtime.NetworkOff)
	open := netSandbox(t, env, runtime.NetworkOpen)
	restr := netSandbox(t, env, runtime.NetworkRestricted)

	// off: loopback only.
	ifs := sh(t, off, "cat /proc/net/dev")
	if strings.Contains(ifs, "eth0") {
		t.Errorf("off sandbox has an interface: %s", ifs)
	}
	got, _ := probe(t, off, tgt(nettest.Allowed), fmt.Sprintf("127.0.0.1:%d", api))
	for k, v := range got {
		if !strings.HasPrefix(v, "fail") {
			t.Errorf("off sandbox reached %s: %s", k, v)
		}
	}

	gw := func(sb runtime.Sandbox) string {
		b, err := os.ReadFile(env.StateDir + "/sandboxes/" + sb.ID() + "/resolv.conf")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Fields(string(b))[1]
	}
	never := []string{
		tgt(nettest.Metadata), tgt(nettest.Private), "metadata.test:8080", "private.test:8080",
		fmt.Sprintf("%s:%d", gw(open), api), fmt.Sprintf("%s:%d", gw(restr), api),
		fmt.Sprintf("127.0.0.1:%d", api), fmt.Sprintf("198.18.0.1:%d", api),
	}
	for _, sb := range []runtime.Sandbox{open, restr} {
		res, _ := probe(t, sb, never...)
		for k, v := range res {
			if !strings.HasPrefix(v, "fail") {
				t.Errorf("%s reached %s: %s", sb.Info().Network, k, v)
			}
		}
	}
	// Siblings: the open sandbox listens; the restricted one cannot reach it.
	sh(t, open, `python3 -c 'import socket,os
s=socket.socket(); s.bind(("0.0.0.0",9000)); s.listen(); os.fork() or [s.accept()[0].send(b"hello sib") for _ in range(10)]' >/dev/null 2>&1 &`)
	openIP := strings.TrimSpace(sh(t, open, `python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(("198.51.100.10",80)); print(s.getsockname()[0])'`))
	if res, _ := probe(t, restr, openIP+":9000"); !strings.HasPrefix(res[openIP+":9000"], "fail") {
		t.Errorf("restricted reached its sibling %s: %v", openIP, res)
	}

	// open: everything public, by name and raw address.
	res, out := probe(t, open, "forbidden.test:8080", tgt(nettest.Forbidden), "allowed.test:8080")
	for k, v := range res {
		if !strings.HasPrefix(v, "ok hello") {
			t.Errorf("open did not reach %s: %s", k, v)
		}
	}
	if len(out.Blocked) != 0 {
		t.Errorf("open exec reported blocked connections: %+v", out.Blocked)
	}

	// restricted: allowed names only; a raw IP only after its name.
	res, out = probe(t, restr, tgt(nettest.Forbidden), "forbidden.test:8080", tgt(nettest.Allowed2), "allowed.test:8080", tgt(nettest.Allowed))
	want := map[string]string{
		tgt(nettest.Forbidden): "fail", "forbidden.test:8080": "fail", tgt(nettest.Allowed2): "fail",
		"allowed.test:8080": "ok hello", tgt(nettest.Allowed): "ok hello",
	}
	for k, w := range want {
		if !strings.HasPrefix(res[k], w) {
			t.Errorf("restricted %s: %s, want %s", k, res[k], w)
		}
	}
	blocked := map[string]bool{}
	for _, b := range out.Blocked {
		blocked[fmt.Sprintf("%s:%d", b.Host, b.Port)] = true
	}
	for _, w := range []string{tgt(nettest.Forbidden), "forbidden.test:0", tgt(nettest.Allowed2)} {
		if !blocked[w] {
			t.Errorf("restricted exec did not report %s blocked: %+v", w, out.Blocked)
		}
	}
	// The next exec reports only its own.
	if o := run(t, restr, runtime.ExecRequest{Command: "true"}); len(o.Blocked) != 0 {
		t.Errorf("blocked connections of an earlier exec reported again: %+v", o.Blocked)
	}
	// DNS tunnelling from inside gVisor: TXT and long labels are refused.
	o := run(t, restr, runtime.ExecRequest{Command: `getent hosts ` + strings.Repeat("abcdef0123", 5) + `.allowed.test; echo rc=$?`})
	if !strings.Contains(o.Stdout, "rc=2") {
		t.Errorf("long label resolved: %q", o.Stdout)
	}
}

func TestNetworkClaimMismatch(t *testing.T) {
	env, _ := netEnv(t)
	ctx := testCtx(t, time.Minute)
	off, err := env.Driver.Create(ctx, runtime.Spec{Template: "debian-12", Rootfs: testenv.Rootfs(t, "debian-12"), Resources: testenv.Small})
	if err != nil {
		t.Fatal(err)
	}
	defer off.Destroy(ctx)
	if err := off.Configure(ctx, runtime.Claim{Network: runtime.NetworkOpen}); err == nil {
		t.Error("a sandbox without a network accepted network open")
	}
	on, err := env.Driver.Create(ctx, runtime.Spec{Template: "debian-12", Rootfs: testenv.Rootfs(t, "debian-12"), Resources: testenv.Small, Networked: true})
	if err != nil {
		t.Fatal(err)
	}
	defer on.Destroy(ctx)
	if on.Info().Network != string(netpolicy.ModeDeny) {
		t.Errorf("unclaimed networked sandbox has mode %q", on.Info().Network)
	}
	if err := on.Configure(ctx, runtime.Claim{Network: runtime.NetworkOff}); err == nil {
		t.Error("a networked sandbox accepted network off")
	}
	// Before its claim a networked sandbox reaches nothing.
	o := run(t, on, runtime.ExecRequest{Command: "timeout 3 bash -c 'echo > /dev/tcp/" + nettest.Forbidden.String() + "/8080'; echo rc=$?"})
	if strings.Contains(o.Stdout, "rc=0") {
		t.Errorf("unclaimed sandbox connected: %q", o.Stdout)
	}
}

// TestNetworkCheckpointRestore pauses a restricted sandbox and resumes it
// into a fresh namespace: the policy comes back with it.
func TestNetworkCheckpointRestore(t *testing.T) {
	env, _ := netEnv(t)
	ctx := testCtx(t, 2*time.Minute)
	sb := netSandbox(t, env, runtime.NetworkRestricted)
	sh(t, sb, "echo kept > /workspace/f")
	if res, _ := probe(t, sb, "allowed.test:8080"); !strings.HasPrefix(res["allowed.test:8080"], "ok") {
		t.Fatalf("before checkpoint: %v", res)
	}
	before := sb.(interface{ NetAddr() string }).NetAddr()
	dir := t.TempDir()
	if _, err := sb.Checkpoint(ctx, dir); err != nil {
		t.Fatal(err)
	}
	// Another sandbox takes the freed address block, so the restore gets
	// a different one: gVisor must pick up the new namespace's address.
	netSandbox(t, env, runtime.NetworkOpen)
	rs, err := env.Driver.Restore(ctx, dir, testenv.Rootfs(t, "python-3.11"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Destroy(ctx)
	if after := rs.(interface{ NetAddr() string }).NetAddr(); after == before {
		t.Errorf("restore reused the address %s; the test needs a new one", after)
	}
	if got := rs.Info().Network; got != runtime.NetworkRestricted {
		t.Errorf("restored sandbox has network %q", got)
	}
	if got := sh(t, rs, "cat /workspace/f"); got != "kept\n" {
		t.Errorf("file: %q", got)
	}
	res, out := probe(t, rs, "allowed.test:8080", "forbidden.test:8080", tgt(nettest.Forbidden))
	if !strings.HasPrefix(res["allowed.test:8080"], "ok hello") {
		t.Errorf("restored sandbox cannot reach an allowed name: %v (stderr %s)", res, out.Stderr)
	}
	for _, k := range []string{"forbidden.test:8080", tgt(nettest.Forbidden)} {
		if !strings.HasPrefix(res[k], "fail") {
			t.Errorf("restored sandbox reached %s: %s", k, res[k])
		}
	}
	if len(out.Blocked) == 0 {
		t.Errorf("restored sandbox reports no blocked connections")
	}
}

// TestNetworkLiveCheckpointClones: clones of a live checkpoint of a
// restricted sandbox each get a network of their own (their own address)
// with the source's policy, and the source keeps its network.
func TestNetworkLiveCheckpointClones(t *testing.T) {
	env, _ := netEnv(t)
	ctx := testCtx(t, 2*time.Minute)
	sb := netSandbox(t, env, runtime.NetworkRestricted)
	addr := sb.(interface{ NetAddr() string }).NetAddr()
	dir := t.TempDir()
	if _, err := sb.(runtime.LiveCheckpointer).CheckpointLive(ctx, dir); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{addr: true}
	for i := 0; i < 2; i++ {
		c, err := env.Driver.Restore(ctx, dir, testenv.Rootfs(t, "python-3.11"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Destroy(ctx)
		a := c.(interface{ NetAddr() string }).NetAddr()
		if seen[a] {
			t.Fatalf("clone %d has address %s, already taken", i, a)
		}
		seen[a] = true
		if got := c.Info().Network; got != runtime.NetworkRestricted {
			t.Fatalf("clone %d has network %q", i, got)
		}
		res, _ := probe(t, c, "allowed.test:8080", "forbidden.test:8080")
		if !strings.HasPrefix(res["allowed.test:8080"], "ok hello") || !strings.HasPrefix(res["forbidden.test:8080"], "fail") {
			t.Fatalf("clone %d: %v", i, res)
		}
	}
	// The source still has its own network and policy.
	res, _ := probe(t, sb, "allowed.test:8080", "forbidden.test:8080")
	if !strings.HasPrefix(res["allowed.test:8080"], "ok hello") || !strings.HasPrefix(res["forbidden.test:8080"], "fail") {
		t.Fatalf("source after the live checkpoint: %v", res)
	}
}
