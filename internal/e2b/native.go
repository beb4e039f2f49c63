package e2b

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
)

// Native is the part of orkestr's own API this package calls: every E2B
// call becomes one or more native calls, served in-process by the same
// handlers as /v1, so authentication, scopes, rate limits, plan limits,
// tenancy and metering are exactly those of a native call.
type Native interface {
	// Handler serves /v1 requests authenticated by their Authorization header.
	Handler() http.Handler
	// ServeAccount serves a /v1 request on behalf of an account.
	ServeAccount(w http.ResponseWriter, r *http.Request, accountID string)
}

// caller makes native calls as one principal: an API key (control plane)
// or an account (the daemon side, authenticated by a sandbox's access token).
type caller struct {
	native     Native
	key        string // Authorization: Bearer key, or
	account    string // ServeAccount(account)
	remoteAddr string // the SDK's address, for the native failed-auth limiter
}

// nativeError is the native error body.
type nativeError struct {
	Status  int
	Code    string         `json:"code"`
	Message string         `json:"message"`
	Details map[string]any `json:"details"`
}

func (e *nativeError) Error() string { return e.Message }

// do serves one native request in-process and returns its response while
// the handler may still be writing it (streams). The body must be closed;
// closing it cancels the handler's context.
func (c *caller) do(ctx context.Context, method, path string, q url.Values, body io.Reader, contentType string) (*http.Response, error) {
	ctx, cancel := context.WithCancel(ctx)
	u := "http://orkestr.internal" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		cancel()
		return nil, err
	}
	req.RemoteAddr = c.remoteAddr
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	pr, pw := io.Pipe()
	w := &pipeWriter{hdr: http.Header{}, pw: pw, ready: make(chan struct{})}
	go func() {
		defer func() {
			if v := recover(); v != nil {
				// http.ErrAbortHandler: the handler gave up on the response.
				pw.CloseWithError(fmt.Errorf("native handler aborted: %v", v))
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			w.WriteHeader(http.StatusOK)
			pw.Close()
		}()
		if c.account != "" {
			c.native.ServeAccount(w, req, c.account)
			return
		}
		req.Header.Set("Authorization", "Bearer "+c.key)
		c.native.Handler().ServeHTTP(w, req)
	}()
	select {
	case <-w.ready:
	case <-ctx.Done():
		pr.Close()
		cancel()
		return nil, ctx.Err()
	}
	return &http.Response{
		StatusCode: w.status, Header: w.sent,
		Body: &cancelBody{ReadCloser: pr, cancel: cancel},
	}, nil
}

// json makes a native call with a JSON body (nil: none) and decodes a 2xx
// answer into out (nil: discard). A non-2xx answer is a *nativeError.
func (c *caller) json(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, ct = bytes.NewReader(b), "application/json"
	}
	resp, err := c.do(ctx, method, path, q, body, ct)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := errorOf(resp); err != nil {
		return err
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// errorOf reads a non-2xx native answer into a *nativeError.
func errorOf(resp *http.Response) error {
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	var env struct {
		Error nativeError `json:"error"`
	}
	_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&env)
	e := env.Error
	e.Status = resp.StatusCode
	if e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
	}
	return &e
}

type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	b.cancel()
	return b.ReadCloser.Close()
}

// pipeWriter is an http.ResponseWriter whose body is read, as it is
// written, from the other end of a pipe.
type pipeWriter struct {
	hdr    http.Header
	sent   http.Header
	status int
	pw     *io.PipeWriter
	once   sync.Once
	ready  chan struct{}
}

func (p *pipeWriter) Header() http.Header { return p.hdr }

func (p *pipeWriter) WriteHeader(code int) {
	p.once.Do(func() {
		p.status, p.sent = code, p.hdr.Clone()
		close(p.ready)
	})
}

func (p *pipeWriter) Write(b []byte) (int, error) {
	p.WriteHeader(http.StatusOK)
	return p.pw.Write(b)
}

// Flush is a no-op: every Write already reaches the reader.
func (p *pipeWriter) Flush() {}
