package orkestr

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestErrorMapping answers each row of the API's error table and checks
// the typed error, its fields and that it is also an *Error.
func TestErrorMapping(t *testing.T) {
	resets := "2026-12-01T00:00:00.000Z"
	cases := []struct {
		status  int
		code    string
		details map[string]any
		check   func(t *testing.T, err error)
	}{
		{401, "unauthenticated", nil, func(t *testing.T, err error) {
			var e *AuthError
			if !errors.As(err, &e) || e.Code != "unauthenticated" {
				t.Errorf("got %T", err)
			}
		}},
		{403, "insufficient_scope", map[string]any{"required_scope": "sandboxes:write"}, func(t *testing.T, err error) {
			var e *AuthError
			if !errors.As(err, &e) || e.RequiredScope != "sandboxes:write" || e.Status != 403 {
				t.Errorf("got %#v", err)
			}
		}},
		{429, "rate_limited", map[string]any{"retry_after_ms": 1500}, func(t *testing.T, err error) {
			var e *RateLimitError
			if !errors.As(err, &e) || e.RetryAfter != 1500*time.Millisecond {
				t.Errorf("got %#v", err)
			}
		}},
		{402, "size_not_allowed", map[string]any{"size": "large"}, func(t *testing.T, err error) {
			var e *PlanLimitError
			var s *SnapshotCapReachedError
			if !errors.As(err, &e) || e.Code != "size_not_allowed" || errors.As(err, &s) {
				t.Errorf("got %#v", err)
			}
		}},
		{402, "concurrency_limit", map[string]any{"max_concurrent": 1}, func(t *testing.T, err error) {
			var e *PlanLimitError
			if !errors.As(err, &e) || e.Code != "concurrency_limit" || !e.ResetsAt.IsZero() {
				t.Errorf("got %#v", err)
			}
		}},
		{402, "usage_exhausted", map[string]any{"resets_at": resets}, func(t *testing.T, err error) {
			var e *PlanLimitError
			if !errors.As(err, &e) || e.Code != "usage_exhausted" || !e.ResetsAt.Equal(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)) {
				t.Errorf("got %#v", err)
			}
		}},
		{402, "snapshot_cap_reached", map[string]any{"cap": 3}, func(t *testing.T, err error) {
			var s *SnapshotCapReachedError
			var p *PlanLimitError
			if !errors.As(err, &s) || s.Cap != 3 || s.Code != "snapshot_cap_reached" {
				t.Errorf("not a SnapshotCapReachedError: %#v", err)
			}
			if !errors.As(err, &p) || p.Code != "snapshot_cap_reached" || p.Status != 402 {
				t.Errorf("SnapshotCapReachedError is not also a PlanLimitError: %#v", err)
			}
		}},
		{404, "sandbox_not_found", nil, func(t *testing.T, err error) {
			var e *SandboxNotFoundError
			if !errors.As(err, &e) {
				t.Errorf("got %#v", err)
			}
		}},
		{409, "sandbox_not_ready", map[string]any{"status": "paused"}, func(t *testing.T, err error) {
			var e *SandboxNotReadyError
			if !errors.As(err, &e) || e.SandboxStatus != StatusPaused || e.Status != 409 {
				t.Errorf("got %#v", err)
			}
		}},
		{408, "exec_timeout", map[string]any{"stdout": "part", "stderr": "ial", "duration_ms": 60012}, func(t *testing.T, err error) {
			var e *ExecTimeoutError
			if !errors.As(err, &e) || e.Stdout != "part" || e.Stderr != "ial" || e.DurationMS != 60012 {
				t.Errorf("got %#v", err)
			}
		}},
	}
	plain := []struct {
		status int
		code   string
	}{
		{400, "invalid_request"}, {400, "unknown_template"}, {400, "unknown_region"}, {404, "file_not_found"},
		{400, "invalid_path"}, {413, "payload_too_large"}, {503, "no_capacity"}, {503, "unavailable"}, {500, "internal"},
		{403, "forbidden_something"}, {404, "not_found"},
		{400, "not_a_directory"}, {403, "permission_denied"}, {409, "read_only"}, {409, "busy"}, {422, "io_error"}, {422, "limit_exceeded"},
	}
	for _, p := range plain {
		cases = append(cases, struct {
			status  int
			code    string
			details map[string]any
			check   func(t *testing.T, err error)
		}{p.status, p.code, map[string]any{"field": "template"}, func(t *testing.T, err error) {
			if _, ok := err.(*Error); !ok {
				t.Errorf("got %T, want a plain *Error", err)
			}
		}})
	}
	for _, tc := range cases {
		t.Run(tc.code, func(t *testing.T) {
			c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Request-Id", "req_"+tc.code)
				writeAPIError(w, tc.status, tc.code, "Human sentence.", tc.details)
			}, WithMaxRetries(0))
			_, err := c.GetSandbox(context.Background(), "sbx_1")
			tc.check(t, err)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("%T is not an *Error", err)
			}
			if e.Status != tc.status || e.Code != tc.code || e.Message != "Human sentence." || e.RequestID != "req_"+tc.code {
				t.Errorf("*Error = %+v", e)
			}
			if tc.details != nil && len(e.Details) != len(tc.details) {
				t.Errorf("details = %v", e.Details)
			}
			for _, part := range []string{tc.code, "Human sentence.", "req_" + tc.code} {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("Error() = %q, missing %q", err.Error(), part)
				}
			}
		})
	}
}
