package nodeapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// Client calls one node's API over the network; it implements Node. Unary
// calls, and stream calls that send no input frames, reuse kept-alive
// HTTP/1.1 connections; a stream call with input (a large upload, stdin of
// unknown length, signals, a terminal) dials a connection of its own and
// upgrades it.
type Client struct {
	base   string // scheme://host[:port], no trailing slash
	host   string // host:port to dial
	tls    *tls.Config
	token  string
	hc     *http.Client
	dialer net.Dialer
	// version is the API version requests speak: APIVersion until a node
	// answers that it speaks only an older one.
	version atomic.Int64

	chMu            sync.Mutex
	idle            []*clientChannel // call channels (channel.go), the last used last
	chClosed        bool
	noChannelsUntil time.Time // the node refused a channel: HTTP requests until then
}

var _ Node = (*Client)(nil)

// Dial returns a client of the node API at baseURL (http://host:port, or
// https:// with tlsCfg) authenticating with token. It does not connect:
// the first call does, and an unreachable node fails that call with
// ErrUnreachable.
func Dial(baseURL, token string, tlsCfg *tls.Config) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("node API address %q must be http://host:port or https://host:port", baseURL)
	}
	host := u.Host
	if u.Port() == "" {
		if u.Scheme == "https" {
			host = net.JoinHostPort(u.Hostname(), "443")
		} else {
			host = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	c := &Client{base: u.Scheme + "://" + u.Host, host: host, token: token, dialer: net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}}
	if u.Scheme == "https" {
		if tlsCfg == nil {
			tlsCfg = &tls.Config{}
		}
		c.tls = tlsCfg.Clone()
		if c.tls.ServerName == "" {
			c.tls.ServerName = u.Hostname()
		}
		if c.tls.ClientSessionCache == nil {
			c.tls.ClientSessionCache = tls.NewLRUClientSessionCache(64)
		}
		c.tls.NextProtos = []string{"http/1.1"}
	}
	tr := &http.Transport{
		DialContext:         c.dialer.DialContext,
		TLSClientConfig:     c.tls,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   false,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	c.hc = &http.Client{Transport: tr}
	c.version.Store(APIVersion)
	return c, nil
}

// Close lets go of the client's idle connections.
func (c *Client) Close() {
	c.chMu.Lock()
	c.chClosed = true
	c.chMu.Unlock()
	c.closeChannels()
	c.hc.CloseIdleConnections()
}

// Address is the node's base URL.
func (c *Client) Address() string { return c.base }

func (c *Client) setHeaders(h http.Header) {
	h.Set("Authorization", "Bearer "+c.token)
	h.Set(HeaderVersion, strconv.FormatInt(c.version.Load(), 10))
}

// callErr turns a transport failure into the error a caller sees: the
// context's own when it ended, else ErrUnreachable with the cause.
func (c *Client) callErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("node %s: %w", c.base, context.Cause(ctx))
	}
	return &unreachable{node: c.base, cause: err}
}

// failed reads a refusal's body and returns it as an error; retry says the
// call should be made again (the API version was lowered to the node's).
func (c *Client) failed(status int, body io.Reader) (err error, retry bool) {
	b, _ := io.ReadAll(io.LimitReader(body, 1<<20))
	if status == http.StatusUnauthorized {
		return &unreachable{node: c.base, cause: errors.New("the node refused the credentials (401): check the node token")}, false
	}
	var we wireError
	if json.Unmarshal(b, &we) != nil || we.Code == "" {
		return &unreachable{node: c.base, cause: fmt.Errorf("unexpected HTTP %d answer: %.200q", status, b)}, false
	}
	if we.Code == codeUnsupportedVersion {
		// Speak the highest version both sides know, if any.
		v := min(int64(we.MaxVersion), APIVersion)
		if v >= MinAPIVersion && v >= int64(we.MinVersion) && v != c.version.Load() {
			c.version.Store(v)
			return nil, true
		}
		return &unreachable{node: c.base, cause: fmt.Errorf("no common API version (this control plane speaks %d to %d): %s", MinAPIVersion, APIVersion, we.Message)}, false
	}
	return decodeError(we), false
}

// call makes a unary call: POST path with in as JSON, the answer into out.
func (c *Client) call(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+pathPrefix+path, bytes.NewReader(body))
		if err != nil {
			return err
		}
		c.setHeaders(req.Header)
		req.Header.Set("Content-Type", "application/json")
		// Marks the call replayable for net/http: a kept-alive connection
		// that a restarted node closed is retried on a new one instead of
		// failing the call. net/http also replays a replayable call whose
		// connection broke before any answer, which the node may have
		// carried out: so not a process's start or its stdin, whose
		// repetition a user would see (net/http still retries those when
		// nothing of them was written). A repeated create or restore is
		// answered by the node with the sandbox the first one started
		// (node.Node deduplicates them by sandbox id).
		if !strings.HasSuffix(path, "/processes/start") && !strings.HasSuffix(path, "/processes/input") {
			req.Header.Set("Idempotency-Key", path)
		}
		resp, err := c.do(req, body)
		if err != nil {
			return c.callErr(ctx, err)
		}
		if resp.StatusCode == http.StatusOK {
			err := json.NewDecoder(resp.Body).Decode(out)
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil {
				return c.callErr(ctx, fmt.Errorf("decoding the answer to %s: %w", path, err))
			}
			return nil
		}
		err, retry := c.failed(resp.StatusCode, resp.Body)
		resp.Body.Close()
		if !retry {
			return err
		}
	}
}

func sandboxPath(id, op string) string { return "sandboxes/" + url.PathEscape(id) + "/" + op }

// Info implements Node.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var i Info
	return i, c.call(ctx, "info", empty{}, &i)
}

// Create implements Node.
func (c *Client) Create(ctx context.Context, r CreateRequest) (runtime.Sandbox, error) {
	var i runtime.Info
	if err := c.call(ctx, "create", r, &i); err != nil {
		return nil, err
	}
	return c.remote(i), nil
}

// Sandbox implements Node.
func (c *Client) Sandbox(ctx context.Context, runtimeID string) (runtime.Sandbox, error) {
	var i runtime.Info
	if err := c.call(ctx, sandboxPath(runtimeID, "info"), empty{}, &i); err != nil {
		return nil, err
	}
	return c.remote(i), nil
}

// Checkpoint implements Node.
func (c *Client) Checkpoint(ctx context.Context, runtimeID, snapshotID string) (Snapshot, error) {
	var s Snapshot
	return s, c.call(ctx, sandboxPath(runtimeID, "checkpoint"), CheckpointRequest{Snapshot: snapshotID}, &s)
}

// CheckpointLive implements Node (its own path: a node of an older build
// answers 404, never a pause).
func (c *Client) CheckpointLive(ctx context.Context, runtimeID, snapshotID string) (Snapshot, error) {
	var s Snapshot
	return s, c.call(ctx, sandboxPath(runtimeID, "checkpoint_live"), CheckpointRequest{Snapshot: snapshotID}, &s)
}

// Restore implements Node.
func (c *Client) Restore(ctx context.Context, r RestoreRequest) (runtime.Sandbox, error) {
	var i runtime.Info
	if err := c.call(ctx, "restore", r, &i); err != nil {
		return nil, err
	}
	return c.remote(i), nil
}

// RemoveSnapshot implements Node.
func (c *Client) RemoveSnapshot(ctx context.Context, id string) error {
	return c.call(ctx, "snapshots/remove", idMsg{ID: id}, &empty{})
}

// Destroy implements Node.
func (c *Client) Destroy(ctx context.Context, runtimeID string) error {
	return c.call(ctx, sandboxPath(runtimeID, "destroy"), empty{}, &empty{})
}

// Reconcile implements Node.
func (c *Client) Reconcile(ctx context.Context, keep Keep) (runtime.ReconcileReport, error) {
	var r runtime.ReconcileReport
	return r, c.call(ctx, "reconcile", keep, &r)
}

// Metrics implements Node.
func (c *Client) Metrics(ctx context.Context, runtimeID string, since time.Time) (Metrics, error) {
	var m Metrics
	return m, c.call(ctx, sandboxPath(runtimeID, "metrics"), metricsReq{Since: since}, &m)
}

// readOnlyStreams change nothing in the sandbox: safe to send again.
var readOnlyStreams = map[string]bool{"read_file": true, "tar": true, "watch": true, "attach": true}

// postStream makes a stream call without input as a POST on a kept-alive
// connection; the answer's body carries the node's frames. Ending ctx
// closes the connection, which ends the call on the node.
func (c *Client) postStream(ctx context.Context, runtimeID, op string, params any) (*clientStream, error) {
	body, err := json.Marshal(params)
	if err != nil {
		return nil, err
	}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+pathPrefix+sandboxPath(runtimeID, "stream/"+op), bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		c.setHeaders(req.Header)
		req.Header.Set("Content-Type", "application/json")
		if readOnlyStreams[op] {
			// Replayable on a restarted node's dead keep-alive, as unary
			// calls are; an exec or a write is never sent twice.
			req.Header.Set("Idempotency-Key", op)
		}
		resp, err := c.do(req, body)
		if err != nil {
			return nil, c.callErr(ctx, err)
		}
		if resp.StatusCode == http.StatusOK {
			s := &clientStream{c: c, ctx: ctx, body: resp.Body, fr: frameReader{r: resp.Body}, fw: &frameWriter{w: io.Discard},
				stop: func() bool { return true }, done: make(chan struct{})}
			s.cond = sync.NewCond(&s.mu)
			return s, nil
		}
		err, retry := c.failed(resp.StatusCode, resp.Body)
		resp.Body.Close()
		if !retry {
			return nil, err
		}
	}
}

// openStream dials the node, asks to upgrade the connection for stream op
// on a sandbox and sends the call's parameters. Ending ctx closes the
// connection, which ends the call on the node.
func (c *Client) openStream(ctx context.Context, runtimeID, op string, params any) (*clientStream, error) {
	pb, err := json.Marshal(params)
	if err != nil {
		return nil, err
	}
	for {
		s, retry, err := c.tryStream(ctx, runtimeID, op, pb)
		if !retry {
			return s, err
		}
	}
}

func (c *Client) tryStream(ctx context.Context, runtimeID, op string, params []byte) (*clientStream, bool, error) {
	var first bytes.Buffer
	if err := (&frameWriter{w: &first}).frame(frameParams, params); err != nil {
		return nil, false, err
	}
	conn, br, resp, stop, err := c.upgrade(ctx, sandboxPath(runtimeID, "stream/"+op), streamUpgrade, first.Bytes())
	if err != nil {
		return nil, false, c.callErr(ctx, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		err, retry := c.failed(resp.StatusCode, resp.Body)
		stop()
		conn.Close()
		if ctx.Err() != nil {
			return nil, false, c.callErr(ctx, ctx.Err())
		}
		return nil, retry, err
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), streamUpgrade) {
		stop()
		conn.Close()
		return nil, false, c.callErr(ctx, fmt.Errorf("the node upgraded to %q, not %s", resp.Header.Get("Upgrade"), streamUpgrade))
	}
	return newClientStream(c, ctx, conn, br, &frameWriter{w: conn}, stop), false, nil
}

// upgrade dials the node and asks it to upgrade the connection to protocol
// for the call at path (under pathPrefix), with first (frames) right behind
// the request, in one write: one round trip. It returns the node's answer,
// whose status is the caller's to check; until stop is called, ending ctx
// closes the connection. On an error (the transport's, for callErr) the
// connection is closed.
func (c *Client) upgrade(ctx context.Context, path, protocol string, first []byte) (conn net.Conn, br *bufio.Reader, resp *http.Response, stop func() bool, err error) {
	conn, err = c.dialer.DialContext(ctx, "tcp", c.host)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if c.tls != nil {
		tc := tls.Client(conn, c.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, nil, nil, nil, err
		}
		conn = tc
	}
	stop = context.AfterFunc(ctx, func() { conn.Close() })
	var req bytes.Buffer
	fmt.Fprintf(&req, "POST %s%s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n%s: %d\r\nConnection: Upgrade\r\nUpgrade: %s\r\nContent-Length: 0\r\n\r\n",
		pathPrefix, path, c.host, c.token, HeaderVersion, c.version.Load(), protocol)
	req.Write(first)
	if _, err = conn.Write(req.Bytes()); err == nil {
		br = bufio.NewReaderSize(conn, 64<<10)
		resp, err = http.ReadResponse(br, nil)
	}
	if err != nil {
		stop()
		conn.Close()
		return nil, nil, nil, nil, err
	}
	return conn, br, resp, stop, nil
}
