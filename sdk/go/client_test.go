package orkestr

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestNewClientDefaultsFromEnv(t *testing.T) {
	t.Setenv("ORKESTR_API_KEY", "")
	t.Setenv("ORKESTR_BASE_URL", "")
	if _, err := NewClient(); !errors.Is(err, ErrNoAPIKey) {
		t.Fatalf("no key: err = %v, want ErrNoAPIKey", err)
	}
	t.Setenv("ORKESTR_API_KEY", testKey)
	c, err := NewClient()
	if err != nil {
		t.Fatal(err)
	}
	if c.BaseURL() != DefaultBaseURL {
		t.Errorf("BaseURL = %q, want %q", c.BaseURL(), DefaultBaseURL)
	}
	t.Setenv("ORKESTR_BASE_URL", "http://localhost:8080/v1/")
	c, err = NewClient()
	if err != nil {
		t.Fatal(err)
	}
	if c.BaseURL() != "http://localhost:8080" {
		t.Errorf("BaseURL = %q, want the /v1 suffix dropped", c.BaseURL())
	}
	c, err = NewClient(WithBaseURL("https://proxy.example/orkestr"), WithAPIKey("ork_other"))
	if err != nil {
		t.Fatal(err)
	}
	if c.BaseURL() != "https://proxy.example/orkestr" || c.apiKey() != "ork_other" {
		t.Errorf("options did not win over the environment: %q", c.BaseURL())
	}
	for _, bad := range []string{"ftp://x", "localhost:8080", "http://"} {
		if _, err := NewClient(WithBaseURL(bad)); err == nil {
			t.Errorf("base URL %q: no error", bad)
		}
	}
}

func TestRequestHeadersAndPath(t *testing.T) {
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Get("Authorization"); got != "Bearer "+testKey {
			t.Errorf("Authorization = %q", got)
		}
		if got := r.Header.Get("User-Agent"); got != "orkestr-go/"+Version {
			t.Errorf("User-Agent = %q", got)
		}
		if r.URL.Path != "/prefix/v1/sandboxes/sbx_1" {
			t.Errorf("path = %q", r.URL.Path)
		}
		writeJSON(w, 200, sandboxObj("sbx_1", "running"))
	})
	c.base.Path = "/prefix"
	if _, err := c.GetSandbox(context.Background(), "sbx_1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetSandbox(context.Background(), ""); err == nil {
		t.Error("empty id: no error")
	}
}

// TestAPIKeyNeverShown checks every way a key could surface: printing the
// client or a sandbox, and the text of every kind of error.
func TestAPIKeyNeverShown(t *testing.T) {
	c, srv := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/limits":
			writeAPIError(w, 401, "unauthenticated", "The API key is unknown.", nil)
		case "/v1/templates":
			w.WriteHeader(502)
			_, _ = w.Write([]byte("<html>bad gateway</html>"))
		default:
			writeJSON(w, 200, sandboxObj("sbx_1", "running"))
		}
	}, WithMaxRetries(0))
	ctx := context.Background()
	sb, err := c.GetSandbox(ctx, "sbx_1")
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	for _, v := range []any{c, *c, sb, *sb} {
		texts = append(texts, fmt.Sprintf("%v|%+v|%#v|%s", v, v, v, v))
	}
	_, err = c.Limits(ctx)
	texts = append(texts, err.Error(), fmt.Sprintf("%+v %#v", err, err))
	_, err = c.Templates(ctx)
	texts = append(texts, err.Error(), fmt.Sprintf("%+v %#v", err, err))
	srv.Close() // transport errors
	_, err = c.GetSandbox(ctx, "sbx_1")
	if err == nil {
		t.Fatal("closed server: no error")
	}
	texts = append(texts, err.Error(), fmt.Sprintf("%+v %#v", err, err))
	_, err = NewClient(WithAPIKey(testKey), WithBaseURL("::bad::"))
	texts = append(texts, err.Error())
	c2, _ := NewClient(WithAPIKey(testKey), WithBaseURL("http://user:"+testKey+"@127.0.0.1:1"))
	_, err = c2.Limits(ctx)
	texts = append(texts, err.Error(), c2.String(), c2.BaseURL())
	for _, s := range texts {
		if strings.Contains(s, testKey) || strings.Contains(s, testKey[4:20]) {
			t.Errorf("the API key shows in %q", s)
		}
	}
	if !strings.Contains(c.String(), "<redacted>") {
		t.Errorf("String() = %q, want the key redacted", c.String())
	}
}

func TestRetry429HonoursRetryAfter(t *testing.T) {
	var calls counter
	var first time.Time
	var second time.Time
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		switch calls.inc() {
		case 1:
			first = time.Now()
			w.Header().Set("Retry-After", "1")
			writeAPIError(w, 429, "rate_limited", "Too many requests.", nil)
		default:
			second = time.Now()
			writeJSON(w, 200, sandboxObj("sbx_1", "running"))
		}
	})
	if _, err := c.GetSandbox(context.Background(), "sbx_1"); err != nil {
		t.Fatal(err)
	}
	if calls.get() != 2 {
		t.Fatalf("%d requests, want 2", calls.get())
	}
	if d := second.Sub(first); d < time.Second {
		t.Errorf("retried after %v, want at least the Retry-After of 1s", d)
	}
}

func TestRetryAfterMsFromBody(t *testing.T) {
	var calls counter
	var first, second time.Time
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if calls.inc() == 1 {
			first = time.Now()
			w.Header().Set("Retry-After", "1")
			writeAPIError(w, 429, "rate_limited", "Too many requests.", map[string]any{"retry_after_ms": 300})
			return
		}
		second = time.Now()
		writeJSON(w, 200, map[string]any{"data": []any{}})
	})
	if _, err := c.Templates(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := second.Sub(first); d < 300*time.Millisecond || d > 900*time.Millisecond {
		t.Errorf("retried after %v, want the 300ms of details.retry_after_ms", d)
	}
}

func TestRateLimitErrorAfterRetriesAndBudget(t *testing.T) {
	var calls counter
	retryAfter := "0"
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		calls.inc()
		w.Header().Set("Retry-After", retryAfter)
		writeAPIError(w, 429, "rate_limited", "Too many requests.", nil)
	})
	_, err := c.Limits(context.Background())
	var rl *RateLimitError
	if !errors.As(err, &rl) {
		t.Fatalf("err = %v, want *RateLimitError", err)
	}
	if calls.get() != DefaultMaxRetries+1 {
		t.Errorf("%d requests, want %d", calls.get(), DefaultMaxRetries+1)
	}

	// A Retry-After beyond the retry budget is not waited for.
	calls.n.Store(0)
	retryAfter = "30"
	start := time.Now()
	_, err = c.Limits(context.Background())
	if !errors.As(err, &rl) || rl.RetryAfter != 30*time.Second {
		t.Fatalf("err = %v, want *RateLimitError with RetryAfter 30s", err)
	}
	if calls.get() != 1 || time.Since(start) > 2*time.Second {
		t.Errorf("%d requests in %v, want 1 and no wait", calls.get(), time.Since(start))
	}
}

func TestRetryCancelledByContext(t *testing.T) {
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "5")
		writeAPIError(w, 503, "unavailable", "Busy.", nil)
	})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.Limits(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("cancel took %v", time.Since(start))
	}
}

func TestRetry503AndNetworkErrors(t *testing.T) {
	var calls counter
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		switch calls.inc() {
		case 1:
			writeAPIError(w, 503, "no_capacity", "Retry shortly.", nil)
		case 2: // the connection dies without an answer
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		default:
			w.WriteHeader(204)
		}
	})
	if err := c.Sandbox("sbx_1").Files().Delete(context.Background(), "/workspace/x"); err != nil {
		t.Fatal(err)
	}
	if calls.get() != 3 {
		t.Errorf("%d requests, want 3", calls.get())
	}
}

// TestNoRetryOfPost checks that no POST (nor PATCH) is ever repeated: a retry could
// create a second sandbox or run a command twice.
func TestNoRetryOfPost(t *testing.T) {
	for _, status := range []int{429, 503, 0} {
		var calls counter
		c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
			calls.inc()
			if status == 0 {
				conn, _, _ := w.(http.Hijacker).Hijack()
				conn.Close()
				return
			}
			w.Header().Set("Retry-After", "0")
			writeAPIError(w, status, "rate_limited", "No.", nil)
		})
		ctx := context.Background()
		sb := c.Sandbox("sbx_1")
		calls2 := []func() error{
			func() error { _, err := c.CreateSandbox(ctx, CreateParams{Template: "python-3.12"}); return err },
			func() error { _, err := sb.Exec(ctx, "true", ExecOptions{}); return err },
			func() error { _, err := sb.ExecStream(ctx, "true", ExecOptions{}); return err },
			func() error { _, err := sb.Pause(ctx); return err },
			func() error { return sb.Resume(ctx) },
			func() error { _, err := c.ResumeSandbox(ctx, "sbx_1"); return err },
			func() error { return sb.Update(ctx, UpdateParams{Metadata: map[string]string{}}) },
		}
		for i, call := range calls2 {
			calls.n.Store(0)
			if err := call(); err == nil {
				t.Fatalf("status %d, call %d: no error", status, i)
			}
			if calls.get() != 1 {
				t.Errorf("status %d, call %d: %d requests, want 1", status, i, calls.get())
			}
		}
	}
}

func TestUnknownStatusAndNonJSONError(t *testing.T) {
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "req_gw")
		w.WriteHeader(502)
		_, _ = w.Write([]byte("<html>Bad Gateway</html>"))
	})
	_, err := c.Templates(context.Background())
	var e *Error
	if !errors.As(err, &e) || e.Status != 502 || e.Code != "" || e.RequestID != "req_gw" {
		t.Fatalf("err = %#v", err)
	}
	if !strings.Contains(e.Error(), "HTTP 502") || !strings.Contains(e.Error(), "Bad Gateway") {
		t.Errorf("Error() = %q", e.Error())
	}
}
