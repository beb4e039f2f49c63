package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/orkestr-eu/orkestr/internal/auth"
	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/metering"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// harness is an in-process API server over a real store and, with
// runtime set, a real gVisor node.
type harness struct {
	t       *testing.T
	srv     *Server
	http    *httptest.Server
	store   *sqlstore.Store
	clock   *testenv.Clock
	dataDir string
}

// snapshotOptions give the harness's node and server a snapshot store.
type snapshotOptions struct {
	store      snapshot.Store
	keys       *snapshot.Keyring
	cacheBytes int64
}

func newHarness(t *testing.T, cfg config.Config, runtime bool) *harness {
	t.Helper()
	return newHarnessWith(t, cfg, runtime, snapshotOptions{})
}

func newHarnessWith(t *testing.T, cfg config.Config, runtime bool, so snapshotOptions) *harness {
	t.Helper()
	st, err := sqlstore.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "orkestr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h := &harness{t: t, store: st, clock: &testenv.Clock{}}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: testenv.LogLevel()}))
	var n *node.Node
	dataDir := t.TempDir()
	if runtime {
		testenv.RequireRoot(t)
		state, err := os.MkdirTemp("/run", "orkm-")
		if err != nil {
			t.Fatal(err)
		}
		n, err = node.Open(node.Config{
			DataDir: dataDir, StateDir: state, TemplateDir: testenv.TemplateDir(), Runsc: testenv.Runsc(t),
			AgentBinary: testenv.AgentBinary(t), Sizes: node.Resources(cfg.Sizes), Log: log,
			DiskReserveBytes: cfg.DiskReserveMB << 20, Region: cfg.Region, Recorder: st,
			Metering:      metering.Config{Clock: h.clock, FlushEvery: time.Second},
			SnapshotStore: so.store, SnapshotKeys: so.keys, SnapshotCacheBytes: so.cacheBytes,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := n.Close(ctx, true); err != nil {
				t.Errorf("closing the node: %v", err)
			}
			if p := testenv.ProcessesMentioning(state); len(p) > 0 {
				t.Errorf("processes left behind: %v", p)
			}
			if m := testenv.MountsUnder(state); len(m) > 0 {
				t.Errorf("mounts left behind: %v", m)
			}
			_ = os.RemoveAll(state)
		})
	}
	h.dataDir = dataDir
	h.srv = New(Options{Store: st, Node: n, Config: cfg, Log: log, DataDir: dataDir, Clock: h.clock, Snapshots: so.store})
	if runtime {
		ctx, cancel := context.WithCancel(context.Background())
		if err := h.srv.Start(ctx); err != nil {
			cancel()
			t.Fatal(err)
		}
		// Registered after the node's cleanup, so it runs first: the
		// sampler stops (final flush) before the node goes.
		t.Cleanup(func() { cancel(); h.srv.Wait() })
	}
	h.http = httptest.NewServer(h.srv.Handler())
	t.Cleanup(h.http.Close)
	return h
}

// account makes an account on plan and returns a sandboxes:write key.
func (h *harness) account(name, plan string) (store.Account, string) {
	h.t.Helper()
	a := store.Account{ID: "acc_" + ulid.Make().String(), Name: name, Plan: plan, CreatedAt: time.Now().UTC()}
	if err := h.store.CreateAccount(context.Background(), a); err != nil {
		h.t.Fatal(err)
	}
	key, hash, prefix, err := auth.NewKey()
	if err != nil {
		h.t.Fatal(err)
	}
	k := store.APIKey{ID: "key_" + ulid.Make().String(), AccountID: a.ID, Prefix: prefix, Hash: hash,
		Scopes: []string{store.ScopeSandboxesWrite}, CreatedAt: time.Now().UTC()}
	if err := h.store.CreateKey(context.Background(), k); err != nil {
		h.t.Fatal(err)
	}
	return a, key
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("status %d, body not JSON: %q", r.status, r.body)
	}
	return m
}

func (r resp) code() string {
	var m struct {
		Error struct{ Code string } `json:"error"`
	}
	_ = json.Unmarshal(r.body, &m)
	return m.Error.Code
}

func (h *harness) do(method, path, key string, body any, header ...string) resp {
	h.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, h.http.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, b}
}

func (h *harness) create(key string) string {
	h.t.Helper()
	r := h.do("POST", "/v1/sandboxes", key, map[string]any{"template": "debian-12"})
	if r.status != 201 {
		h.t.Fatalf("create: %d %s", r.status, r.body)
	}
	return r.json(h.t)["id"].(string)
}

func (h *harness) exec(key, id, cmd string) string {
	h.t.Helper()
	r := h.do("POST", "/v1/sandboxes/"+id+"/exec", key, map[string]any{"command": cmd})
	m := r.json(h.t)
	if r.status != 200 || m["exit_code"] != 0.0 {
		h.t.Fatalf("exec %q: %d %s", cmd, r.status, r.body)
	}
	return m["stdout"].(string)
}

// testConfig is the default config with every plan's rate limit out of
// the way.
func testConfig() config.Config {
	cfg := config.Default()
	cfg.PoolSize = 0
	for name, p := range cfg.Plans {
		p.RateLimit = config.RateLimit{RequestsPerSecond: 1e6, Burst: 1e6}
		cfg.Plans[name] = p
	}
	return cfg
}
