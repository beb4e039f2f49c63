package api

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/metering"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/fake"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// fakeTemplates is a template directory whose debian-12 is "built" (a
// record and an empty rootfs): enough for a node on the fake driver.
func fakeTemplates(t *testing.T) string {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "debian-12", "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	rec := `{"name":"debian-12","built_at":"2026-01-01T00:00:00Z","layout":2}`
	if err := os.WriteFile(filepath.Join(dir, "debian-12", "template.json"), []byte(rec), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// newFakeHarness is the API over a real store and a real node whose
// runtime is the in-memory fake driver: the lifecycle without root, in
// seconds (make test-unit).
func newFakeHarness(t *testing.T, host *fake.Host, dataDir, templates string, st *sqlstore.Store) (*harness, *node.Node) {
	t.Helper()
	cfg := testConfig()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	h := &harness{t: t, store: st, clock: &testenv.Clock{}}
	n, err := node.New(node.Config{
		DataDir: dataDir, StateDir: filepath.Join(dataDir, "state"), TemplateDir: templates, Sizes: node.Resources(cfg.Sizes),
		Log: log, Region: cfg.Region, Recorder: st, Metering: metering.Config{Clock: h.clock, FlushEvery: time.Second},
	}, host.NewDriver())
	if err != nil {
		t.Fatal(err)
	}
	h.srv = New(Options{Store: st, Node: n, Config: cfg, Log: log, DataDir: dataDir, Clock: h.clock})
	ctx, cancel := context.WithCancel(context.Background())
	if err := h.srv.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	h.http = httptest.NewServer(h.srv.Handler())
	t.Cleanup(func() {
		h.http.Close()
		cancel()
		h.srv.Wait()
		_ = n.Close(context.Background(), false)
	})
	return h, n
}

func openStore(t *testing.T) *sqlstore.Store {
	st, err := sqlstore.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "orkestr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestLifecycleOnFakeNode runs a sandbox's whole life through the API, the
// node and its contract, on the fake driver.
func TestLifecycleOnFakeNode(t *testing.T) {
	host := fake.NewHost(fake.Options{})
	st := openStore(t)
	h, _ := newFakeHarness(t, host, t.TempDir(), fakeTemplates(t), st)
	_, key := h.account("fake", "team")

	id := h.create(key)
	if out := h.exec(key, id, "echo hello"); out != "hello\n" {
		t.Fatalf("exec: %q", out)
	}
	if r := h.do("PUT", "/v1/sandboxes/"+id+"/files?path=/workspace/a.txt", key, "kept"); r.status != 200 {
		t.Fatalf("write: %d %s", r.status, r.body)
	}
	if r := h.do("POST", "/v1/sandboxes/"+id+"/pause", key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	if n := len(host.Running()); n != 0 {
		t.Fatalf("%d sandboxes run on the host of a paused one", n)
	}
	if r := h.do("POST", "/v1/sandboxes/"+id+"/resume", key, nil); r.status != 200 {
		t.Fatalf("resume: %d %s", r.status, r.body)
	}
	if r := h.do("GET", "/v1/sandboxes/"+id+"/files?path=/workspace/a.txt", key, nil); r.status != 200 || string(r.body) != `"kept"` {
		t.Fatalf("file after resume: %d %q", r.status, r.body)
	}
	if r := h.do("GET", "/v1/regions", key, nil); r.status != 200 || r.json(t)["data"].([]any)[0].(map[string]any)["name"] != "fsn1" {
		t.Fatalf("regions: %d %s", r.status, r.body)
	}
	if r := h.do("DELETE", "/v1/sandboxes/"+id, key, nil); r.status != 200 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if n := len(host.Running()); n != 0 {
		t.Fatalf("%d sandboxes left after terminate", n)
	}
	snaps, _ := os.ReadDir(filepath.Join(h.srv.dataDir, "snapshots"))
	if len(snaps) != 0 {
		t.Fatalf("snapshots left after terminate: %v", snaps)
	}
}

// TestNodeRecordsItsSandboxesEnd: a sandbox that dies on its own (crash,
// out of memory) is recorded by its node, with the reason.
func TestNodeRecordsItsSandboxesEnd(t *testing.T) {
	host := fake.NewHost(fake.Options{})
	h, n := newFakeHarness(t, host, t.TempDir(), fakeTemplates(t), openStore(t))
	_, key := h.account("fake", "team")
	for _, c := range []struct {
		cause  error
		reason string
	}{{runtime.ErrOutOfMemory, "out_of_memory"}, {nil, "stopped"}} {
		id := h.create(key)
		var rid string
		for _, r := range n.Running() {
			if r.SandboxID == id {
				rid = r.RuntimeID
			}
		}
		rt, err := n.Sandbox(context.Background(), rid)
		if err != nil {
			t.Fatal(err)
		}
		rt.(*fake.Sandbox).Kill(c.cause)
		deadline := time.Now().Add(10 * time.Second)
		for {
			r := h.do("GET", "/v1/sandboxes/"+id, key, nil)
			if r.json(t)["status"] == "error" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not recorded: %s", c.reason, r.body)
			}
			time.Sleep(20 * time.Millisecond)
		}
		r := h.do("POST", "/v1/sandboxes/"+id+"/exec", key, map[string]any{"command": "true"})
		if r.status != 409 || r.code() != "sandbox_not_ready" {
			t.Fatalf("%s: exec on the ended sandbox: %d %s", c.reason, r.status, r.body)
		}
	}
}

// TestRestartAdoptsOnFakeNode: a server that restarts over the same host
// and store adopts the running sandbox and drops what no row owns.
func TestRestartAdoptsOnFakeNode(t *testing.T) {
	host := fake.NewHost(fake.Options{})
	st := openStore(t)
	dataDir, templates := t.TempDir(), fakeTemplates(t)
	h1, n1 := newFakeHarness(t, host, dataDir, templates, st)
	_, key := h1.account("fake", "team")
	id := h1.create(key)
	other := host.NewDriver() // a leftover of an earlier process
	stray, err := other.Create(context.Background(), runtime.Spec{Template: "debian-12", Rootfs: filepath.Join(templates, "debian-12", "rootfs"), Resources: testenv.Small})
	if err != nil {
		t.Fatal(err)
	}
	_ = other.Close(context.Background(), false)
	_ = n1.Close(context.Background(), false) // the process dies; its sandboxes run on
	h2, _ := newFakeHarness(t, host, dataDir, templates, st)
	if out := h2.exec(key, id, "echo adopted"); out != "adopted\n" {
		t.Fatalf("exec after restart: %q", out)
	}
	for _, rid := range host.Running() {
		if rid == stray.ID() {
			t.Fatal("a sandbox no row owns survived the restart's reconcile")
		}
	}
}

// TestCreateAtTheLimitLeavesNothing: a create's row is admitted under the
// plan's limit while its sandbox starts; a create the limit refuses
// leaves no sandbox behind, and once refused an account's creates are
// admitted before anything starts, so a client retrying at its limit
// cannot make the node start (and drain its pool of) sandboxes for
// nothing.
func TestCreateAtTheLimitLeavesNothing(t *testing.T) {
	host := fake.NewHost(fake.Options{})
	st := openStore(t)
	h, _ := newFakeHarness(t, host, t.TempDir(), fakeTemplates(t), st)
	_, key := h.account("limited", "free") // one sandbox at a time

	id := h.create(key)
	before := host.Counts().Creates
	refuse := func(i int) {
		t.Helper()
		r := h.do("POST", "/v1/sandboxes", key, map[string]any{"template": "debian-12"})
		if r.status != 402 || r.code() != "concurrency_limit" {
			t.Fatalf("create %d over the limit: %d %s", i, r.status, r.body)
		}
	}
	refuse(1)
	// The first refusal may have started a sandbox beside its insert: it
	// is gone by the time the refusal is answered.
	if got := host.Running(); len(got) != 1 {
		t.Fatalf("sandboxes running after a refused create: %v, want only %s's", got, id)
	}
	started := host.Counts().Creates
	for i := 2; i <= 20; i++ {
		refuse(i)
	}
	if n := host.Counts().Creates - started; n != 0 {
		t.Fatalf("19 creates refused after the first started %d sandboxes (want 0; the first started %d)", n, started-before)
	}
	if r := h.do("DELETE", "/v1/sandboxes/"+id, key, nil); r.status != 200 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	h.create(key) // room again
}
