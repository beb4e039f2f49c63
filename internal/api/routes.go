package api

import (
	"net/http"

	"github.com/orkestr-eu/orkestr/api"
	"github.com/orkestr-eu/orkestr/internal/store"
)

// Route is one endpoint, listed for the OpenAPI consistency test.
type Route struct{ Method, Path string }

// routeTable is every endpoint of the API, in one place.
func (s *Server) routeTable() []struct {
	Route
	h http.HandlerFunc
} {
	r, w := store.ScopeSandboxesRead, store.ScopeSandboxesWrite
	return []struct {
		Route
		h http.HandlerFunc
	}{
		{Route{"GET", "/v1/limits"}, s.authed(r, s.getLimits)},
		{Route{"GET", "/v1/usage"}, s.authed(r, s.getUsage)},
		{Route{"GET", "/v1/templates"}, s.authed(r, s.listTemplates)},
		{Route{"POST", "/v1/sandboxes"}, s.authed(w, timedVec(s.om.create, s.createSandbox))},
		{Route{"GET", "/v1/sandboxes"}, s.authed(r, s.listSandboxes)},
		{Route{"GET", "/v1/sandboxes/{id}"}, s.authed(r, s.getSandbox)},
		{Route{"PATCH", "/v1/sandboxes/{id}"}, s.authed(w, s.patchSandbox)},
		{Route{"DELETE", "/v1/sandboxes/{id}"}, s.authed(w, s.deleteSandbox)},
		{Route{"POST", "/v1/sandboxes/{id}/pause"}, s.authed(w, s.pauseSandbox)},
		{Route{"POST", "/v1/sandboxes/{id}/resume"}, s.authed(w, s.resumeSandbox)},
		{Route{"POST", "/v1/sandboxes/{id}/exec"}, s.authed(w, timedVec(s.om.exec, s.exec, "sync"))},
		{Route{"POST", "/v1/sandboxes/{id}/exec/stream"}, s.authed(w, timedVec(s.om.exec, s.execStream, "stream"))},
		{Route{"GET", "/v1/sandboxes/{id}/files"}, s.authed(r, s.readFile)},
		{Route{"PUT", "/v1/sandboxes/{id}/files"}, s.authed(w, s.writeFile)},
		{Route{"DELETE", "/v1/sandboxes/{id}/files"}, s.authed(w, s.deleteFile)},
		{Route{"GET", "/v1/sandboxes/{id}/files/list"}, s.authed(r, s.listFiles)},
		{Route{"GET", "/v1/sandboxes/{id}/metrics"}, s.authed(r, s.metrics)},
		{Route{"GET", "/v1/openapi.yaml"}, s.openapi},
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
	for _, e := range s.routeTable() {
		s.mux.HandleFunc(e.Method+" "+e.Path, e.h)
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, apiErr(http.StatusNotFound, "not_found", "No such endpoint: %s %s. See /v1/openapi.yaml.", r.Method, r.URL.Path))
	})
}

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(api.OpenAPI)
}
