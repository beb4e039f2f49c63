// Package orkestr is the Go client of the orkestr REST API: sandboxes for
// AI agents, their commands, files, metrics and plan limits.
//
// A Client holds the API key and base URL; every call takes a
// context.Context and has no timeout of its own beyond it:
//
//	c, err := orkestr.NewClient() // ORKESTR_API_KEY, ORKESTR_BASE_URL
//	err = c.WithTempSandbox(ctx, orkestr.CreateParams{Template: "python-3.12"}, func(sbx *orkestr.Sandbox) error {
//		if err := sbx.Files().Write(ctx, "/workspace/main.py", "print(sum(range(1_000_000)))"); err != nil {
//			return err
//		}
//		res, err := sbx.Exec(ctx, "python /workspace/main.py", orkestr.ExecOptions{})
//		if err != nil {
//			return err
//		}
//		fmt.Print(res.Stdout) // 499999500000
//		return nil
//	})
//
// Errors the API answers with are *Error values, or one of the typed errors
// that wrap one (AuthError, RateLimitError, PlanLimitError,
// SnapshotCapReachedError, SandboxNotFoundError, SandboxNotReadyError,
// ExecTimeoutError); match them with errors.As.
package orkestr

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Version is the version of this SDK, sent in the User-Agent header.
const Version = "0.1.0"

// DefaultBaseURL is used when neither WithBaseURL nor ORKESTR_BASE_URL
// gives one.
const DefaultBaseURL = "https://api.orkestr.eu"

// Defaults of the retry policy.
const (
	DefaultMaxRetries  = 3
	DefaultRetryBudget = 10 * time.Second
)

// Client talks to one orkestr API with one API key. It is safe for
// concurrent use. Its String and GoString never show the key.
type Client struct {
	base        *url.URL
	apiKey      func() string // a func, so that no way of printing a Client shows the key
	http        *http.Client
	maxRetries  int
	retryBudget time.Duration
	userAgent   string
	backoff     time.Duration // first backoff step; tests shorten it
}

// Option configures a Client.
type Option func(*options)

type options struct {
	apiKey      *string
	baseURL     *string
	httpClient  *http.Client
	maxRetries  int
	retryBudget time.Duration
	caBundle    *string
}

// WithAPIKey sets the API key (ork_…). Without it, ORKESTR_API_KEY is used.
func WithAPIKey(key string) Option { return func(o *options) { o.apiKey = &key } }

// WithBaseURL sets the API's base URL, e.g. "http://localhost:8080".
// Without it, ORKESTR_BASE_URL is used, else DefaultBaseURL. A trailing
// "/v1" is accepted and ignored.
func WithBaseURL(u string) Option { return func(o *options) { o.baseURL = &u } }

// WithHTTPClient sets the HTTP client for all calls. Its Timeout, if any,
// also bounds streamed exec output and file transfers.
func WithHTTPClient(hc *http.Client) Option { return func(o *options) { o.httpClient = hc } }

// WithCABundle adds the CA certificates in a PEM file to the system's
// trusted roots, for a server whose certificate a private CA issued.
// Without it, ORKESTR_CA_BUNDLE names such a file. It applies to the
// default HTTP client only; with WithHTTPClient, configure that client's
// TLS instead.
func WithCABundle(path string) Option { return func(o *options) { o.caBundle = &path } }

// WithMaxRetries sets how often an idempotent call (GET, PUT of a file,
// DELETE) is retried after a 429, a 503 or a network error; 0 disables
// retries. The default is DefaultMaxRetries.
func WithMaxRetries(n int) Option { return func(o *options) { o.maxRetries = max(n, 0) } }

// WithRetryBudget bounds the total time one call spends waiting between
// retries; a Retry-After longer than what is left ends the retries. The
// default is DefaultRetryBudget.
func WithRetryBudget(d time.Duration) Option { return func(o *options) { o.retryBudget = max(d, 0) } }

// ErrNoAPIKey is returned by NewClient when no API key is configured.
var ErrNoAPIKey = errors.New("orkestr: no API key: set ORKESTR_API_KEY or use WithAPIKey")

// NewClient returns a client configured by opts, falling back to the
// environment variables ORKESTR_API_KEY and ORKESTR_BASE_URL.
func NewClient(opts ...Option) (*Client, error) {
	o := options{maxRetries: DefaultMaxRetries, retryBudget: DefaultRetryBudget}
	for _, opt := range opts {
		opt(&o)
	}
	key := os.Getenv("ORKESTR_API_KEY")
	if o.apiKey != nil {
		key = *o.apiKey
	}
	key = strings.TrimSpace(key)
	if key == "" {
		return nil, ErrNoAPIKey
	}
	raw := os.Getenv("ORKESTR_BASE_URL")
	if o.baseURL != nil {
		raw = *o.baseURL
	}
	if raw == "" {
		raw = DefaultBaseURL
	}
	base, err := url.Parse(raw)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("orkestr: invalid base URL %q: want http(s)://host[:port][/prefix]", raw)
	}
	base.User = nil
	base.RawQuery, base.Fragment = "", ""
	base.Path = strings.TrimSuffix(strings.TrimSuffix(base.Path, "/"), "/v1")
	base.RawPath = ""
	hc := o.httpClient
	if hc == nil {
		caFile := os.Getenv("ORKESTR_CA_BUNDLE")
		if o.caBundle != nil {
			caFile = *o.caBundle
		}
		if hc, err = defaultHTTPClient(caFile); err != nil {
			return nil, err
		}
	}
	return &Client{
		base: base, apiKey: func() string { return key }, http: hc,
		maxRetries: o.maxRetries, retryBudget: o.retryBudget,
		userAgent: "orkestr-go/" + Version, backoff: 250 * time.Millisecond,
	}, nil
}

// defaultHTTPClient is a plain client, trusting the certificates in caFile
// besides the system's when it is set.
func defaultHTTPClient(caFile string) (*http.Client, error) {
	if caFile == "" {
		return &http.Client{}, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("orkestr: reading the CA bundle: %w", err)
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("orkestr: the CA bundle %s holds no PEM certificate", caFile)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr}, nil
}

// BaseURL is the base URL the client sends requests to.
func (c *Client) BaseURL() string { return c.base.String() }

// String describes the client without its API key.
func (c *Client) String() string {
	return fmt.Sprintf("orkestr.Client{BaseURL: %q, APIKey: <redacted>}", c.base.String())
}

// GoString describes the client without its API key.
func (c *Client) GoString() string { return c.String() }

// request is one API call.
type request struct {
	method string
	path   string // under /v1, already escaped
	query  url.Values
	// json is marshalled as the body when non-nil.
	json any
	// body, when set, is the raw body; rewind (may be nil) returns a fresh
	// copy for a retry.
	body        io.Reader
	rewind      func() (io.Reader, error)
	contentType string
	// accept replaces application/json as the Accept header.
	accept string
}

// idempotent reports whether the call may be repeated after a failure.
func (r *request) idempotent() bool {
	switch r.method {
	case http.MethodGet, http.MethodDelete:
		return true
	case http.MethodPut:
		return r.body == nil || r.rewind != nil
	}
	return false
}

// do sends r and returns the response of a 2xx answer with its body open;
// any other answer becomes an error (see newAPIError). Idempotent calls are
// retried after 429, 503 and network errors.
func (c *Client) do(ctx context.Context, r *request) (*http.Response, error) {
	target := strings.TrimSuffix(c.base.String(), "/") + "/v1" + r.path
	if len(r.query) > 0 {
		target += "?" + r.query.Encode()
	}
	var payload []byte
	if r.json != nil {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(r.json); err != nil {
			return nil, fmt.Errorf("orkestr: encoding the request: %w", err)
		}
		payload = buf.Bytes()
	}
	retry := r.idempotent() && c.maxRetries > 0
	deadline := time.Now().Add(c.retryBudget)
	for attempt := 0; ; attempt++ {
		var body io.Reader
		switch {
		case payload != nil:
			body = bytes.NewReader(payload)
		case attempt > 0 && r.rewind != nil:
			b, err := r.rewind()
			if err != nil {
				return nil, fmt.Errorf("orkestr: rewinding the request body for a retry: %w", err)
			}
			body = b
		default:
			body = r.body
		}
		// A reader of unknown length is sent chunked, as it is read.
		req, err := http.NewRequestWithContext(ctx, r.method, target, body)
		if err != nil {
			return nil, fmt.Errorf("orkestr: %w", scrub(err))
		}
		req.Header.Set("Authorization", "Bearer "+c.apiKey())
		req.Header.Set("User-Agent", c.userAgent)
		if r.accept != "" {
			req.Header.Set("Accept", r.accept+", application/json;q=0.5")
		} else {
			req.Header.Set("Accept", "application/json")
		}
		switch {
		case payload != nil:
			req.Header.Set("Content-Type", "application/json")
		case r.contentType != "":
			req.Header.Set("Content-Type", r.contentType)
		}

		resp, err := c.http.Do(req)
		var wait time.Duration
		var failure error
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("orkestr: %s %s: %w", r.method, r.path, ctx.Err())
			}
			failure = &TransportError{Method: r.method, Path: r.path, Err: scrub(err)}
		} else if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			return resp, nil
		} else {
			failure = readAPIError(resp)
			if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable {
				return nil, failure
			}
			var rl *RateLimitError
			if errors.As(failure, &rl) {
				wait = rl.RetryAfter
			} else {
				wait = retryAfterHeader(resp.Header)
			}
		}
		if !retry || attempt >= c.maxRetries {
			return nil, failure
		}
		// Full jitter on the exponential step, but never less than the
		// server's Retry-After.
		step := c.backoff << attempt
		wait = max(wait, time.Duration(rand.Int64N(int64(step))+1))
		if time.Now().Add(wait).After(deadline) {
			return nil, failure
		}
		if d, ok := ctx.Deadline(); ok && time.Now().Add(wait).After(d) {
			return nil, failure
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("orkestr: %s %s: %w (while waiting to retry after: %v)", r.method, r.path, ctx.Err(), failure)
		case <-t.C:
		}
	}
}

// TransportError is a failure to get any answer from the API: DNS,
// connection refused or reset, TLS, a malformed response.
type TransportError struct {
	Method string
	Path   string
	Err    error
}

func (e *TransportError) Error() string {
	return fmt.Sprintf("orkestr: %s /v1%s: %v", e.Method, e.Path, e.Err)
}

func (e *TransportError) Unwrap() error { return e.Err }

// scrub removes the URL (which may carry user info from a misconfigured
// base URL) from a *url.Error, keeping its cause.
func scrub(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// retryAfterHeader reads Retry-After-Ms or Retry-After (seconds or an HTTP
// date); 0 if absent.
func retryAfterHeader(h http.Header) time.Duration {
	if v := h.Get("Retry-After-Ms"); v != "" {
		if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms >= 0 {
			return time.Duration(ms) * time.Millisecond
		}
	}
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// call sends r and decodes a JSON answer into out (if non-nil).
func (c *Client) call(ctx context.Context, r *request, out any) error {
	resp, err := c.do(ctx, r)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return &TransportError{Method: r.method, Path: r.path, Err: fmt.Errorf("decoding the response: %w", err)}
	}
	return nil
}

// sandboxPath is /sandboxes/{id}[suffix], escaped.
func sandboxPath(id, suffix string) (string, error) {
	if id == "" {
		return "", errors.New("orkestr: empty sandbox id")
	}
	return "/sandboxes/" + url.PathEscape(id) + suffix, nil
}
