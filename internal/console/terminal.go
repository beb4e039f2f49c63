package console

import (
	"net/http"
)

// terminal hands a member's WebSocket upgrade to the API's terminal
// endpoint (GET /v1/sandboxes/{id}/pty) for their account: the API checks
// tenancy and the plan and that the Origin is this server, so another
// site cannot open a terminal with the member's cookie.
func (c *Console) terminal(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	if !sandboxIDRE.MatchString(id) {
		writeJSONError(w, http.StatusNotFound, "sandbox_not_found", "No sandbox with this id exists in your account.")
		return
	}
	req := r.Clone(r.Context())
	req.URL.Path = "/v1/sandboxes/" + id + "/pty"
	req.URL.RawPath = ""
	req.URL.RawQuery = ""
	req.RequestURI = req.URL.Path
	// The console's session stays with the console.
	req.Header.Del("Cookie")
	c.o.API.ServeAccount(w, req, s.AccountID)
}
