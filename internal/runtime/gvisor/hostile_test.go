package gvisor_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/gvisor"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

func channelDir(env *testenv.Env, sb runtime.Sandbox) string {
	return filepath.Join(env.StateDir, "sandboxes", sb.ID(), "channel")
}

// TestHostileCannotSeeHost: a process inside sees its own kernel, its own
// processes and its own files, never the host's.
func TestHostileCannotSeeHost(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)

	marker := filepath.Join(t.TempDir(), "host-marker")
	if err := os.WriteFile(marker, []byte("host"), 0o600); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	hostPaths := []string{marker, filepath.Dir(marker), "/work", "/var/lib/orkestr", "/root/go", env.StateDir,
		channelDir(env, sb), exe, testenv.Runsc(t), "/sys/fs/cgroup/memory" + env.CgroupParent}
	for _, p := range hostPaths {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("host path %s does not exist on the host: the check would prove nothing", p)
		}
	}
	cmd := "set --"
	for _, p := range hostPaths {
		cmd += " '" + p + "'"
	}
	cmd += `; for p in "$@"; do test -e "$p" && echo "sees $p"; done; :`
	if out := sh(t, sb, cmd); out != "" {
		t.Errorf("the sandbox sees host paths:\n%s", out)
	}

	// Its own kernel: gVisor's, not the host's.
	hostRel, err := exec.Command("uname", "-r").Output()
	if err != nil {
		t.Fatal(err)
	}
	if rel := sh(t, sb, "uname -r"); rel == string(hostRel) {
		t.Errorf("the sandbox reports the host's kernel %q", rel)
	}
	if h := sh(t, sb, "hostname"); h != "sandbox\n" {
		t.Errorf("hostname %q", h)
	}

	// Only its own processes: the agent as PID 1 and the listing shell.
	ps := listProcs(t, sb)
	if len(ps) > 3 {
		t.Errorf("the sandbox sees %d processes: %v", len(ps), ps)
	}
	for _, p := range ps {
		switch {
		case p.PID == 1 && p.Comm == "orkestr-agent":
		case p.Comm == "sh" && p.PPID == 1:
		default:
			t.Errorf("unexpected process in the sandbox: %v", p)
		}
	}
	cmdlines := sh(t, sb, `for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < $f; echo; done`)
	for _, bad := range []string{"runsc", "gofer", env.StateDir, filepath.Base(exe), "go test"} {
		if strings.Contains(cmdlines, bad) {
			t.Errorf("a command line in the sandbox mentions %q:\n%s", bad, cmdlines)
		}
	}
	if !strings.HasPrefix(cmdlines, "/agent/orkestr-agent") {
		t.Errorf("PID 1 is not the agent: %q", cmdlines)
	}
	// Mount tables do not leak host paths either.
	if mi := sh(t, sb, "cat /proc/self/mountinfo /proc/mounts"); strings.Contains(mi, env.StateDir) || strings.Contains(mi, "/var/lib/orkestr") {
		t.Errorf("mount table shows host paths:\n%s", mi)
	}
	// No network but loopback.
	if out := sh(t, sb, "ls /sys/class/net 2>/dev/null; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '"); strings.TrimSpace(strings.ReplaceAll(out, "lo\n", "")) != "" {
		t.Errorf("network interfaces besides lo: %q", out)
	}
}

// TestHostileAgentChannel: each sandbox reaches only its own channel; a
// stranger with a wrong token, inside or on the host, is turned away and
// the real agent keeps working.
func TestHostileAgentChannel(t *testing.T) {
	env := testenv.NewDriver(t)
	a := newSandbox(t, env)
	b := newSandbox(t, env)

	// The channel dir holds exactly the socket and the token, and the
	// token is this sandbox's.
	if out := sh(t, a, "ls -A /run/agent"); out != wire.SocketName+"\n"+wire.TokenName+"\n" {
		t.Fatalf("/run/agent holds %q", out)
	}
	// Through a command: the files API refuses the agent's own files.
	tokA := sh(t, a, "cat /run/agent/token")
	hostA, _ := os.ReadFile(filepath.Join(channelDir(env, a), wire.TokenName))
	hostB, _ := os.ReadFile(filepath.Join(channelDir(env, b), wire.TokenName))
	if tokA == "" || tokA != string(hostA) || tokA == string(hostB) {
		t.Fatalf("token inside a: %q; host a %q; host b %q", tokA, hostA, hostB)
	}
	// No other socket anywhere, and b's directory is not reachable.
	if out := sh(t, a, "find / -path /proc -prune -o -path /sys -prune -o -type s -print 2>/dev/null; :"); out != "/run/agent/agent.sock\n" {
		t.Errorf("sockets visible in sandbox a: %q", out)
	}
	// Inside a: a second client with a wrong token (the agent binary itself,
	// pointed at a copy of the channel dir) is refused again and again.
	stop := make(chan struct{})
	waitA := bystander(t, a, stop)
	out := run(t, a, runtime.ExecRequest{Command: `set -e
mkdir -p /tmp/fake
echo not-the-token > /tmp/fake/token
ln -sf /run/agent/agent.sock /tmp/fake/agent.sock
timeout 2 /agent/orkestr-agent -v -dir /tmp/fake 2>&1 || true`})
	close(stop)
	runs, fails, lastErr := waitA()
	if !strings.Contains(out.Stdout, "bad token") {
		t.Errorf("the impostor inside was not refused: %q", out.Stdout)
	}
	if strings.Count(out.Stdout, "bad token") < 2 {
		t.Logf("impostor output: %q", out.Stdout)
	}
	if fails > 0 || runs == 0 {
		t.Errorf("sandbox a failed %d of %d commands while the impostor dialed: %v", fails, runs, lastErr)
	}
	// b's socket is not even there to dial from inside a.
	if out := sh(t, a, "test -e "+filepath.Join(channelDir(env, b), wire.SocketName)+" && echo reachable; :"); out != "" {
		t.Errorf("sandbox a reaches sandbox b's socket")
	}

	// On the host: bogus clients are refused with a reason and cut off.
	sock := filepath.Join(channelDir(env, a), wire.SocketName)
	for _, tc := range []struct {
		name, hello, want string
	}{
		{"wrong token", jsonLine(t, wire.Hello{Version: wire.Version, Token: "wrong", PID: 1}), "bad token\n"},
		{"other sandbox's token", jsonLine(t, wire.Hello{Version: wire.Version, Token: string(hostB), PID: 1}), "bad token\n"},
		{"empty token", jsonLine(t, wire.Hello{Version: wire.Version, PID: 1}), "bad token\n"},
		{"wrong version", jsonLine(t, wire.Hello{Version: wire.Version + 1, Token: tokA, PID: 1}), "bad hello\n"},
		{"garbage", "GET / HTTP/1.1\n", "bad hello\n"},
	} {
		conn, err := net.DialTimeout("unix", sock, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: dial: %v", tc.name, err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(conn, tc.hello); err != nil {
			t.Fatalf("%s: write: %v", tc.name, err)
		}
		reply, err := bufio.NewReader(conn).ReadString('\n')
		if reply != tc.want {
			t.Errorf("%s: reply %q (%v), want %q", tc.name, reply, err, tc.want)
		}
		// The host hangs up: nothing else is read.
		rest, err := io.ReadAll(conn)
		if len(rest) != 0 || err != nil {
			t.Errorf("%s: after the refusal got %q, %v", tc.name, rest, err)
		}
		conn.Close()
	}
	// A client that connects and says nothing does not block the real one.
	idle, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	// The real agents still answer on their own channels.
	ctx := testCtx(t, 10*time.Second)
	for _, sb := range []runtime.Sandbox{a, b} {
		if err := gvisor.PingForTest(ctx, sb); err != nil {
			t.Fatalf("ping %s: %v", sb.ID(), err)
		}
	}
	if out := sh(t, a, "cat /run/agent/token"); out != tokA {
		t.Fatalf("a's token changed: %q", out)
	}
	if out := sh(t, a, "echo still a"); out != "still a\n" {
		t.Fatalf("a after the bogus clients: %q", out)
	}
}

func jsonLine(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b) + "\n"
}
