package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/orkestr-eu/orkestr/internal/nodeapi"
)

// Error is an API error: the one place where failures become HTTP statuses
// and codes of the contract.
type Error struct {
	Status  int
	Code    string
	Message string
	Details map[string]any
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func apiErr(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) with(k string, v any) *Error {
	if e.Details == nil {
		e.Details = map[string]any{}
	}
	e.Details[k] = v
	return e
}

func invalid(field, format string, args ...any) *Error {
	return apiErr(http.StatusBadRequest, "invalid_request", format, args...).with("field", field)
}

func notFound() *Error {
	return apiErr(http.StatusNotFound, "sandbox_not_found", "No sandbox with this id exists in your account.")
}

func notReady(status string) *Error {
	return apiErr(http.StatusConflict, "sandbox_not_ready", "The sandbox is %s; this operation needs a running sandbox.", status).with("status", status)
}

// errNodeUnavailable answers a call whose sandbox's node did not answer.
var errNodeUnavailable = apiErr(http.StatusServiceUnavailable, "node_unavailable", "The node running this sandbox is not answering right now; retry shortly. If it does not come back within its heartbeat timeout the sandbox ends with reason node_lost.")

var errInternal = apiErr(http.StatusInternalServerError, "internal", "Something went wrong on our side. Quote the request id when you report it.")

type errorBody struct {
	Error struct {
		Code    string         `json:"code"`
		Message string         `json:"message"`
		Details map[string]any `json:"details"`
	} `json:"error"`
}

// writeError answers with err. Anything that is not an *Error is logged with
// the request id and answered as "internal" without its text.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var e *Error
	switch {
	case errors.As(err, &e):
	case errors.Is(err, nodeapi.ErrUnreachable):
		// Any call that needed the sandbox's node, whichever handler
		// made it: the node may come back, so it is no server fault.
		s.log.Warn("a sandbox's node did not answer a call", "request_id", requestID(r), "method", r.Method, "path", r.URL.Path, "err", err)
		e = errNodeUnavailable
	default:
		s.log.Error("request failed", "request_id", requestID(r), "method", r.Method, "path", r.URL.Path, "err", err)
		e = errInternal
	}
	var body errorBody
	body.Error.Code = e.Code
	body.Error.Message = e.Message
	body.Error.Details = e.Details
	if body.Error.Details == nil {
		body.Error.Details = map[string]any{}
	}
	if e.Status == http.StatusUnauthorized {
		// RFC 9110 §11.6.1 / RFC 6750 §3: a 401 names its scheme.
		w.Header().Set("WWW-Authenticate", `Bearer realm="orkestr"`)
	}
	writeJSON(w, e.Status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}
