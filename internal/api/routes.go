package api

import (
	"net/http"
	"slices"
	"strings"

	"github.com/orkestr-eu/orkestr/api"
	"github.com/orkestr-eu/orkestr/internal/store"
)

// Route is one endpoint, listed for the OpenAPI consistency test.
type Route struct{ Method, Path string }

// endpoint is one route with the scope it needs and its handler before
// authentication.
type endpoint struct {
	Route
	scope string // "" for public endpoints
	h     handler
}

// routeTable is every endpoint of the API, in one place.
func (s *Server) routeTable() []endpoint {
	r, w := store.ScopeSandboxesRead, store.ScopeSandboxesWrite
	return []endpoint{
		{Route{"GET", "/v1/limits"}, r, s.getLimits},
		{Route{"GET", "/v1/usage"}, r, s.getUsage},
		{Route{"GET", "/v1/templates"}, r, s.listTemplates},
		{Route{"GET", "/v1/regions"}, r, s.listRegions},
		{Route{"GET", "/v1/nodes"}, r, s.listNodes},
		{Route{"POST", "/v1/sandboxes"}, w, timedVec(s.om.create, s.createSandbox)},
		{Route{"GET", "/v1/sandboxes"}, r, s.listSandboxes},
		{Route{"GET", "/v1/sandboxes/{id}"}, r, s.getSandbox},
		{Route{"PATCH", "/v1/sandboxes/{id}"}, w, s.patchSandbox},
		{Route{"DELETE", "/v1/sandboxes/{id}"}, w, s.deleteSandbox},
		{Route{"POST", "/v1/sandboxes/{id}/pause"}, w, s.pauseSandbox},
		{Route{"POST", "/v1/sandboxes/{id}/resume"}, w, s.resumeSandbox},
		{Route{"POST", "/v1/sandboxes/{id}/fork"}, w, s.forkSandbox},
		{Route{"POST", "/v1/sandboxes/{id}/exec"}, w, timedVec(s.om.exec, s.exec, "sync")},
		{Route{"POST", "/v1/sandboxes/{id}/exec/stream"}, w, timedVec(s.om.exec, s.execStream, "stream")},
		{Route{"GET", "/v1/sandboxes/{id}/files"}, r, s.readFile},
		{Route{"PUT", "/v1/sandboxes/{id}/files"}, w, s.writeFile},
		{Route{"DELETE", "/v1/sandboxes/{id}/files"}, w, s.deleteFile},
		{Route{"GET", "/v1/sandboxes/{id}/files/list"}, r, s.listFiles},
		{Route{"PUT", "/v1/sandboxes/{id}/files/archive"}, w, s.putArchive},
		{Route{"GET", "/v1/sandboxes/{id}/files/archive"}, r, s.getArchive},
		{Route{"GET", "/v1/sandboxes/{id}/metrics"}, r, s.metrics},
		{Route{"GET", "/v1/sandboxes/{id}/pty"}, w, s.openPty},
		{Route{"POST", "/v1/sandboxes/{id}/processes"}, w, s.startProcess},
		{Route{"GET", "/v1/sandboxes/{id}/processes"}, r, s.listProcesses},
		{Route{"GET", "/v1/sandboxes/{id}/processes/{pid}"}, r, s.getProcess},
		{Route{"GET", "/v1/sandboxes/{id}/processes/{pid}/output"}, r, s.processOutput},
		{Route{"POST", "/v1/sandboxes/{id}/processes/{pid}/stdin"}, w, s.processStdin},
		{Route{"POST", "/v1/sandboxes/{id}/processes/{pid}/signal"}, w, s.signalProcess},
		{Route{"POST", "/v1/sandboxes/{id}/processes/{pid}/wait"}, r, s.waitProcess},
		{Route{"GET", "/v1/sandboxes/{id}/files/stat"}, r, s.statFile},
		{Route{"GET", "/v1/sandboxes/{id}/files/exists"}, r, s.fileExists},
		{Route{"POST", "/v1/sandboxes/{id}/files/mkdir"}, w, s.makeDir},
		{Route{"POST", "/v1/sandboxes/{id}/files/rename"}, w, s.renameFile},
		{Route{"GET", "/v1/sandboxes/{id}/files/watch"}, r, s.watchFiles},
		{Route{"GET", "/v1/openapi.yaml"}, "", func(w http.ResponseWriter, r *http.Request) error { s.openapi(w, r); return nil }},
	}
}

// Routes lists every endpoint.
func (s *Server) Routes() []Route {
	var out []Route
	for _, e := range s.routeTable() {
		out = append(out, e.Route)
	}
	return out
}

func (s *Server) routes() {
	s.mux = http.NewServeMux()
	s.accountMux = http.NewServeMux()
	for _, e := range s.routeTable() {
		if e.scope == "" {
			h := e.h
			s.mux.HandleFunc(e.Method+" "+e.Path, func(w http.ResponseWriter, r *http.Request) { _ = h(w, r) })
			continue
		}
		s.mux.HandleFunc(e.Method+" "+e.Path, s.authed(e.scope, e.h))
		s.accountMux.HandleFunc(e.Method+" "+e.Path, s.asAccount(e.h))
	}
	table := s.routeTable()
	notFound := func(w http.ResponseWriter, r *http.Request) {
		if allow := allowedMethods(table, r.URL.Path); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			s.writeError(w, r, apiErr(http.StatusMethodNotAllowed, "method_not_allowed", "%s is not a method of %s; it allows %s. See /v1/openapi.yaml.", r.Method, r.URL.Path, strings.Join(allow, ", ")).
				with("allow", allow))
			return
		}
		s.writeError(w, r, apiErr(http.StatusNotFound, "not_found", "No such endpoint: %s %s. See /v1/openapi.yaml.", r.Method, r.URL.Path))
	}
	s.mux.HandleFunc("/", notFound)
	s.accountMux.HandleFunc("/", notFound)
}

// allowedMethods lists the methods of the endpoints whose pattern matches
// path ({x} matches one segment), in the route table's order; none if no
// endpoint has this path.
func allowedMethods(table []endpoint, path string) []string {
	var out []string
	for _, e := range table {
		if matchPattern(e.Path, path) && !slices.Contains(out, e.Method) {
			out = append(out, e.Method)
		}
	}
	return out
}

func matchPattern(pattern, path string) bool {
	ps, xs := strings.Split(pattern, "/"), strings.Split(path, "/")
	if len(ps) != len(xs) {
		return false
	}
	for i, p := range ps {
		if strings.HasPrefix(p, "{") && strings.HasSuffix(p, "}") {
			if xs[i] == "" {
				return false
			}
			continue
		}
		if p != xs[i] {
			return false
		}
	}
	return true
}

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(api.OpenAPI)
}
