package bench

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/netpolicy"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// benchFleet is a fleet of one for a benchmark: a fresh PostgreSQL
// database, one `orkestrd node` in a network namespace of its own (as
// another host would be: its node API is reachable only at its own address
// over a veth pair, and it reaches PostgreSQL through a forwarder on the
// host side of that link) and one control-plane replica (`orkestrd serve`
// with fleet.enabled) on the host. The setup follows e2e/fleet_test.go;
// the subnet (10.252.0.0/30) and names (orkfb*, vfb*) differ from the e2e
// test's so both can run at once.
type benchFleet struct {
	b        *testing.B
	cp       *apiServer
	ns       string
	nodeURL  string
	node     *exec.Cmd
	exited   chan struct{}
	nodeLog  string
	dataDir  string
	stateDir string
	template string
	nodeAPI  *nodeapi.Client
	db       *sql.DB // the fleet's database, for what the API does not show
}

// noNetworkConfig turns sandbox networking off, on the one-process server
// as on the node (a node in a namespace of its own gets no networked
// pool), so that both keep the same warm pools.
const noNetworkConfig = "network:\n  enabled: false\n"

// startFleet starts the fleet with a node keeping poolSize warm small
// sandboxes of template (the only template it sees) and returns once the
// control plane counts the node alive. Everything is stopped and checked
// at the end of the benchmark: sandboxes, node, replica, namespace, veth,
// forwarder, state directory, mounts, cgroups, database.
func startFleet(b *testing.B, poolSize int, template string) *benchFleet {
	b.Helper()
	testenv.RequireRoot(b)
	db := testenv.FreshPostgres(b)
	bin := orkestrdBinary(b)
	agent := testenv.AgentBinary(b)
	testenv.Rootfs(b, template)
	tok := make([]byte, 32)
	_, _ = rand.Read(tok)
	token := hex.EncodeToString(tok)
	tokFile := filepath.Join(b.TempDir(), "node-token")
	if err := os.WriteFile(tokFile, []byte(token), 0o600); err != nil {
		b.Fatal(err)
	}
	pgAddr := strings.SplitN(strings.SplitN(db, "@", 2)[1], "/", 2)[0]
	sqldb, err := sql.Open("pgx", db)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sqldb.Close() })

	tag := fmt.Sprintf("%d", os.Getpid()%100000)
	f := &benchFleet{b: b, ns: "orkfb" + tag, template: template, exited: make(chan struct{}), db: sqldb}
	hostIP, nodeIP := "10.252.0.1", "10.252.0.2"
	hostIf, nsIf := "vfb"+tag+"h", "vfb"+tag+"n"
	ip := func(args ...string) {
		b.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			b.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	ip("netns", "add", f.ns)
	b.Cleanup(func() {
		if err := exec.Command("ip", "netns", "del", f.ns).Run(); err != nil {
			b.Errorf("ip netns del %s: %v", f.ns, err)
		}
	})
	ip("link", "add", hostIf, "type", "veth", "peer", "name", nsIf)
	// Deleting the namespace deletes its end and with it the pair; this
	// covers a failure before the move.
	b.Cleanup(func() { _ = exec.Command("ip", "link", "del", hostIf).Run() })
	ip("link", "set", nsIf, "netns", f.ns)
	ip("addr", "add", hostIP+"/30", "dev", hostIf)
	ip("link", "set", hostIf, "up")
	ip("-n", f.ns, "addr", "add", nodeIP+"/30", "dev", nsIf)
	ip("-n", f.ns, "link", "set", nsIf, "up")
	ip("-n", f.ns, "link", "set", "lo", "up")
	forwardTCP(b, hostIP+":5432", pgAddr)

	templateDir := b.TempDir()
	if out, err := exec.Command("cp", "-al", filepath.Join(testenv.TemplateDir(), template), templateDir).CombinedOutput(); err != nil {
		b.Fatalf("linking template %s into the node's template dir: %v: %s", template, err, out)
	}
	f.dataDir = b.TempDir()
	dir, err := os.MkdirTemp("/run", "orkfb-")
	if err != nil {
		b.Fatal(err)
	}
	f.stateDir = dir
	nodeDB := strings.Replace(db, pgAddr, hostIP+":5432", 1)
	cfgPath := filepath.Join(f.dataDir, "node.yaml")
	cfg := fmt.Sprintf("region: fsn1\npool_size: %d\n%sdatabase:\n  url: %q\nfleet:\n  node_token_file: %s\nnode:\n  id: bn1\n  listen: %s:7070\n  slots: 32\n",
		poolSize, noNetworkConfig, nodeDB, tokFile, nodeIP)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	f.nodeLog = filepath.Join(b.TempDir(), "node.log")
	logf, err := os.Create(f.nodeLog)
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	// nsenter, not `ip netns exec`: that one mounts a fresh /sys, without
	// the cgroup hierarchies the runtime needs. nsenter execs orkestrd in
	// place, so the pid is the node's.
	f.node = exec.Command("nsenter", "--net=/run/netns/"+f.ns, "--", bin, "node", "--config", cfgPath,
		"--data-dir", f.dataDir, "--state-dir", f.stateDir, "--runsc", testenv.Runsc(b),
		"--agent", agent, "--template-dir", templateDir, "--log-level", "info")
	f.node.Stdout, f.node.Stderr = logf, logf
	f.node.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := f.node.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { _ = f.node.Wait(); close(f.exited) }()
	b.Cleanup(f.stopNode)
	f.nodeURL = "http://" + nodeIP + ":7070"
	if f.nodeAPI, err = nodeapi.Dial(f.nodeURL, token, nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(f.nodeAPI.Close)
	// Listening means reconciled: the node opens its API after settling
	// what the store gives it.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		c, err := net.DialTimeout("tcp", nodeIP+":7070", time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-f.exited:
			b.Fatalf("orkestrd node exited at start: %s", tailFile(f.nodeLog, 20))
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("orkestrd node does not listen after 2 minutes: %s", tailFile(f.nodeLog, 20))
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The replica is started after the node, so that its cleanup (which
	// terminates what the benchmark left through the API) runs before the
	// node stops.
	f.cp = startServerWith(b, 0, template,
		fmt.Sprintf("region: fsn1\nfleet:\n  enabled: true\n  node_token_file: %s\n", tokFile),
		"--database-url", db)
	deadline = time.Now().Add(2 * time.Minute)
	for {
		if f.alive() == 1 {
			return f
		}
		if time.Now().After(deadline) {
			b.Fatalf("the control plane does not count the node alive after 2 minutes: %s", tailFile(f.nodeLog, 20))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// alive is how many nodes the control plane counts alive.
func (f *benchFleet) alive() int {
	req, _ := newRequest("GET", f.cp.url+"/v1/regions", f.cp.key)
	resp, err := f.cp.hc.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var out struct {
		Data []struct {
			NodesAlive int `json:"nodes_alive"`
		} `json:"data"`
	}
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&out) != nil {
		return 0
	}
	n := 0
	for _, r := range out.Data {
		n += r.NodesAlive
	}
	return n
}

// runtimeID is the id the node knows a sandbox by.
func (f *benchFleet) runtimeID(id string) string {
	var rid string
	if err := f.db.QueryRow("SELECT runtime_id FROM sandboxes WHERE id = $1", id).Scan(&rid); err != nil {
		f.b.Fatalf("runtime id of %s: %v", id, err)
	}
	return rid
}

// transactions is how many transactions the fleet's database has ended so
// far (PostgreSQL's statistics, which backends flush about once a second:
// wait 2 s before reading an end count). Each statement outside a
// transaction is one.
func (f *benchFleet) transactions() int64 {
	var n int64
	if err := f.db.QueryRow("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()").Scan(&n); err != nil {
		f.b.Fatalf("pg_stat_database: %v", err)
	}
	return n
}

// idleTransactions is the store's background traffic (heartbeats, the
// lease, the node watch, metering) in transactions per second, over 5 s
// in which the benchmark makes no call.
func (f *benchFleet) idleTransactions() float64 {
	time.Sleep(2 * time.Second) // PostgreSQL's statistics catch up
	x0, t0 := f.transactions(), time.Now()
	time.Sleep(5 * time.Second)
	x1, t1 := f.transactions(), time.Now()
	return float64(x1-x0-1) / t1.Sub(t0).Seconds()
}

// warm is how many warm sandboxes of the template the node holds, from
// its node API.
func (f *benchFleet) warm() int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := f.nodeAPI.Info(ctx)
	if err != nil {
		f.b.Fatalf("node info: %v", err)
	}
	return info.Warm[f.template]
}

// waitPool waits until the node holds n warm sandboxes.
func (f *benchFleet) waitPool(n int, timeout time.Duration) {
	f.b.Helper()
	deadline := time.Now().Add(timeout)
	for f.warm() < n {
		if time.Now().After(deadline) {
			f.b.Fatalf("the node holds %d of %d warm sandboxes after %v: %s", f.warm(), n, timeout, tailFile(f.nodeLog, 10))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stopNode stops the node with SIGTERM (which destroys its pool; claimed
// sandboxes were terminated through the API before) and checks that
// nothing of it is left: processes, sandbox state, mounts, cgroups.
func (f *benchFleet) stopNode() {
	b := f.b
	select {
	case <-f.exited:
		b.Errorf("orkestrd node exited during the benchmark: %s", tailFile(f.nodeLog, 20))
	default:
		_ = f.node.Process.Signal(syscall.SIGTERM)
		select {
		case <-f.exited:
		case <-time.After(time.Minute):
			b.Errorf("orkestrd node did not stop within a minute of SIGTERM; killing it")
			_ = f.node.Process.Kill()
			<-f.exited
		}
	}
	if st := f.node.ProcessState; st != nil && !st.Success() {
		b.Errorf("orkestrd node: %v: %s", st, tailFile(f.nodeLog, 10))
	}
	ents, _ := os.ReadDir(filepath.Join(f.stateDir, "sandboxes"))
	if len(ents) > 0 {
		b.Errorf("%d sandbox directories left in %s; deleting them", len(ents), f.stateDir)
		for _, e := range ents {
			_ = exec.Command(testenv.Runsc(b), "--root", filepath.Join(f.stateDir, "runsc"), "delete", "--force", e.Name()).Run()
		}
	}
	waitGone(b, f.stateDir)
	if m := testenv.MountsUnder(f.stateDir); len(m) > 0 {
		b.Errorf("mounts left under %s: %v", f.stateDir, m)
		for _, mp := range m {
			_ = unix.Unmount(mp, unix.MNT_DETACH)
		}
	}
	_ = netpolicy.Cleanup(context.Background(), node.Instance(f.dataDir))
	// The instance's cgroup parent, which a killed server leaves behind.
	_ = cgroupv1.Group("/orkestr/" + node.Instance(f.dataDir)).Remove()
	cg := cgroupv1.Group("/orkestr/" + node.Instance(f.dataDir))
	if kids := cg.Children(); len(kids) > 0 {
		b.Errorf("node cgroups left: %v", kids)
	}
	if err := removeCgroupEverywhere(string(cg)); err != nil {
		b.Errorf("node cgroups: %v", err)
	}
	_ = os.RemoveAll(f.stateDir)
}

// forwardTCP accepts on addr and copies every connection to target, until
// the benchmark ends.
func forwardTCP(b *testing.B, addr, target string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	b.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	track := func(c net.Conn, on bool) {
		mu.Lock()
		defer mu.Unlock()
		if on {
			conns[c] = true
		} else {
			delete(conns, c)
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				track(c, true)
				defer track(c, false)
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(u, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, u); done <- struct{}{} }()
				<-done
			}()
		}
	}()
}
