// Package e2b serves an E2B-compatible API so that the published, unmodified
// `e2b` SDKs (npm and PyPI) run against orkestr: the control plane
// (/sandboxes, /v2/sandboxes, …) and, on the same origin, the in-sandbox
// daemon ("envd": GET /health, GET/POST /files and the Connect-RPC services
// process.Process and filesystem.Filesystem). Each E2B call is translated
// into calls of orkestr's own API, served in-process by its handlers, so
// keys, scopes, rate and plan limits, tenancy and metering are exactly
// those of the native API. What orkestr lacks is answered in E2B's error
// shape with a message that names it.
package e2b

import (
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/orkestr-eu/orkestr/internal/store"
)

// EnvdVersion is the envd version this package reports: the SDKs gate
// features on it, and everything they gate up to this version is
// implemented (stdin, default user, closing stdin, octet-stream and gzip
// uploads, recursive watch). 0.6.2 (file metadata as xattrs) and later are
// not.
const EnvdVersion = "0.5.7"

// Options configure the E2B-compatible server.
type Options struct {
	Native Native
	Store  store.Store
	Log    *slog.Logger
	// Secret signs the sandboxes' envd access tokens; see LoadSecret.
	Secret []byte
	// Templates maps E2B template ids to orkestr templates; "base" must be
	// there. Any other id is passed through as an orkestr template name.
	Templates map[string]string
}

// Server is the E2B-compatible API.
type Server struct {
	o        Options
	mux      *http.ServeMux
	procs    procRegistry
	watchers watcherRegistry

	envdOnce    sync.Once
	envdHandler *http.ServeMux
}

// New builds the server.
func New(o Options) (*Server, error) {
	if len(o.Secret) < 32 {
		return nil, errors.New("e2b: the access-token secret must have at least 32 bytes")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Templates == nil {
		o.Templates = map[string]string{}
	}
	if _, ok := o.Templates["base"]; !ok {
		o.Templates["base"] = "e2b-base"
	}
	s := &Server{o: o}
	s.procs.m = map[string]*procMeta{}
	s.watchers.m = map[string]*pollWatcher{}
	s.routes()
	return s, nil
}

// LoadSecret reads the access-token secret from dir/e2b-secret, making it
// (32 random bytes, mode 0600) the first time: tokens stay valid across
// restarts of the server.
func LoadSecret(dir string) ([]byte, error) {
	p := filepath.Join(dir, "e2b-secret")
	b, err := os.ReadFile(p)
	if err == nil && len(b) >= 32 {
		return b, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("e2b secret: %w", err)
	}
	b = make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		return nil, fmt.Errorf("e2b secret: %w", err)
	}
	return b, nil
}

// Handler serves the whole E2B-compatible origin: requests that carry
// E2b-Sandbox-Id go to the sandbox's daemon side, the rest to the control
// plane.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.o.Log.Error("e2b handler panic", "path", r.URL.Path, "panic", v)
				writeErr(w, http.StatusInternalServerError, "Internal error in orkestr's E2B-compatible API; the server log has the details.")
			}
		}()
		if r.Header.Get("E2b-Sandbox-Id") != "" {
			s.envd(w, r)
			return
		}
		s.mux.ServeHTTP(w, r)
	})
}

// procRegistry remembers, per sandbox and pid, what an SDK asked to start
// (the native API knows only a shell command line), for List and tags.
type procRegistry struct {
	mu sync.Mutex
	m  map[string]*procMeta // sandbox id + "/" + pid
}

type procMeta struct {
	cmd  string
	args []string
	envs map[string]string
	cwd  string
	tag  string
}

const maxProcMeta = 100000

func procKey(sandbox string, pid uint32) string { return fmt.Sprintf("%s/%d", sandbox, pid) }

func (p *procRegistry) put(sandbox string, pid uint32, m *procMeta) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.m) >= maxProcMeta {
		// Bounded: forget the lot rather than grow without end; List then
		// shows the shell command line the native API keeps.
		p.m = map[string]*procMeta{}
	}
	p.m[procKey(sandbox, pid)] = m
}

func (p *procRegistry) get(sandbox string, pid uint32) *procMeta {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.m[procKey(sandbox, pid)]
}

func (p *procRegistry) byTag(sandbox, tag string) (uint32, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	prefix := sandbox + "/"
	for k, m := range p.m {
		if m.tag == tag && strings.HasPrefix(k, prefix) {
			var pid uint32
			_, _ = fmt.Sscanf(k[len(prefix):], "%d", &pid)
			return pid, true
		}
	}
	return 0, false
}
