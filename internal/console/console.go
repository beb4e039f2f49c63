// Package console is orkestr's web console, served by orkestrd under
// /console/: members of an account sign in with email and password, mint
// and revoke API tokens, watch and pause, resume or terminate their
// sandboxes, and see their plan's usage. Pages are rendered on the server
// with html/template; the few scripts and the stylesheet are embedded in
// the binary, so the console needs nothing from the internet.
//
// Every sandbox operation goes through the API's own handlers
// (API.ServeAccount) for the signed-in member's account, so the console
// enforces exactly the API's tenancy, plans and rate limits.
package console

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
)

//go:embed templates/*.html
var templateFiles embed.FS

//go:embed static
var staticFiles embed.FS

// API is the part of the API server the console needs.
type API interface {
	// ServeAccount serves an API request (/v1/...) for the account.
	ServeAccount(w http.ResponseWriter, r *http.Request, accountID string)
}

// Options configure the console.
type Options struct {
	Store store.Store
	API   API
	Log   *slog.Logger
	// PublicURL is where people reach orkestrd (e.g. https://orkestr.example.com);
	// with https the session cookie is Secure even behind a TLS proxy.
	PublicURL string
	Now       func() time.Time
	// MaxFailures consecutive wrong passwords lock a member for LockFor
	// (defaults 5 and 15 minutes).
	MaxFailures int
	LockFor     time.Duration
	// SignInsPerMinute limits sign-in attempts per client address
	// (default 10).
	SignInsPerMinute int
	// SessionTTL is how long a sign-in lasts (default 12 hours).
	SessionTTL time.Duration
}

// Console serves the web console; mount Handler at Prefix.
type Console struct {
	o       Options
	log     *slog.Logger
	secure  bool
	pages   map[string]*template.Template
	mux     *http.ServeMux
	limiter *addrLimiter
}

// Prefix is where the console lives.
const Prefix = "/console/"

// New builds the console.
func New(o Options) (*Console, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxFailures <= 0 {
		o.MaxFailures = 5
	}
	if o.LockFor <= 0 {
		o.LockFor = 15 * time.Minute
	}
	if o.SignInsPerMinute <= 0 {
		o.SignInsPerMinute = 10
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = 12 * time.Hour
	}
	c := &Console{o: o, log: o.Log, secure: strings.HasPrefix(o.PublicURL, "https://"), pages: map[string]*template.Template{},
		limiter: &addrLimiter{per: o.SignInsPerMinute, window: time.Minute, now: o.Now, seen: map[string]*window{}}}
	names, err := fs.Glob(templateFiles, "templates/*.html")
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if strings.HasSuffix(n, "/layout.html") {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFiles, "templates/layout.html", n)
		if err != nil {
			return nil, err
		}
		c.pages[strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")] = t
	}
	c.routes()
	return c, nil
}

func (c *Console) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(staticFiles, "static")
	m.Handle("GET /console/static/", http.StripPrefix("/console/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /console/{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/console/sandboxes", http.StatusSeeOther)
	})
	m.HandleFunc("GET /console/login", c.loginPage)
	m.HandleFunc("POST /console/login", c.login)
	m.HandleFunc("GET /console/setup/{token}", c.setupPage)
	m.HandleFunc("POST /console/setup/{token}", c.setup)
	m.HandleFunc("POST /console/logout", c.member(c.logout))
	m.HandleFunc("GET /console/sandboxes", c.member(c.sandboxesPage))
	m.HandleFunc("GET /console/sandboxes/{id}", c.member(c.sandboxPage))
	m.HandleFunc("POST /console/sandboxes/{id}/{action}", c.member(c.sandboxAction))
	m.HandleFunc("GET /console/api/sandboxes", c.member(c.sandboxesJSON))
	m.HandleFunc("GET /console/api/sandboxes/{id}/metrics", c.member(c.metricsJSON))
	m.HandleFunc("GET /console/api/sandboxes/{id}/pty", c.member(c.terminal))
	m.HandleFunc("GET /console/tokens", c.member(c.tokensPage))
	m.HandleFunc("POST /console/tokens", c.member(c.mintToken))
	m.HandleFunc("POST /console/tokens/{id}/revoke", c.member(c.revokeToken))
	m.HandleFunc("GET /console/usage", c.member(c.usagePage))
	m.HandleFunc("GET /console/members", c.member(c.membersPage))
	m.HandleFunc("POST /console/members", c.member(c.invite))
	m.HandleFunc("/console/", func(w http.ResponseWriter, r *http.Request) {
		c.render(w, r, http.StatusNotFound, "error", nil, pageData{Title: "Not found", Error: "There is no such page in the console."})
	})
	c.mux = m
}

// Handler serves the console; mount it at Prefix.
func (c *Console) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// Scripts, styles and everything else only from the console
		// itself; no inline script or style can run, so even markup that
		// slipped through escaping would be inert.
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		// Setup links carry their token in the path: no referrer leaves
		// the console for another site.
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		if !strings.HasPrefix(r.URL.Path, "/console/static/") {
			h.Set("Cache-Control", "no-store")
		}
		if c.secure || r.TLS != nil {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			// Forms are small; nothing the console accepts is larger.
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
			if !sameOrigin(r) {
				c.render(w, r, http.StatusForbidden, "error", nil, pageData{Title: "Refused", Error: "This request came from another site and was refused."})
				return
			}
		}
		c.mux.ServeHTTP(w, r)
	})
}

// sameOrigin refuses cross-site state changes before any token is
// looked at: browsers say where a request comes from in Sec-Fetch-Site
// and Origin. Requests without either (curl, old browsers) and an opaque
// Origin ("null", sent under some referrer policies) still need the CSRF
// token.
func sameOrigin(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" && s != "none" {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		i := strings.Index(o, "://")
		if i < 0 || o[i+3:] != r.Host {
			return false
		}
	}
	return true
}

// clientAddr is the request's peer address without the port.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// addrLimiter allows per attempts per window and client address.
type addrLimiter struct {
	mu     sync.Mutex
	per    int
	window time.Duration
	now    func() time.Time
	seen   map[string]*window
}

type window struct {
	start time.Time
	n     int
}

// allow counts an attempt; it returns how long to wait when refused.
func (l *addrLimiter) allow(addr string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if len(l.seen) > 10000 {
		for k, w := range l.seen {
			if now.Sub(w.start) >= l.window {
				delete(l.seen, k)
			}
		}
	}
	w, ok := l.seen[addr]
	if !ok || now.Sub(w.start) >= l.window {
		w = &window{start: now}
		l.seen[addr] = w
	}
	if w.n >= l.per {
		return false, w.start.Add(l.window).Sub(now)
	}
	w.n++
	return true, 0
}

// pageData is what every page template gets.
type pageData struct {
	Title   string
	Nav     string
	Email   string
	Account string
	Plan    string
	CSRF    string
	Error   string
	Notice  string
	Data    any
}

var funcs = template.FuncMap{
	"fmtTime": func(t any) string {
		switch v := t.(type) {
		case time.Time:
			return v.UTC().Format("2006-01-02 15:04 UTC")
		case *time.Time:
			if v == nil {
				return "—"
			}
			return v.UTC().Format("2006-01-02 15:04 UTC")
		}
		return ""
	},
	"join": strings.Join,
}

// render writes a page; a template error is logged and answered as a
// plain 500.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, page string, s *session, d pageData) {
	t, ok := c.pages[page]
	if !ok {
		c.log.Error("console page missing", "page", page)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	if s != nil {
		d.Email, d.Account, d.Plan, d.CSRF = s.member.Email, s.account.Name, s.account.Plan, s.CSRFToken
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, d); err != nil {
		c.log.Error("rendering a console page", "page", page, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = io.Copy(w, &buf)
}

func (c *Console) internalError(w http.ResponseWriter, r *http.Request, s *session, what string, err error) {
	c.log.Error("console: "+what, "path", r.URL.Path, "err", err)
	c.render(w, r, http.StatusInternalServerError, "error", s, pageData{Title: "Error", Error: "Something went wrong on our side; try again, and tell the operator if it persists."})
}

var errNoSession = errors.New("no session")

// ctx helpers
type ctxKey struct{}

func withSession(ctx context.Context, s *session) context.Context {
	return context.WithValue(ctx, ctxKey{}, s)
}
