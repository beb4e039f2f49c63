package orkestr

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Error is an error the API answered with: an HTTP status and a code of
// the API's error table. Every typed error below wraps one, so
// errors.As(err, &e) with e *Error matches any API error.
type Error struct {
	Status    int            // HTTP status, e.g. 404
	Code      string         // e.g. "sandbox_not_found"; "" if the answer had no error body
	Message   string         // a human sentence
	RequestID string         // X-Request-Id of the answer; quote it in bug reports
	Details   map[string]any // code-specific details, as decoded from JSON
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("orkestr: ")
	if e.Code != "" {
		b.WriteString(e.Code)
	} else {
		fmt.Fprintf(&b, "HTTP %d", e.Status)
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.RequestID != "" {
		b.WriteString(" (request ")
		b.WriteString(e.RequestID)
		b.WriteString(")")
	}
	return b.String()
}

// apiError lets the typed errors embed *Error (promoting its fields and
// Error method) under a field name that does not clash with that method.
type apiError = Error

// AuthError: the API key is missing, malformed, unknown, revoked or expired
// (401 unauthenticated), or lacks a scope (403 insufficient_scope). It has
// the fields of *Error.
type AuthError struct {
	*apiError
	RequiredScope string // for insufficient_scope, e.g. "sandboxes:write"
}

func (e *AuthError) Unwrap() error { return e.apiError }

// RateLimitError: the plan's request rate was exceeded (429 rate_limited).
// It has the fields of *Error.
type RateLimitError struct {
	*apiError
	RetryAfter time.Duration // how long to wait before the next request
}

func (e *RateLimitError) Unwrap() error { return e.apiError }

// PlanLimitError: the plan does not allow this (402): Code is
// size_not_allowed, concurrency_limit, usage_exhausted or
// snapshot_cap_reached or fork_limit. It has the fields of *Error.
type PlanLimitError struct {
	*apiError
	ResetsAt time.Time // for usage_exhausted: when the usage counters reset; else zero
}

func (e *PlanLimitError) Unwrap() error { return e.apiError }

// SnapshotCapReachedError: pausing would keep more paused sandboxes than
// the plan allows (402 snapshot_cap_reached). It is also a
// *PlanLimitError: errors.As matches both.
type SnapshotCapReachedError struct {
	*PlanLimitError
	Cap int // paused sandboxes the plan keeps
}

func (e *SnapshotCapReachedError) Unwrap() error { return e.PlanLimitError }

// SandboxNotFoundError: no sandbox with this id exists in the account
// (404 sandbox_not_found). It has the fields of *Error.
type SandboxNotFoundError struct {
	*apiError
}

func (e *SandboxNotFoundError) Unwrap() error { return e.apiError }

// SandboxNotReadyError: the operation needs a running sandbox and this one
// is not (409 sandbox_not_ready). It has the fields of *Error.
type SandboxNotReadyError struct {
	*apiError
	SandboxStatus SandboxStatus // the sandbox's status, e.g. "paused"
}

func (e *SandboxNotReadyError) Unwrap() error { return e.apiError }

// ExecTimeoutError: the command ran longer than its timeout and was killed
// with its children (408 exec_timeout). It has the fields of *Error.
// Stdout and Stderr hold the output up to the kill; from a stream they are
// empty, as the output was already delivered as chunks.
type ExecTimeoutError struct {
	*apiError
	Stdout     string
	Stderr     string
	DurationMS int64
}

func (e *ExecTimeoutError) Unwrap() error { return e.apiError }

// NetworkPolicyError: the command exited non-zero and the sandbox's
// network policy blocked at least one of its connections during it. It is
// returned by the exec calls (together with the result) and is not an API
// error: it wraps no *Error.
type NetworkPolicyError struct {
	Result *ExecResult
}

func (e *NetworkPolicyError) Error() string {
	hosts := make([]string, len(e.Result.BlockedConnections))
	for i, b := range e.Result.BlockedConnections {
		hosts[i] = b.String()
	}
	return fmt.Sprintf("orkestr: the command exited with code %d after the network policy blocked connections to %s",
		e.Result.ExitCode, strings.Join(hosts, ", "))
}

// checkNetworkPolicy returns a *NetworkPolicyError for a failed command
// that had connections blocked, else nil.
func checkNetworkPolicy(res *ExecResult) error {
	if res.ExitCode != 0 && len(res.BlockedConnections) > 0 {
		return &NetworkPolicyError{Result: res}
	}
	return nil
}

// errorBody is the API's error answer.
type errorBody struct {
	Error *errorPayload `json:"error"`
}

type errorPayload struct {
	Code    string         `json:"code"`
	Message string         `json:"message"`
	Details map[string]any `json:"details"`
}

// readAPIError turns a non-2xx answer into an error and closes its body.
func readAPIError(resp *http.Response) error {
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var body errorBody
	e := &Error{Status: resp.StatusCode, RequestID: resp.Header.Get("X-Request-Id")}
	if json.Unmarshal(raw, &body) == nil && body.Error != nil && body.Error.Code != "" {
		e.Code, e.Message, e.Details = body.Error.Code, body.Error.Message, body.Error.Details
	} else {
		// Not the API's error body (a proxy, a load balancer): keep a
		// short, printable excerpt.
		e.Message = http.StatusText(resp.StatusCode)
		if s := strings.TrimSpace(strings.ToValidUTF8(string(raw[:min(len(raw), 200)]), "")); s != "" {
			e.Message += ": " + s
		}
	}
	if e.Details == nil {
		e.Details = map[string]any{}
	}
	err := classify(e)
	if rl, ok := err.(*RateLimitError); ok && rl.RetryAfter == 0 {
		rl.RetryAfter = retryAfterHeader(resp.Header)
	}
	return err
}

// statusOf is the HTTP status of each code, for errors that arrive inside
// an exec stream (whose HTTP status is 200).
var statusOf = map[string]int{
	"unauthenticated": 401, "insufficient_scope": 403, "rate_limited": 429,
	"size_not_allowed": 402, "concurrency_limit": 402, "usage_exhausted": 402, "snapshot_cap_reached": 402,
	"sandbox_not_found": 404, "sandbox_not_ready": 409, "exec_timeout": 408,
	"invalid_request": 400, "unknown_template": 400, "unknown_region": 400,
	"file_not_found": 404, "invalid_path": 400, "payload_too_large": 413,
	"no_capacity": 503, "unavailable": 503, "internal": 500,
	"invalid_archive":   400,
	"process_not_found": 404, "process_stdin_closed": 409, "file_exists": 409,
	"not_a_directory": 400, "permission_denied": 403, "read_only": 409, "busy": 409,
	"io_error": 422, "limit_exceeded": 422,
}

// classify maps an API error to its typed error by HTTP status and code,
// per the error table of the API. 401 and 429 map by status alone; a 402
// with a code this SDK does not know is still a PlanLimitError.
func classify(e *Error) error {
	switch {
	case e.Status == http.StatusUnauthorized,
		e.Status == http.StatusForbidden && e.Code == "insufficient_scope":
		return &AuthError{apiError: e, RequiredScope: detailString(e.Details, "required_scope")}
	case e.Status == http.StatusTooManyRequests:
		return &RateLimitError{apiError: e, RetryAfter: time.Duration(detailInt(e.Details, "retry_after_ms")) * time.Millisecond}
	case e.Status == http.StatusPaymentRequired:
		pl := &PlanLimitError{apiError: e}
		if t, err := time.Parse(time.RFC3339Nano, detailString(e.Details, "resets_at")); err == nil {
			pl.ResetsAt = t
		}
		if e.Code == "snapshot_cap_reached" {
			return &SnapshotCapReachedError{PlanLimitError: pl, Cap: int(detailInt(e.Details, "cap"))}
		}
		return pl
	case e.Status == http.StatusNotFound && e.Code == "sandbox_not_found":
		return &SandboxNotFoundError{apiError: e}
	case e.Status == http.StatusConflict && e.Code == "sandbox_not_ready":
		return &SandboxNotReadyError{apiError: e, SandboxStatus: SandboxStatus(detailString(e.Details, "status"))}
	case e.Status == http.StatusRequestTimeout && e.Code == "exec_timeout":
		return &ExecTimeoutError{apiError: e, Stdout: detailString(e.Details, "stdout"),
			Stderr: detailString(e.Details, "stderr"), DurationMS: detailInt(e.Details, "duration_ms")}
	}
	return e
}

func detailString(d map[string]any, k string) string {
	s, _ := d[k].(string)
	return s
}

func detailInt(d map[string]any, k string) int64 {
	switch v := d[k].(type) {
	case float64:
		return int64(v)
	case json.Number:
		n, _ := v.Int64()
		return n
	}
	return 0
}
