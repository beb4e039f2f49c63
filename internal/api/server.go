// Package api serves the REST API v1 (docs/api.md): authentication, plans,
// rate limits and tenancy in front of the store and the node that runs the
// sandboxes.
package api

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/orkestr-eu/orkestr/internal/auth"
	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/lifecycle"
	"github.com/orkestr-eu/orkestr/internal/metering"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/store"
)

// Server is the API. Create it with New, start its background work with
// Start, and serve Handler.
type Server struct {
	store     store.Store
	nodes     lifecycle.Nodes
	life      *lifecycle.Manager
	leader    func() bool
	local     *node.Node // the in-process node of a single box (nil in a fleet's control plane)
	cfg       config.Config
	log       *slog.Logger
	now       func() time.Time
	limits    *limiter
	authFails *failLimiter
	om        *opMetrics
	dataDir   string
	started   bool

	touched sync.Map // key id -> time of the last recorded use
	keys    sync.Map // key hash -> cachedKey
	// usageCache: account id -> cachedUsage, the month's usage for the
	// budget check of create and resume.
	usageCache sync.Map

	mux *http.ServeMux
	// accountMux serves the same endpoints to callers already
	// authenticated as an account (ServeAccount).
	accountMux *http.ServeMux
}

// Options configure a Server.
type Options struct {
	Store store.Store
	// Node is the in-process node of a single box; a fleet's control
	// plane sets Nodes instead (and Node nil).
	Node    *node.Node
	Nodes   lifecycle.Nodes
	Config  config.Config
	Log     *slog.Logger
	DataDir string           // the server's data directory (the E2B secret lives there)
	Now     func() time.Time // for tests; time.Now by default (Clock wins if both are set)
	// Leader says whether this replica runs the singleton loops
	// (deadlines) now; nil: always (one box).
	Leader func() bool
	// Snapshots is the store the nodes put snapshots in (nil: they stay on
	// their nodes): terminate deletes objects there, and resume may place
	// a paused sandbox on another node.
	Snapshots snapshot.Store
	// Clock is the time of deadlines, rate limits, plan months and the
	// hour metered usage is attributed to; tests inject one to cross a
	// month. Default: Now, else the system clock.
	Clock metering.Clock
}

// New builds the server and its routes.
func New(o Options) *Server {
	if o.Clock == nil {
		o.Clock = metering.SystemClock{}
		if o.Now != nil {
			o.Clock = metering.ClockFunc(o.Now)
		}
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	s := &Server{
		store: o.Store, nodes: o.Nodes, local: o.Node, leader: o.Leader, cfg: o.Config, log: o.Log, now: o.Clock.Now,
		limits:    newLimiter(o.Clock.Now),
		authFails: newFailLimiter(o.Clock.Now),
		dataDir:   o.DataDir,
	}
	switch {
	case s.nodes != nil:
	case s.local != nil:
		s.nodes = lifecycle.LocalNodes(s.local)
	default:
		s.nodes = lifecycle.NoNodes{}
	}
	s.life = lifecycle.NewManager(s.store, s.nodes, s.now, s.log)
	if o.Snapshots != nil {
		s.life.SetSnapshotStore(o.Snapshots)
	}
	s.om = newOpMetrics(s)
	if s.local != nil {
		s.local.Sampler().SetHooks(s.om.samplerRound, s.om.meteringFlush)
	}
	s.routes()
	return s
}

// Handler is the API's http.Handler.
func (s *Server) Handler() http.Handler {
	return withRequestID(s.withAccessLog(s.withRecover(s.mux)))
}

// Start reconciles store and runtime and starts the background loops
// (deadlines, sampling). It returns once the node is ready.
func (s *Server) Start(ctx context.Context) error {
	if err := s.reconcile(ctx); err != nil {
		return err
	}
	s.started = true
	if s.local != nil {
		go s.local.RunMetering(ctx)
	}
	go s.life.RunDeadlines(ctx, s.leader)
	return nil
}

// Wait blocks, after Start's context has ended, until the background work
// has stopped and the last metered usage is in the store. Call it before
// closing the store.
func (s *Server) Wait() {
	if s.started && s.local != nil {
		s.local.WaitMetering()
	}
}

// principal is the authenticated caller of a request.
type principal struct {
	key     store.APIKey
	account store.Account
	plan    config.Plan
}

func caller(r *http.Request) *principal {
	p, _ := r.Context().Value(ctxPrincipal).(*principal)
	return p
}

// handler adapts a handler that returns an error.
type handler func(w http.ResponseWriter, r *http.Request) error

// authed wraps h with authentication, the scope check and the rate limit.
func (s *Server) authed(scope string, h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := s.authenticate(r)
		if err != nil {
			var e *Error
			if errors.As(err, &e) && e.Code == "rate_limited" {
				ms, _ := e.Details["retry_after_ms"].(int64)
				w.Header().Set("Retry-After", strconv.FormatInt((ms+999)/1000, 10))
			}
			s.writeError(w, r, err)
			return
		}
		if !s.limits.allow(w, p) {
			ms := w.Header().Get("Retry-After-Ms")
			w.Header().Del("Retry-After-Ms")
			e := apiErr(http.StatusTooManyRequests, "rate_limited", "Too many requests for your plan (%s); retry after the time in Retry-After.", p.account.Plan)
			e.with("retry_after_ms", atoi64(ms))
			s.writeError(w, r, e)
			return
		}
		if !auth.Implies(p.key.Scopes, scope) {
			s.writeError(w, r, apiErr(http.StatusForbidden, "insufficient_scope", "This API key lacks the %s scope.", scope).with("required_scope", scope))
			return
		}
		if err := h(w, r.WithContext(context.WithValue(r.Context(), ctxPrincipal, p))); err != nil {
			s.writeError(w, r, err)
		}
	}
}

// ServeAccount serves an API request (path /v1/...) on behalf of the
// account, as a key with the sandboxes:write scope would be served: same
// handlers, same tenancy, plan and rate limit. The console calls it for a
// signed-in member; whoever calls it has authenticated the account.
func (s *Server) ServeAccount(w http.ResponseWriter, r *http.Request, accountID string) {
	ctx := context.WithValue(r.Context(), ctxAccount, accountID)
	withRequestID(s.withRecover(s.accountMux)).ServeHTTP(w, r.WithContext(ctx))
}

// asAccount wraps h for ServeAccount: the principal is the account in the
// context, with every scope; the plan's rate limit applies per account.
func (s *Server) asAccount(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, _ := r.Context().Value(ctxAccount).(string)
		acct, err := s.store.AccountByID(r.Context(), id)
		if errors.Is(err, store.ErrNotFound) {
			s.writeError(w, r, errUnauthenticated)
			return
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		plan, ok := s.cfg.Plans[acct.Plan]
		if !ok {
			s.log.Error("account has a plan the config does not define", "account", acct.ID, "plan", acct.Plan)
			s.writeError(w, r, errInternal)
			return
		}
		p := &principal{
			key:     store.APIKey{ID: "console:" + acct.ID, AccountID: acct.ID, Scopes: []string{store.ScopeSandboxesWrite}},
			account: acct, plan: plan,
		}
		if !s.limits.allow(w, p) {
			ms := w.Header().Get("Retry-After-Ms")
			w.Header().Del("Retry-After-Ms")
			s.writeError(w, r, apiErr(http.StatusTooManyRequests, "rate_limited", "Too many requests for your plan (%s); retry after the time in Retry-After.", acct.Plan).with("retry_after_ms", atoi64(ms)))
			return
		}
		if err := h(w, r.WithContext(context.WithValue(r.Context(), ctxPrincipal, p))); err != nil {
			s.writeError(w, r, err)
		}
	}
}

// keyCacheTTL bounds how long a key's record (and its account) is reused
// without asking the store: a revocation, expiry or plan change made by
// `orkestrd admin` takes effect within this time.
const keyCacheTTL = time.Second

type cachedKey struct {
	key     store.APIKey
	account store.Account
	at      time.Time
}

var errUnauthenticated = apiErr(http.StatusUnauthorized, "unauthenticated",
	"Missing, malformed, unknown, revoked or expired API key. Send Authorization: Bearer ork_...")

// tooManyFailures answers a client address that failed to authenticate
// too often; nothing is looked up for it until it waits.
func tooManyFailures(wait time.Duration) error {
	ms := int64(math.Ceil(float64(wait) / float64(time.Millisecond)))
	return apiErr(http.StatusTooManyRequests, "rate_limited", "Too many requests with a missing or invalid API key from your address; retry after the time in Retry-After with a valid key.").
		with("retry_after_ms", ms)
}

func (s *Server) authenticate(r *http.Request) (*principal, error) {
	key := bearer(r)
	addr := clientAddr(r)
	if key == "" || auth.CheckFormat(key) != nil {
		if wait := s.authFails.wait(addr); wait > 0 {
			return nil, tooManyFailures(wait)
		}
		s.authFails.fail(addr)
		return nil, errUnauthenticated
	}
	hash := auth.Hash(key)
	now := s.now()
	var k store.APIKey
	var acct store.Account
	if c, ok := s.keys.Load(hash); ok && now.Sub(c.(cachedKey).at) < keyCacheTTL {
		k, acct = c.(cachedKey).key, c.(cachedKey).account
	} else {
		if wait := s.authFails.wait(addr); wait > 0 {
			return nil, tooManyFailures(wait)
		}
		var err error
		k, err = s.store.KeyByHash(r.Context(), hash)
		if errors.Is(err, store.ErrNotFound) {
			s.authFails.fail(addr)
			return nil, errUnauthenticated
		}
		if err != nil {
			return nil, err
		}
		if acct, err = s.store.AccountByID(r.Context(), k.AccountID); err != nil {
			return nil, err
		}
		s.keys.Store(hash, cachedKey{key: k, account: acct, at: now})
	}
	if k.RevokedAt != nil || (k.ExpiresAt != nil && !now.Before(*k.ExpiresAt)) {
		s.authFails.fail(addr)
		return nil, errUnauthenticated
	}
	plan, ok := s.cfg.Plans[acct.Plan]
	if !ok {
		s.log.Error("account has a plan the config does not define", "account", acct.ID, "plan", acct.Plan)
		return nil, errInternal
	}
	// Last use is recorded at most once a minute per key: a write per
	// request would make every GET a write.
	if last, ok := s.touched.Load(k.ID); !ok || now.Sub(last.(time.Time)) > time.Minute {
		s.touched.Store(k.ID, now)
		_ = s.store.TouchKey(r.Context(), k.ID, now)
	}
	return &principal{key: k, account: acct, plan: plan}, nil
}

func atoi64(s string) int64 {
	var n int64
	for _, c := range s {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int64(c-'0')
	}
	return n
}
