package orkestr

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

const testKey = "ork_TESTKEYabcdefghijklmnopqrstuvwxyz0123456789"

// newTestClient starts h as the API and returns a client for it with fast
// retries.
func newTestClient(t *testing.T, h http.HandlerFunc, opts ...Option) (*Client, *httptest.Server) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := NewClient(append([]Option{WithAPIKey(testKey), WithBaseURL(srv.URL)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	c.backoff = time.Millisecond
	return c, srv
}

// writeJSON answers like the API does.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	if w.Header().Get("X-Request-Id") == "" {
		w.Header().Set("X-Request-Id", "req_TEST")
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeAPIError(w http.ResponseWriter, status int, code, msg string, details map[string]any) {
	if details == nil {
		details = map[string]any{}
	}
	writeJSON(w, status, map[string]any{"error": map[string]any{"code": code, "message": msg, "details": details}})
}

// decodeStrict decodes a request body as the API does: unknown fields are
// an error.
func decodeStrict(t *testing.T, r *http.Request, v any) {
	t.Helper()
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Errorf("request body: %v", err)
	}
}

// bodyMap decodes a JSON request body into a generic map.
func bodyMap(t *testing.T, r *http.Request) map[string]any {
	t.Helper()
	raw, _ := io.ReadAll(r.Body)
	m := map[string]any{}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Errorf("request body %q: %v", raw, err)
	}
	return m
}

const sandboxJSON = `{"id": "sbx_01HXYZ", "status": "running", "template": "python-3.12",
 "size": "small", "cpu": 0.5, "memory_mb": 512, "network": "off", "region": "fsn1",
 "timeout_seconds": 600, "expires_at": "2026-05-01T10:10:00.000Z", "env_keys": ["OPENAI_API_KEY"],
 "metadata": {"agentRun": "r_123", "Mixed_Case-Key": "V"}, "created_at": "2026-05-01T10:00:00.123Z", "paused_at": null,
 "terminated_at": null}`

func sandboxObj(id, status string) map[string]any {
	m := map[string]any{}
	_ = json.Unmarshal([]byte(sandboxJSON), &m)
	m["id"], m["status"] = id, status
	return m
}

// counter counts requests.
type counter struct{ n atomic.Int32 }

func (c *counter) inc() int { return int(c.n.Add(1)) }
func (c *counter) get() int { return int(c.n.Load()) }
