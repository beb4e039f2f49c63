package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/orkestr-eu/orkestr/internal/netpolicy"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// fleetNode is one `orkestrd node` in a network namespace of its own, as a
// separate host would be: its node API is reachable only at its own
// address, and it reaches PostgreSQL through a forwarder on the host side
// of its link.
type fleetNode struct {
	t                 *testing.T
	id, region        string
	ns                string
	hostIP, nodeIP    string
	dataDir, stateDir string
	config            string
	cmd               *exec.Cmd
	log               *os.File
}

// fleet is a control plane (replicas) over nodes, all on one PostgreSQL.
type fleet struct {
	t        *testing.T
	db       string
	token    string
	replicas []*apiServer
	nodes    []*fleetNode
	key      string
	sqldb    *sql.DB
}

// fleetPlan is an operator plan with a small concurrency limit, for the
// over-admission test.
const fleetConfigTail = `
plans:
  fleet3:
    allowed_sizes: [small]
    max_concurrent: 3
    snapshot_cap: 2
    usage_gb_hours_included: 100
    usage_cpu_hours_included: 100
    rate_limit: {requests_per_second: 200, burst: 400}
`

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// forward accepts on addr and copies every connection to target, until
// the test ends.
func forward(t *testing.T, addr, target string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
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

func newFleet(t *testing.T, nodes []struct {
	id, region string
	slots      int
}) *fleet {
	t.Helper()
	return newFleetWith(t, nodes, fleetExtras{})
}

// fleetExtras adds to the generated configs: node(n) is appended to node
// n's config (called once its addresses are known), controlPlane to the
// replicas'.
type fleetExtras struct {
	node         func(n *fleetNode) string
	controlPlane string
}

func newFleetWith(t *testing.T, nodes []struct {
	id, region string
	slots      int
}, extra fleetExtras) *fleet {
	t.Helper()
	testenv.RequireRoot(t)
	f := &fleet{t: t, db: testenv.FreshPostgres(t)}
	tok := make([]byte, 32)
	_, _ = rand.Read(tok)
	f.token = hex.EncodeToString(tok)
	tokFile := filepath.Join(t.TempDir(), "node-token")
	if err := os.WriteFile(tokFile, []byte(f.token), 0o600); err != nil {
		t.Fatal(err)
	}
	pgAddr := strings.SplitN(strings.SplitN(f.db, "@", 2)[1], "/", 2)[0]
	tag := fmt.Sprintf("%d", os.Getpid()%100000)
	for i, nd := range nodes {
		n := &fleetNode{t: t, id: nd.id, region: nd.region, ns: fmt.Sprintf("orkfl%s-%d", tag, i),
			hostIP: fmt.Sprintf("10.251.%d.1", i), nodeIP: fmt.Sprintf("10.251.%d.2", i), dataDir: t.TempDir()}
		hostIf, nsIf := fmt.Sprintf("vfl%s%dh", tag, i), fmt.Sprintf("vfl%s%dn", tag, i)
		run(t, "ip", "netns", "add", n.ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.ns).Run() })
		run(t, "ip", "link", "add", hostIf, "type", "veth", "peer", "name", nsIf)
		t.Cleanup(func() { _ = exec.Command("ip", "link", "del", hostIf).Run() })
		run(t, "ip", "link", "set", nsIf, "netns", n.ns)
		run(t, "ip", "addr", "add", n.hostIP+"/30", "dev", hostIf)
		run(t, "ip", "link", "set", hostIf, "up")
		run(t, "ip", "netns", "exec", n.ns, "ip", "addr", "add", n.nodeIP+"/30", "dev", nsIf)
		run(t, "ip", "netns", "exec", n.ns, "ip", "link", "set", nsIf, "up")
		run(t, "ip", "netns", "exec", n.ns, "ip", "link", "set", "lo", "up")
		forward(t, n.hostIP+":5432", pgAddr)
		dir, err := os.MkdirTemp("/run", "orkfl-")
		if err != nil {
			t.Fatal(err)
		}
		n.stateDir = dir
		nodeDB := strings.Replace(f.db, pgAddr, n.hostIP+":5432", 1)
		n.config = filepath.Join(n.dataDir, "node.yaml")
		cfg := fmt.Sprintf("region: %s\npool_size: 0\nnetwork:\n  enabled: false\ndatabase:\n  url: %q\nfleet:\n  node_token_file: %s\nnode:\n  id: %s\n  listen: %s:7070\n  slots: %d\n  heartbeat_seconds: 1\n",
			nd.region, nodeDB, tokFile, nd.id, n.nodeIP, nd.slots)
		if extra.node != nil {
			cfg += extra.node(n)
		}
		if err := os.WriteFile(n.config, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.cleanup)
		n.start()
		f.nodes = append(f.nodes, n)
	}
	cp := fmt.Sprintf("region: fsn1\nfleet:\n  enabled: true\n  node_token_file: %s\n  heartbeat_timeout_seconds: 5\n%s%s", tokFile, fleetConfigTail, extra.controlPlane)
	for i := 0; i < 2; i++ {
		r := startAPI(t, serverOpts{dbURL: f.db, config: cp, logLevel: "info"})
		if r.cmd.ProcessState != nil {
			t.Fatalf("control plane replica %d did not start:\n%s", i, r.logText())
		}
		if r.key != "" {
			f.key = r.key
		}
		f.replicas = append(f.replicas, r)
	}
	if f.key == "" {
		t.Fatal("no bootstrap key from either replica")
	}
	db, err := sql.Open("pgx", f.db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f.sqldb = db
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range f.nodes {
			t.Logf("--- node %s log (tail):\n%s", n.id, tail(n.logText(), 6000))
		}
		for i, r := range f.replicas {
			t.Logf("--- replica %d log (tail):\n%s", i, tail(r.logText(), 6000))
		}
	})
	f.waitAlive(len(nodes))
	return f
}

func (n *fleetNode) start() {
	n.t.Helper()
	log, err := os.OpenFile(filepath.Join(n.dataDir, "node.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		n.t.Fatal(err)
	}
	n.log = log
	// nsenter, not `ip netns exec`: that one mounts a fresh /sys, without
	// the cgroup hierarchies the runtime needs.
	n.cmd = exec.Command("nsenter", "--net=/run/netns/"+n.ns, "--", filepath.Join(binDir, "orkestrd"), "node", "--config", n.config,
		"--data-dir", n.dataDir, "--state-dir", n.stateDir, "--runsc", testenv.Runsc(n.t),
		"--agent", filepath.Join(binDir, "orkestr-agent"), "--template-dir", testenv.TemplateDir(), "--log-level", "info")
	n.cmd.Stdout, n.cmd.Stderr = log, log
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	// Listening means reconciled: the node opens its API after settling
	// what the store gives it.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		c, err := net.DialTimeout("tcp", n.nodeIP+":7070", time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("node %s does not listen after 2 minutes:\n%s", n.id, n.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill stops the node at once (kill -9): its sandboxes' processes outlive
// it, as they would a crashed daemon.
func (n *fleetNode) kill() {
	_ = n.cmd.Process.Kill()
	_ = n.cmd.Wait()
}

func (n *fleetNode) stop() {
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = n.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		n.kill()
	}
}

func (n *fleetNode) logText() string {
	b, _ := os.ReadFile(filepath.Join(n.dataDir, "node.log"))
	return string(b)
}

// cleanup stops the node and removes every sandbox of its state, then
// checks nothing of it is left.
func (n *fleetNode) cleanup() {
	if n.cmd != nil && n.cmd.ProcessState == nil {
		n.stop()
	}
	ents, _ := os.ReadDir(filepath.Join(n.stateDir, "sandboxes"))
	for _, e := range ents {
		_ = exec.Command(testenv.Runsc(n.t), "--root", filepath.Join(n.stateDir, "runsc"), "delete", "--force", e.Name()).Run()
	}
	for _, mp := range testenv.MountsUnder(n.stateDir) {
		_ = syscall.Unmount(mp, syscall.MNT_DETACH)
	}
	_ = netpolicy.Cleanup(context.Background(), node.Instance(n.dataDir))
	// The instance's cgroup parent, which a killed server leaves behind.
	_ = cgroupv1.Group("/orkestr/" + node.Instance(n.dataDir)).Remove()
	if p := testenv.ProcessesMentioning(n.stateDir); len(p) > 0 {
		n.t.Errorf("node %s left processes: %v", n.id, p)
	}
	if m := testenv.MountsUnder(n.stateDir); len(m) > 0 {
		n.t.Errorf("node %s left mounts: %v", n.id, m)
	}
	_ = os.RemoveAll(n.stateDir)
	if n.log != nil {
		n.log.Close()
	}
}

// waitAlive waits until the regions list counts want live nodes.
func (f *fleet) waitAlive(want int) {
	f.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		r := f.replicas[0].do("GET", "/v1/regions", f.key, nil)
		alive := 0
		if r.status == 200 {
			for _, reg := range r.json(f.t)["data"].([]any) {
				alive += int(reg.(map[string]any)["nodes_alive"].(float64))
			}
		}
		if alive == want {
			return
		}
		if time.Now().After(deadline) {
			var logs strings.Builder
			for _, n := range f.nodes {
				fmt.Fprintf(&logs, "--- node %s:\n%s\n", n.id, n.logText())
			}
			f.t.Fatalf("%d of %d nodes alive after 2 minutes: %s\n%s", alive, want, r.body, logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// nodeOf is the node the store says runs (or holds) a sandbox.
func (f *fleet) nodeOf(id string) string {
	f.t.Helper()
	var n string
	if err := f.sqldb.QueryRow("SELECT node FROM sandboxes WHERE id = $1", id).Scan(&n); err != nil {
		f.t.Fatalf("node of %s: %v", id, err)
	}
	return n
}

func (f *fleet) node(id string) *fleetNode {
	for _, n := range f.nodes {
		if n.id == id {
			return n
		}
	}
	f.t.Fatalf("no node %s", id)
	return nil
}

// waitStatus waits for a sandbox's status (and reason, if given).
func (f *fleet) waitStatus(s *apiServer, key, id, status, reason string, within time.Duration) map[string]any {
	f.t.Helper()
	deadline := time.Now().Add(within)
	for {
		r := s.do("GET", "/v1/sandboxes/"+id, key, nil)
		if r.status == 200 {
			sb := r.json(f.t)
			er, _ := sb["error_reason"].(string)
			if sb["status"] == status && (reason == "" || strings.HasPrefix(er, reason)) {
				return sb
			}
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("sandbox %s not %s (%s) within %v: %d %s", id, status, reason, within, r.status, r.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestFleet runs a real fleet on this machine: three nodes in their own
// network namespaces, two regions, two control-plane replicas, one
// PostgreSQL.
func TestFleet(t *testing.T) {
	f := newFleet(t, []struct {
		id, region string
		slots      int
	}{{"n1", "fsn1", 3}, {"n2", "fsn1", 3}, {"n3", "nbg1", 2}})
	a, b := f.replicas[0], f.replicas[1]
	key := f.key

	t.Run("regions", func(t *testing.T) {
		r := b.do("GET", "/v1/regions", key, nil)
		if r.status != 200 || !strings.Contains(string(r.body), `"name":"fsn1"`) || !strings.Contains(string(r.body), `"name":"nbg1"`) || !strings.Contains(string(r.body), `"default":true`) {
			t.Fatalf("regions: %d %s", r.status, r.body)
		}
		if r := a.do("POST", "/v1/sandboxes", key, map[string]any{"template": "debian-12", "region": "mars1"}); r.status != 400 || r.errCode() != "unknown_region" {
			t.Fatalf("unknown region: %d %s", r.status, r.body)
		}
	})

	t.Run("placement by region", func(t *testing.T) {
		id := a.create(key, map[string]any{"region": "nbg1"})
		defer a.do("DELETE", "/v1/sandboxes/"+id, key, nil)
		if n := f.nodeOf(id); n != "n3" {
			t.Fatalf("a sandbox of region nbg1 landed on %s", n)
		}
		if sb := b.do("GET", "/v1/sandboxes/"+id, key, nil).json(t); sb["region"] != "nbg1" {
			t.Fatalf("region recorded: %v", sb["region"])
		}
	})

	t.Run("placement by capacity", func(t *testing.T) {
		// fsn1 has 3 + 3 slots: six creates fill both nodes, the seventh
		// finds no room.
		var ids []string
		count := map[string]int{}
		for i := 0; i < 6; i++ {
			s := []*apiServer{a, b}[i%2]
			id := s.create(key, nil)
			ids = append(ids, id)
			count[f.nodeOf(id)]++
		}
		defer func() {
			for _, id := range ids {
				a.do("DELETE", "/v1/sandboxes/"+id, key, nil)
			}
		}()
		if count["n1"] != 3 || count["n2"] != 3 {
			t.Fatalf("six sandboxes over two nodes of three slots: %v", count)
		}
		if r := b.do("POST", "/v1/sandboxes", key, map[string]any{"template": "debian-12"}); r.status != 503 || r.errCode() != "no_capacity" {
			t.Fatalf("a create into a full region: %d %s", r.status, r.body)
		}
	})

	t.Run("calls through either replica to any node", func(t *testing.T) {
		for _, region := range []string{"fsn1", "nbg1"} {
			id := a.create(key, map[string]any{"region": region, "env": map[string]string{"WHO": region}})
			for _, s := range []*apiServer{a, b} {
				r := s.do("POST", "/v1/sandboxes/"+id+"/exec", key, map[string]any{"command": "echo $WHO"})
				if r.status != 200 || r.json(t)["stdout"] != region+"\n" {
					t.Fatalf("exec via %s on %s: %d %s", s.url, region, r.status, r.body)
				}
				req, _ := http.NewRequest("POST", s.url+"/v1/sandboxes/"+id+"/exec/stream", strings.NewReader(`{"command":"for i in 1 2 3; do echo line$i; done"}`))
				req.Header.Set("Authorization", "Bearer "+key)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if !strings.Contains(string(body), "line3") || !strings.Contains(string(body), `"type":"exit"`) {
					t.Fatalf("stream via %s: %s", s.url, body)
				}
			}
			payload := strings.Repeat("fleet-bytes ", 100000)
			if r := a.do("PUT", "/v1/sandboxes/"+id+"/files?path=/workspace/f.txt", key, payload); r.status != 200 {
				t.Fatalf("write: %d %s", r.status, r.body)
			}
			if r := b.do("GET", "/v1/sandboxes/"+id+"/files?path=/workspace/f.txt", key, nil); r.status != 200 || string(r.body) != payload {
				t.Fatalf("read via the other replica: %d (%d bytes)", r.status, len(r.body))
			}
			time.Sleep(2 * time.Second)
			if r := b.do("GET", "/v1/sandboxes/"+id+"/metrics", key, nil); r.status != 200 || r.json(t)["memory"] == nil {
				t.Fatalf("metrics via the other replica: %d %s", r.status, r.body)
			}
			if r := b.do("POST", "/v1/sandboxes/"+id+"/pause", key, nil); r.status != 200 {
				t.Fatalf("pause: %d %s", r.status, r.body)
			}
			if r := a.do("POST", "/v1/sandboxes/"+id+"/resume", key, nil); r.status != 200 {
				t.Fatalf("resume: %d %s", r.status, r.body)
			}
			if r := b.do("GET", "/v1/sandboxes/"+id+"/files?path=/workspace/f.txt", key, nil); r.status != 200 || string(r.body) != payload {
				t.Fatalf("file after pause and resume: %d", r.status)
			}
			if r := b.do("DELETE", "/v1/sandboxes/"+id, key, nil); r.status != 200 {
				t.Fatalf("delete: %d %s", r.status, r.body)
			}
		}
	})

	t.Run("plan concurrency across replicas", func(t *testing.T) {
		k3 := a.newKey("fleet3", "fleet3", "sandboxes:write")
		var mu sync.Mutex
		var made []string
		codes := map[int]int{}
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func(s *apiServer) {
				defer wg.Done()
				r := s.do("POST", "/v1/sandboxes", k3, map[string]any{"template": "debian-12"})
				mu.Lock()
				defer mu.Unlock()
				codes[r.status]++
				if r.status == 201 {
					made = append(made, r.json(t)["id"].(string))
				}
			}([]*apiServer{a, b}[i%2])
		}
		wg.Wait()
		for _, id := range made {
			a.do("DELETE", "/v1/sandboxes/"+id, k3, nil)
		}
		if codes[201] != 3 || codes[402] != 5 {
			t.Fatalf("eight concurrent creates through two replicas on a plan of 3: %v", codes)
		}
	})

	t.Run("node killed during an exec stream", func(t *testing.T) {
		survivor := a.create(key, nil)
		defer a.do("DELETE", "/v1/sandboxes/"+survivor, key, nil)
		var victim string
		for i := 0; victim == ""; i++ {
			if i == 6 {
				t.Fatal("six creates all landed on the survivor's node")
			}
			id := b.create(key, nil)
			if f.nodeOf(id) == f.nodeOf(survivor) {
				defer a.do("DELETE", "/v1/sandboxes/"+id, key, nil)
				continue
			}
			victim = id
		}
		lost := f.node(f.nodeOf(victim))
		var before int
		_ = f.sqldb.QueryRow("SELECT COUNT(*) FROM sandboxes").Scan(&before)
		req, _ := http.NewRequest("POST", a.url+"/v1/sandboxes/"+victim+"/exec/stream", strings.NewReader(`{"command":"while true; do echo tick; sleep 0.2; done"}`))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		if !sc.Scan() || !strings.Contains(sc.Text(), "tick") {
			t.Fatalf("stream did not start: %q", sc.Text())
		}
		killed := time.Now()
		lost.kill()
		ended := make(chan string, 1)
		go func() {
			last := ""
			for sc.Scan() {
				last = sc.Text()
			}
			ended <- last
		}()
		select {
		case last := <-ended:
			if strings.Contains(last, "tick") {
				t.Fatalf("the stream ended without saying why: %q", last)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the exec stream of a killed node did not end")
		}
		resp.Body.Close()
		f.waitStatus(b, key, victim, "error", "node_lost", 5*time.Second+5*time.Second)
		if took := time.Since(killed); took > 12*time.Second {
			t.Errorf("node_lost took %v (heartbeat timeout 5 s + 5 s)", took)
		}
		if r := b.do("POST", "/v1/sandboxes/"+survivor+"/exec", key, map[string]any{"command": "echo alive"}); r.status != 200 {
			t.Fatalf("a sandbox of another node after the loss: %d %s", r.status, r.body)
		}
		var after int
		_ = f.sqldb.QueryRow("SELECT COUNT(*) FROM sandboxes").Scan(&after)
		if after != before {
			t.Fatalf("rows before the loss %d, after %d", before, after)
		}
		// The node comes back: it destroys what the store no longer gives
		// it and takes sandboxes again.
		lost.start()
		f.waitAlive(3)
		deadline := time.Now().Add(30 * time.Second)
		for len(testenv.ProcessesMentioning(lost.stateDir+"/sandboxes/")) > 0 && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		if p := testenv.ProcessesMentioning(lost.stateDir + "/sandboxes/"); len(p) > 0 {
			t.Fatalf("the lost sandbox still runs after its node came back: %v", p)
		}
	})

	t.Run("node restart re-adopts", func(t *testing.T) {
		id := a.create(key, map[string]any{"env": map[string]string{"KEEP": "me"}})
		defer a.do("DELETE", "/v1/sandboxes/"+id, key, nil)
		n := f.node(f.nodeOf(id))
		n.stop()
		n.start()
		f.waitAlive(3)
		r := b.do("POST", "/v1/sandboxes/"+id+"/exec", key, map[string]any{"command": "echo $KEEP"})
		if r.status != 200 || r.json(t)["stdout"] != "me\n" {
			t.Fatalf("exec after the node restarted: %d %s\nsandbox: %s", r.status, r.body, b.do("GET", "/v1/sandboxes/"+id, key, nil).body)
		}
	})

	t.Run("replica killed: the other serves and takes the loops over", func(t *testing.T) {
		holder, other := a, b
		if !strings.Contains(a.logText(), `"held":true`) {
			holder, other = b, a
		}
		_ = holder.cmd.Process.Kill()
		_ = holder.cmd.Wait()
		// A sandbox with a 3 s timeout: only a running deadline loop ends it.
		id := other.create(key, map[string]any{"timeout_seconds": 3})
		f.waitStatus(other, key, id, "terminated", "", 25*time.Second)
		if r := other.do("GET", "/v1/regions", key, nil); r.status != 200 {
			t.Fatalf("regions after a replica died: %d", r.status)
		}
	})
}
