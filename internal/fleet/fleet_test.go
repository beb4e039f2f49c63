package fleet_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/orkestr-eu/orkestr/internal/api"
	"github.com/orkestr-eu/orkestr/internal/auth"
	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/fleet"
	"github.com/orkestr-eu/orkestr/internal/lifecycle"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime/fake"
	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
)

const token = "0123456789abcdef0123456789abcdef-test-token"

// fakeNode is a node on the fake driver behind a real node API server.
type fakeNode struct {
	stopOnce func()
	n        *node.Node
	srv      *httptest.Server
	cancel   context.CancelFunc
}

func templates(t *testing.T) string {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "debian-12", "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "debian-12", "template.json"), []byte(`{"name":"debian-12","layout":2}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func startNode(t *testing.T, st store.Store, cfg config.Config, id, region string, slots int) *fakeNode {
	t.Helper()
	return startNodeAt(t, st, cfg, id, region, slots, t.TempDir())
}

// startNodeAt is startNode on a data directory of the caller's (a node
// started again where it ran before).
func startNodeAt(t *testing.T, st store.Store, cfg config.Config, id, region string, slots int, dataDir string) *fakeNode {
	t.Helper()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	fn := &fakeNode{}
	fn.srv = httptest.NewUnstartedServer(nil)
	var once sync.Once
	stopFn := func() { once.Do(fn.stop) }
	n, err := node.New(node.Config{
		DataDir: dataDir, StateDir: filepath.Join(dataDir, "state"), TemplateDir: templates(t), Sizes: node.Resources(cfg.Sizes),
		Log: log, ID: id, Region: region, Address: "http://" + fn.srv.Listener.Addr().String(), Slots: slots, Recorder: st,
	}, fake.NewHost(fake.Options{}).NewDriver())
	if err != nil {
		t.Fatal(err)
	}
	fn.n = n
	if err := lifecycle.Reconcile(context.Background(), st, n, func(r store.Sandbox) bool { return r.Node == id }, fleet.InFlight, time.Now, log); err != nil {
		t.Fatal(err)
	}
	fn.srv.Config.Handler = nodeapi.NewHandler(n, nodeapi.HandlerOptions{Token: token, Log: log})
	fn.srv.Start()
	ctx, cancel := context.WithCancel(context.Background())
	fn.cancel = cancel
	go n.RunMetering(ctx)
	go fleet.Heartbeat(ctx, st, n, 100*time.Millisecond, log)
	t.Cleanup(stopFn)
	fn.stopOnce = stopFn
	return fn
}

// stop is a node dying: no more heartbeats, its API gone.
func (f *fakeNode) stop() {
	f.cancel()
	f.srv.CloseClientConnections()
	f.srv.Close()
	// Its call channels, which the server does not see.
	f.srv.Config.Handler.(*nodeapi.Handler).Close()
	_ = f.n.Close(context.Background(), false) // its sandboxes outlive it, as a crashed daemon's
}

type plane struct {
	t   *testing.T
	url string
	key string
	st  store.Store
}

func (p *plane) do(method, path string, body any) (int, map[string]any) {
	p.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, p.url+path, rd)
	req.Header.Set("Authorization", "Bearer "+p.key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer res.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(res.Body).Decode(&m)
	return res.StatusCode, m
}

func code(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// TestControlPlaneOverNodeAPI: placement, calls over the node API and node
// loss, with real HTTP between a control plane and two fake-driver nodes.
func TestControlPlaneOverNodeAPI(t *testing.T) {
	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "orkestr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() }) // after the nodes' cleanups
	cfg := config.Default()
	cfg.PoolSize = 0
	cfg.Fleet = config.Fleet{Enabled: true, NodeToken: token, HeartbeatTimeoutSeconds: 1}
	cfg.OperatorAccounts = []string{"fleet"}
	startNode(t, st, cfg, "a", "fsn1", 2)
	b := startNode(t, st, cfg, "b", "nbg1", 1)

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	lease := fleet.NewLease(st, "singletons", 3*time.Second, log)
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	go lease.Run(lctx)
	go fleet.WatchNodes(lctx, st, lease, cfg.Fleet.HeartbeatTimeout(), log)
	srv := api.New(api.Options{Store: st, Nodes: fleet.NewNodes(fleet.Options{Store: st, Config: cfg, Log: log}), Config: cfg, Log: log, Leader: lease.Held})
	if err := srv.Start(lctx); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()

	acct := store.Account{ID: "acc_" + ulid.Make().String(), Name: "fleet", Plan: "team", CreatedAt: time.Now().UTC()}
	if err := st.CreateAccount(ctx, acct); err != nil {
		t.Fatal(err)
	}
	key, hash, prefix, _ := auth.NewKey()
	if err := st.CreateKey(ctx, store.APIKey{ID: "key_" + ulid.Make().String(), AccountID: acct.ID, Prefix: prefix, Hash: hash,
		Scopes: []string{store.ScopeSandboxesWrite}, CreatedAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	p := &plane{t: t, url: hs.URL, key: key, st: st}
	time.Sleep(300 * time.Millisecond) // first heartbeats

	nodeOf := func(id string) string {
		sb, err := st.GetSandbox(ctx, acct.ID, id)
		if err != nil {
			t.Fatal(err)
		}
		return sb.Node
	}
	create := func(region string) (int, map[string]any) {
		body := map[string]any{"template": "debian-12"}
		if region != "" {
			body["region"] = region
		}
		return p.do("POST", "/v1/sandboxes", body)
	}

	st1, m := create("nbg1")
	if st1 != 201 || nodeOf(m["id"].(string)) != "b" {
		t.Fatalf("create in nbg1: %d %v", st1, m)
	}
	inB := m["id"].(string)
	if s, m := create("nbg1"); s != 503 || code(m) != "no_capacity" {
		t.Fatalf("second create in a one-slot region: %d %v", s, m)
	}
	if s, m := create("mars1"); s != 400 || code(m) != "unknown_region" {
		t.Fatalf("unknown region: %d %v", s, m)
	}
	s, m := create("")
	if s != 201 || nodeOf(m["id"].(string)) != "a" {
		t.Fatalf("create in the default region: %d %v", s, m)
	}
	inA := m["id"].(string)
	if s, m := p.do("POST", "/v1/sandboxes/"+inA+"/exec", map[string]any{"command": "echo over the node API"}); s != 200 || m["stdout"] != "over the node API\n" {
		t.Fatalf("exec: %d %v", s, m)
	}
	if s, m := p.do("POST", "/v1/sandboxes/"+inA+"/pause", nil); s != 200 {
		t.Fatalf("pause: %d %v", s, m)
	}
	if s, m := p.do("POST", "/v1/sandboxes/"+inA+"/resume", nil); s != 200 {
		t.Fatalf("resume: %d %v", s, m)
	}

	// Node b dies: within its timeout (1 s) plus a sweep its sandbox
	// ends as node_lost; a's sandbox is untouched.
	b.stopOnce()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, m := p.do("GET", "/v1/sandboxes/"+inB, nil)
		if m["status"] == "error" {
			if r, _ := m["error_reason"].(string); !strings.HasPrefix(r, "node_lost") {
				t.Fatalf("reason: %v", m["error_reason"])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox of a dead node still %v", m["status"])
		}
		time.Sleep(50 * time.Millisecond)
	}
	if s, m := create("nbg1"); s != 503 || code(m) != "region_unavailable" {
		t.Fatalf("create in a region whose nodes are down: %d %v", s, m)
	}
	if s, m := p.do("GET", "/v1/regions", nil); s != 200 || !strings.Contains(mustJSON(m), `"state":"unavailable"`) {
		t.Fatalf("regions: %d %v", s, m)
	}
	// The operator's account sees the nodes: a alive with its sandbox (as
	// its next heartbeat says), b lost; any other account does not see the
	// endpoint at all.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		s, m = p.do("GET", "/v1/nodes", nil)
		if s != 200 {
			t.Fatalf("nodes: %d %v", s, m)
		}
		nodes, _ := m["data"].([]any)
		if len(nodes) != 2 {
			t.Fatalf("nodes: %v, want a and b", m)
		}
		bad := ""
		for i, want := range []struct {
			id, region, state string
			slots             float64
		}{{"a", "fsn1", "alive", 2}, {"b", "nbg1", "lost", 1}} {
			n := nodes[i].(map[string]any)
			if n["id"] != want.id || n["region"] != want.region || n["state"] != want.state || n["slots"] != want.slots ||
				!strings.HasPrefix(n["address"].(string), "http://127.0.0.1:") || n["last_heartbeat_at"] == "" || n["memory_mb"].(float64) <= 0 ||
				(want.id == "a" && n["slots_used"] != 1.0) {
				bad += fmt.Sprintf("node %d: %v, want %+v (a: 1 slot used); ", i, n, want)
			}
		}
		if bad == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(bad)
		}
	}
	other := store.Account{ID: "acc_" + ulid.Make().String(), Name: "customer", Plan: "team", CreatedAt: time.Now().UTC()}
	if err := st.CreateAccount(ctx, other); err != nil {
		t.Fatal(err)
	}
	okey, ohash, oprefix, _ := auth.NewKey()
	if err := st.CreateKey(ctx, store.APIKey{ID: "key_" + ulid.Make().String(), AccountID: other.ID, Prefix: oprefix, Hash: ohash,
		Scopes: []string{store.ScopeSandboxesWrite}, CreatedAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	if s, m := (&plane{t: t, url: hs.URL, key: okey, st: st}).do("GET", "/v1/nodes", nil); s != 404 || code(m) != "not_found" {
		t.Fatalf("nodes for an account that is not the operator's: %d %v", s, m)
	}
	if s, m := p.do("POST", "/v1/sandboxes/"+inA+"/exec", map[string]any{"command": "echo still"}); s != 200 || m["stdout"] != "still\n" {
		t.Fatalf("exec on the live node after the other died: %d %v", s, m)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestSweepDropsWhatTheStoreNoLongerGives: a node cut off long enough to
// be declared lost keeps running its sandbox; once the store says the
// sandbox ended, the node's sweep destroys it (and spares the live one).
func TestSweepDropsWhatTheStoreNoLongerGives(t *testing.T) {
	f := newFixture(t, nil)
	ctx, st := f.ctx, f.base
	made := map[string]store.Sandbox{}
	for _, name := range []string{"lost", "kept"} {
		row, err := f.life.Create(ctx, newRow(f.acct), nil, 0, lifecycle.Placement{Template: "debian-12", Size: "small"})
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		made[name] = row
	}
	if _, err := st.LoseNode(ctx, "a", store.EndNodeLost); err != nil {
		t.Fatal(err)
	}
	kept := made["kept"]
	kept.Status, kept.ErrorMessage = store.StatusRunning, ""
	// Only "lost" stays ended: "kept" is given back to the node.
	kept.Version, kept.TerminatedAt = f.row(t, kept.ID).Version, nil
	if _, err := st.UpdateSandbox(ctx, kept, 0); err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go fleet.Sweep(sctx, st, f.fn.n, 50*time.Millisecond, 0, 0, slog.Default())
	deadline := time.Now().Add(10 * time.Second)
	for {
		running := map[string]bool{}
		for _, r := range f.fn.n.Running() {
			running[r.SandboxID] = true
		}
		if !running[made["lost"].ID] {
			if !running[kept.ID] {
				t.Fatal("the sweep destroyed the sandbox the store still gives the node")
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the sweep left the lost sandbox running")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fixture is a node "a" of the fake driver registered in a fresh store,
// an account, and the control plane's lifecycle over them (on st, which
// may wrap the store: base is the store itself).
type fixture struct {
	ctx     context.Context
	base    *sqlstore.Store
	st      store.Store
	cfg     config.Config
	dataDir string
	fn      *fakeNode
	life    *lifecycle.Manager
	acct    store.Account
}

func newFixture(t *testing.T, wrap func(store.Store) store.Store) *fixture {
	t.Helper()
	f := &fixture{ctx: context.Background(), cfg: config.Default(), dataDir: t.TempDir()}
	base, err := sqlstore.OpenSQLite(f.ctx, filepath.Join(t.TempDir(), "orkestr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { base.Close() })
	f.base, f.st = base, base
	if wrap != nil {
		f.st = wrap(base)
	}
	f.cfg.PoolSize = 0
	f.cfg.Fleet = config.Fleet{Enabled: true, NodeToken: token}
	f.fn = startNodeAt(t, base, f.cfg, "a", "fsn1", 4, f.dataDir)
	f.acct = store.Account{ID: "acc_" + ulid.Make().String(), Name: "fixture", Plan: "team", CreatedAt: time.Now().UTC()}
	if err := base.CreateAccount(f.ctx, f.acct); err != nil {
		t.Fatal(err)
	}
	f.waitNode(t)
	f.life = lifecycle.NewManager(f.st, fleet.NewNodes(fleet.Options{Store: f.st, Config: f.cfg}), time.Now, slog.Default())
	return f
}

// waitNode waits until the node's heartbeat has its current address.
func (f *fixture) waitNode(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if list, _ := f.base.ListNodes(f.ctx); len(list) == 1 && list[0].Address == f.fn.srv.URL {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the node never registered its address")
		}
	}
}

// restart stops the node and starts it again on its data directory (on
// another port: the lifecycle is a new replica's, which reads the node
// list once the node's heartbeat has it).
func (f *fixture) restart(t *testing.T) {
	t.Helper()
	f.fn.stop()
	f.fn = startNodeAt(t, f.base, f.cfg, "a", "fsn1", 4, f.dataDir)
	f.waitNode(t)
	f.life = lifecycle.NewManager(f.st, fleet.NewNodes(fleet.Options{Store: f.st, Config: f.cfg}), time.Now, slog.Default())
}

// row returns the account's sandbox as stored.
func (f *fixture) row(t *testing.T, id string) store.Sandbox {
	t.Helper()
	cur, err := f.base.GetSandbox(f.ctx, f.acct.ID, id)
	if err != nil {
		t.Fatal(err)
	}
	return cur
}

func newRow(acct store.Account) store.Sandbox {
	return store.Sandbox{ID: "sbx_" + ulid.Make().String(), AccountID: acct.ID, Template: "debian-12", Size: "small", Network: "off",
		Region: "fsn1", TimeoutSeconds: 600, CreatedAt: time.Now().UTC()}
}

// TestSweepAdoptsARowLeftStarting: a create records its sandbox running
// without waiting for the database's disk; when a crash of the database
// loses that record, the row is back at starting with no runtime, and
// the node's sweep records it running on the sandbox it runs for it
// (rather than destroying the sandbox as nobody's).
func TestSweepAdoptsARowLeftStarting(t *testing.T) {
	f := newFixture(t, nil)
	row, err := f.life.Create(f.ctx, newRow(f.acct), nil, 0, lifecycle.Placement{Template: "debian-12", Size: "small"})
	if err != nil {
		t.Fatal(err)
	}
	rtID := row.RuntimeID
	// The lost record: the row as the create inserted it.
	row.Status, row.RuntimeID, row.ExpiresAt = store.StatusStarting, "", nil
	if row, err = f.base.UpdateSandbox(f.ctx, row, 0); err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(f.ctx)
	defer stop()
	go fleet.Sweep(sctx, f.base, f.fn.n, 20*time.Millisecond, 0, 200*time.Millisecond, slog.Default())
	deadline := time.Now().Add(10 * time.Second)
	for {
		cur := f.row(t, row.ID)
		if cur.Status == store.StatusRunning {
			if cur.RuntimeID != rtID || cur.ExpiresAt == nil || cur.ExpiresAt.Before(time.Now().Add(590*time.Second)) {
				t.Fatalf("adopted row: runtime %q (want %q), expires %v", cur.RuntimeID, rtID, cur.ExpiresAt)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sweep left the row %s", cur.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := f.fn.n.Running(); len(got) != 1 || got[0].RuntimeID != rtID {
		t.Fatalf("the node runs %+v after the adoption, want %s only", got, rtID)
	}
}

// lateStore is a store whose first unflushed write (a create's record of
// its sandbox running) waits until the node's sweep has adopted the row:
// a database that was away for longer than the node waits.
type lateStore struct {
	store.Store
	once  sync.Once
	ready chan struct{} // closed once the row is adopted
}

func (l *lateStore) UpdateSandbox(ctx context.Context, sb store.Sandbox, limit int) (store.Sandbox, error) {
	if store.IsUnflushed(ctx) {
		l.once.Do(func() {
			select {
			case <-l.ready:
			case <-time.After(10 * time.Second): // the test fails on its own
			}
		})
	}
	return l.Store.UpdateSandbox(ctx, sb, limit)
}

// TestCreateKeepsARowItsNodeAdopted: a create whose record of its sandbox
// running comes after the node's sweep adopted the row finds it running
// on its sandbox and answers with it, rather than destroying the sandbox
// as a failed create.
func TestCreateKeepsARowItsNodeAdopted(t *testing.T) {
	late := &lateStore{ready: make(chan struct{})}
	f := newFixture(t, func(s store.Store) store.Store { late.Store = s; return late })
	sctx, stop := context.WithCancel(f.ctx)
	defer stop()
	go fleet.Sweep(sctx, f.base, f.fn.n, 20*time.Millisecond, time.Hour, 0, slog.Default())
	want := newRow(f.acct)
	go func() {
		for {
			if cur, err := f.base.GetSandbox(f.ctx, f.acct.ID, want.ID); err == nil && cur.Status == store.StatusRunning {
				close(late.ready)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	row, err := f.life.Create(f.ctx, want, nil, 0, lifecycle.Placement{Template: "debian-12", Size: "small"})
	if err != nil {
		t.Fatalf("create whose row the node adopted first: %v", err)
	}
	running := f.fn.n.Running()
	if row.Status != store.StatusRunning || len(running) != 1 || running[0].RuntimeID != row.RuntimeID {
		t.Fatalf("create answered %s on %q; the node runs %+v", row.Status, row.RuntimeID, running)
	}
	if cur := f.row(t, row.ID); cur.Version != row.Version {
		t.Fatalf("stored row %+v; the create answered version %d", cur, row.Version)
	}
}

// TestRestartLeavesStartsInFlight: a node restarted within its heartbeat
// timeout still looks alive, so creates and resumes may be placed on it
// while it starts. Its reconciliation leaves those (recent) starts to the
// control planes that placed them, the snapshot of a resume included,
// and settles only older ones; its sweep settles starts abandoned for
// longer than fleet.InFlightFor.
func TestRestartLeavesStartsInFlight(t *testing.T) {
	f := newFixture(t, nil)
	ctx, st := f.ctx, f.base
	pl := lifecycle.Placement{Template: "debian-12", Size: "small"}

	// A paused sandbox whose resume is under way (its row starting).
	resumed, err := f.life.Create(ctx, newRow(f.acct), nil, 0, pl)
	if err != nil {
		t.Fatal(err)
	}
	if resumed, err = f.life.Pause(ctx, resumed, 0); err != nil {
		t.Fatal(err)
	}
	resumed.Status = store.StatusStarting
	if resumed, err = st.UpdateSandbox(ctx, resumed, 0); err != nil {
		t.Fatal(err)
	}
	// A create under way, and one cut off long ago.
	inserted := func(age time.Duration, snapshot string) store.Sandbox {
		row := newRow(f.acct)
		row.Status, row.Node, row.SnapshotDir = store.StatusStarting, "a", snapshot
		row.CreatedAt = time.Now().UTC().Add(-age)
		row.UpdatedAt = row.CreatedAt
		if err := st.CreateSandbox(ctx, row, 0); err != nil {
			t.Fatal(err)
		}
		return row
	}
	creating, cutOff := inserted(0, ""), inserted(10*time.Minute, "")

	f.restart(t)
	if got := f.row(t, creating.ID); got.Status != store.StatusStarting {
		t.Fatalf("a create under way during the restart: %s (%s)", got.Status, got.ErrorMessage)
	}
	if got := f.row(t, cutOff.ID); got.Status != store.StatusError || got.ErrorMessage != store.EndCutOff {
		t.Fatalf("a create cut off 10 minutes before the restart: %s (%s)", got.Status, got.ErrorMessage)
	}
	// The resume's snapshot survived the restart: its control plane's
	// restore finds it.
	cur := f.row(t, resumed.ID)
	if cur.Status != store.StatusStarting {
		t.Fatalf("a resume under way during the restart: %s", cur.Status)
	}
	cur.Status = store.StatusPaused
	if cur, err = st.UpdateSandbox(ctx, cur, 0); err != nil {
		t.Fatal(err)
	}
	if cur, err = f.life.Resume(ctx, cur, 0); err != nil || cur.Status != store.StatusRunning {
		t.Fatalf("resume after the node restarted: %s, %v", cur.Status, err)
	}

	// Starts abandoned for longer than InFlightFor: the sweep settles them.
	lostCreate := inserted(fleet.InFlightFor+time.Minute, "")
	lostResume := inserted(fleet.InFlightFor+time.Minute, "sbx_gone-snapshot")
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go fleet.Sweep(sctx, st, f.fn.n, 20*time.Millisecond, time.Hour, time.Hour, slog.Default())
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, r := f.row(t, lostCreate.ID), f.row(t, lostResume.ID)
		if c.Status == store.StatusError && r.Status == store.StatusPaused {
			if c.ErrorMessage != store.EndCutOff || r.SnapshotDir != "sbx_gone-snapshot" {
				t.Fatalf("abandoned starts settled as %+v and %+v", c, r)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("abandoned starts left as %s and %s", c.Status, r.Status)
		}
	}
	if got := f.row(t, creating.ID); got.Status != store.StatusStarting {
		t.Fatalf("the sweep settled a create under way: %s", got.Status)
	}
}
