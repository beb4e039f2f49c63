package console_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/orkestr-eu/orkestr/internal/api"
	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/console"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/runtime/fake"
	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// env is orkestrd's HTTP surface (API at /, console at /console/) over a
// real store, without a sandbox runtime: sandboxes are store rows.
type env struct {
	t     *testing.T
	store *sqlstore.Store
	url   string
	clock *testenv.Clock
}

type envOpts struct {
	signInsPerMinute int
	publicURL        string
	// operators: config operator_accounts.
	operators []string
	// nodeID: run an in-process node with this id on the fake driver
	// (no node: the API has no runtime).
	nodeID string
}

func newEnv(t *testing.T, dbURL string, o envOpts) *env {
	t.Helper()
	st, err := sqlstore.Open(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := config.Default()
	for name, p := range cfg.Plans {
		p.RateLimit = config.RateLimit{RequestsPerSecond: 1e6, Burst: 1e6}
		cfg.Plans[name] = p
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	cfg.OperatorAccounts = o.operators
	ck := &testenv.Clock{}
	opts := api.Options{Store: st, Config: cfg, Log: log, DataDir: t.TempDir(), Now: ck.Now}
	if o.nodeID != "" {
		dataDir := t.TempDir()
		tmpl := t.TempDir()
		if err := os.MkdirAll(filepath.Join(tmpl, "debian-12", "rootfs"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tmpl, "debian-12", "template.json"), []byte(`{"name":"debian-12","layout":2}`), 0o644); err != nil {
			t.Fatal(err)
		}
		n, err := node.New(node.Config{DataDir: dataDir, StateDir: filepath.Join(dataDir, "state"), TemplateDir: tmpl,
			Sizes: node.Resources(cfg.Sizes), Log: log, ID: o.nodeID, Region: cfg.Region, Slots: 7, Recorder: st},
			fake.NewHost(fake.Options{}).NewDriver())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close(context.Background(), false) })
		opts.Node = n
	}
	srv := api.New(opts)
	if o.signInsPerMinute == 0 {
		o.signInsPerMinute = 1000
	}
	con, err := console.New(console.Options{Store: st, API: srv, Log: log, Now: ck.Now, SignInsPerMinute: o.signInsPerMinute, PublicURL: o.publicURL})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", srv.Handler())
	mux.Handle(console.Prefix, con.Handler())
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return &env{t: t, store: st, url: hs.URL, clock: ck}
}

// eachDB runs fn on SQLite and on PostgreSQL.
func eachDB(t *testing.T, fn func(t *testing.T, dbURL string)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, "sqlite://"+filepath.Join(t.TempDir(), "orkestr.db")) })
	t.Run("postgres", func(t *testing.T) { fn(t, testenv.FreshPostgres(t)) })
}

func (e *env) account(name, plan string) store.Account {
	e.t.Helper()
	a := store.Account{ID: "acc_" + ulid.Make().String(), Name: name, Plan: plan, CreatedAt: time.Now().UTC()}
	if err := e.store.CreateAccount(context.Background(), a); err != nil {
		e.t.Fatal(err)
	}
	return a
}

const password = "correct horse battery staple"

// member makes a member of the account with the password, through the
// setup link, and returns a browser signed in as them.
func (e *env) member(a store.Account, email string) *browser {
	e.t.Helper()
	_, path, err := console.CreateMember(context.Background(), e.store, a.ID, email, "setup", time.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	b := e.browser()
	page := b.get(path)
	if page.status != 200 {
		e.t.Fatalf("setup page: %d %s", page.status, page.body)
	}
	res := b.post(path, url.Values{"csrf": {page.csrf()}, "password": {password}, "confirm": {password}})
	if res.status != 200 || !strings.Contains(res.body, "Sandboxes") {
		e.t.Fatalf("setup: %d %s", res.status, res.body)
	}
	return b
}

// browser is a cookie-keeping client that follows redirects.
type browser struct {
	e   *env
	c   *http.Client
	jar *cookiejar.Jar
}

func (e *env) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{e: e, jar: jar, c: &http.Client{Jar: jar, Timeout: time.Minute}}
}

type page struct {
	status int
	header http.Header
	body   string
	url    string
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (p page) csrf() string {
	m := csrfRE.FindStringSubmatch(p.body)
	if m == nil {
		return ""
	}
	return m[1]
}

func (b *browser) do(req *http.Request) page {
	b.e.t.Helper()
	res, err := b.c.Do(req)
	if err != nil {
		b.e.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return page{res.StatusCode, res.Header, string(body), res.Request.URL.Path}
}

func (b *browser) get(path string) page {
	b.e.t.Helper()
	req, _ := http.NewRequest("GET", b.e.url+path, nil)
	return b.do(req)
}

func (b *browser) post(path string, form url.Values, header ...string) page {
	b.e.t.Helper()
	req, _ := http.NewRequest("POST", b.e.url+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return b.do(req)
}

// csrf reads the session's CSRF token from a page.
func (b *browser) csrf() string {
	b.e.t.Helper()
	tok := b.get("/console/tokens").csrf()
	if tok == "" {
		b.e.t.Fatal("no CSRF token on the tokens page")
	}
	return tok
}

func (b *browser) cookie(name string) *http.Cookie {
	u, _ := url.Parse(b.e.url + "/console/")
	for _, c := range b.jar.Cookies(u) {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func (b *browser) login(email, pw string) page {
	b.e.t.Helper()
	p := b.get("/console/login")
	return b.post("/console/login", url.Values{"csrf": {p.csrf()}, "email": {email}, "password": {pw}})
}

// sandbox inserts a sandbox row for the account.
func (e *env) sandbox(a store.Account, status store.Status, meta map[string]string) store.Sandbox {
	e.t.Helper()
	now := time.Now().UTC()
	sb := store.Sandbox{ID: "sbx_" + ulid.Make().String(), AccountID: a.ID, Status: status, Template: "debian-12",
		Size: "small", CPU: 0.5, MemoryMB: 512, Network: "off", Region: "fsn1", TimeoutSeconds: 600,
		Metadata: meta, EnvKeys: []string{}, Node: "fsn1", CreatedAt: now, UpdatedAt: now}
	if status == store.StatusPaused {
		sb.PausedAt, sb.RemainingMS = &now, 600000
	}
	if err := e.store.CreateSandbox(context.Background(), sb, 0); err != nil {
		e.t.Fatal(err)
	}
	return sb
}

func (e *env) apiDo(method, path, key string) int {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

func consoleCreateMember(e *env, a store.Account, email string) (store.Member, string, error) {
	return console.CreateMember(context.Background(), e.store, a.ID, email, "setup", time.Now())
}
