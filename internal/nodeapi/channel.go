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
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A call channel carries the calls a client would otherwise make as
// kept-alive HTTP/1.1 requests (unary calls and stream calls without
// input), one after the other, over a connection upgraded once
// (Upgrade: orkestr-node-channel). Each call is a frame with its method,
// path and headers, then its body; the answer is a frame with its status
// and headers, its body in data frames, and an end frame.
//
// Why not plain HTTP: between a sandbox's create and its first exec both
// ends of a connection are asleep, and net/http hands every request and
// answer between goroutines (a client's write and read loops, a server's
// background read that each answer waits out), each hand-off waking a
// sleeping thread. On a channel the caller writes and reads the connection
// itself, and the node answers from the goroutine that read the call; one
// goroutine per channel waits on the connection while a call runs, so that
// a client that goes cancels the call, as with HTTP. Measured in the fleet
// (docs/benchmarks.md, "Call channels"): a fifth less CPU per exec for the
// control plane and node; the latency gained is within the test host's
// noise.
//
// The handler (auth, version, routes, answers) is the one HTTP requests
// reach: a call on a channel is an http.Request to it.
const channelUpgrade = "orkestr-node-channel"

// Call channel frames (see frame.go for the frame layout).
const (
	frameCall = 'Q' // client: JSON callHead; the call's body follows in frameBody frames
	frameBody = 'B' // client: bytes of the call's body
	frameHead = 'H' // node: JSON answerHead
	frameData = 'D' // node: bytes of the answer's body
	frameEnd  = 'Z' // node: empty: the answer is complete
)

type callHead struct {
	Method  string
	Path    string
	Header  http.Header
	BodyLen int
}

type answerHead struct {
	Status int
	Header http.Header
}

// channelIdle is how long a node keeps a channel with no call open;
// channelIdleClient, shorter, how long a client keeps one before it is
// used again, so that a client rarely sends a call on a channel the node
// is closing.
const (
	channelIdle       = 2 * time.Minute
	channelIdleClient = time.Minute
)

// channel upgrades a connection to a call channel and serves its calls
// until it closes, goes idle for channelIdle or the handler shuts down.
func (h *Handler) channel(w http.ResponseWriter, r *http.Request) {
	if !hasToken(r.Header, "Connection", "upgrade") || !hasToken(r.Header, "Upgrade", channelUpgrade) {
		w.Header().Set("Connection", "close")
		h.writeError(w, r, fmt.Errorf("%w: a call channel needs Connection: Upgrade and Upgrade: %s", ErrProtocol, channelUpgrade))
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		h.writeError(w, r, fmt.Errorf("%w: cannot take over the connection: %v", ErrProtocol, err))
		return
	}
	defer conn.Close()
	ch := &serverChannel{h: h, conn: conn, bw: bufio.NewWriterSize(conn, 32<<10), base: context.WithoutCancel(r.Context()), host: r.Host}
	if !h.channels.add(ch) {
		return // shutting down
	}
	defer h.channels.remove(ch)
	_ = conn.SetDeadline(time.Time{})
	fmt.Fprintf(ch.bw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n%s: %d\r\n\r\n", channelUpgrade, HeaderVersion, APIVersion)
	if ch.bw.Flush() != nil {
		return
	}
	ch.serve(frameReader{r: brw.Reader})
}

// serverChannel is the node's end of a call channel.
type serverChannel struct {
	h    *Handler
	conn net.Conn
	bw   *bufio.Writer // the call's goroutine writes the answer through it
	base context.Context
	host string

	mu   sync.Mutex
	busy bool // a call runs
}

// serve reads calls and runs each on a goroutine of its own while it reads
// on: the next call, which waits for the one before it, or the end of the
// connection, which cancels the call in flight.
func (ch *serverChannel) serve(fr frameReader) {
	var running chan struct{} // closed when the call in flight has answered
	cancel := func() {}
	defer func() {
		cancel()
		if running != nil {
			<-running
		}
	}()
	_ = ch.conn.SetReadDeadline(time.Now().Add(channelIdle))
	for {
		typ, b, err := fr.next()
		if err != nil {
			return // gone, idle too long, or a frame over the limit
		}
		if running != nil {
			<-running // a client that sends a call before the last answer waits for it
			cancel()
		}
		if typ != frameCall {
			return
		}
		req, ok := ch.readCall(&fr, b)
		if !ok {
			return
		}
		ctx, cancelCall := context.WithCancel(ch.base)
		cancel = cancelCall
		ch.mu.Lock()
		ch.busy = true
		ch.mu.Unlock()
		running = make(chan struct{})
		go ch.call(req.WithContext(ctx), running)
	}
}

// readCall reads the rest of a call whose head frame is b: its body.
func (ch *serverChannel) readCall(fr *frameReader, b []byte) (*http.Request, bool) {
	var head callHead
	if json.Unmarshal(b, &head) != nil || head.BodyLen < 0 || int64(head.BodyLen) > max(ch.h.maxBody, MaxFrame) ||
		!strings.HasPrefix(head.Path, pathPrefix) || strings.HasPrefix(head.Path, pathPrefix+"channel") {
		return nil, false
	}
	_ = ch.conn.SetReadDeadline(time.Now().Add(paramsWait))
	body := make([]byte, 0, head.BodyLen)
	for len(body) < head.BodyLen {
		typ, b, err := fr.next()
		if err != nil || typ != frameBody || len(body)+len(b) > head.BodyLen {
			return nil, false
		}
		body = append(body, b...)
	}
	_ = ch.conn.SetReadDeadline(time.Time{})
	req, err := http.NewRequest(head.Method, head.Path, bytes.NewReader(body))
	if err != nil {
		return nil, false
	}
	if head.Header != nil {
		req.Header = head.Header
	}
	req.RemoteAddr, req.Host, req.RequestURI = ch.conn.RemoteAddr().String(), ch.host, head.Path
	return req, true
}

// call answers one call, then leaves the channel idle (or closes it if
// the handler is shutting down).
func (ch *serverChannel) call(req *http.Request, done chan struct{}) {
	defer close(done)
	w := newChannelWriter(ch.bw)
	if !ch.serveCall(w, req) {
		_ = ch.conn.Close()
		return
	}
	w.end()
	ch.mu.Lock()
	ch.busy = false
	ch.mu.Unlock()
	if w.err != nil || ch.h.channels.closing() {
		_ = ch.conn.Close()
		return
	}
	_ = ch.conn.SetReadDeadline(time.Now().Add(channelIdle))
}

// serveCall runs the handler for one call; a handler that panics ends
// the channel (as net/http ends the connection), not the node.
func (ch *serverChannel) serveCall(w http.ResponseWriter, req *http.Request) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				ch.h.log.Error("node API call panicked", "path", req.URL.Path, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			}
			ok = false
		}
	}()
	ch.h.ServeHTTP(w, req)
	return true
}

// closeIfIdle closes the channel unless a call runs; one that does closes
// when it has answered.
func (ch *serverChannel) closeIfIdle() {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if !ch.busy {
		_ = ch.conn.Close()
	}
}

// channelWriter is the http.ResponseWriter of a call on a channel. Its
// frames wait in the channel's buffer until a flush or the answer's end.
type channelWriter struct {
	bw     *bufio.Writer
	fw     frameWriter // writes to bw
	header http.Header
	wrote  bool // the head frame
	err    error
}

func newChannelWriter(bw *bufio.Writer) *channelWriter {
	return &channelWriter{bw: bw, fw: frameWriter{w: bw}, header: http.Header{}}
}

func (w *channelWriter) Header() http.Header { return w.header }

func (w *channelWriter) WriteHeader(status int) {
	if w.wrote || status < 200 || w.err != nil {
		return
	}
	w.wrote = true
	b, _ := json.Marshal(answerHead{Status: status, Header: w.header.Clone()})
	w.err = w.fw.frame(frameHead, b)
}

func (w *channelWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.fw.data(frameData, p)
	w.err = err
	return n, err
}

// FlushError pushes out what was written (http.ResponseController.Flush).
func (w *channelWriter) FlushError() error {
	w.WriteHeader(http.StatusOK)
	if w.err == nil {
		w.err = w.bw.Flush()
	}
	return w.err
}

func (w *channelWriter) Flush() { _ = w.FlushError() }

// end completes the answer: its end frame goes out with what is left of it.
func (w *channelWriter) end() {
	w.WriteHeader(http.StatusOK)
	if w.err == nil {
		w.err = w.fw.frame(frameEnd, nil)
	}
	_ = w.FlushError()
}

// serverChannels are a handler's open channels, which a shutdown closes.
type serverChannels struct {
	mu     sync.Mutex
	open   map[*serverChannel]struct{}
	closed bool
}

func (s *serverChannels) add(ch *serverChannel) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.open == nil {
		s.open = map[*serverChannel]struct{}{}
	}
	s.open[ch] = struct{}{}
	return true
}

func (s *serverChannels) remove(ch *serverChannel) {
	s.mu.Lock()
	delete(s.open, ch)
	s.mu.Unlock()
}

func (s *serverChannels) closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Shutdown closes the handler's idle call channels at once and the others
// as their calls answer, and refuses new ones; it returns when all are
// closed or ctx ends. http.Server.Shutdown does not see these connections
// (they were upgraded): call both.
func (h *Handler) Shutdown(ctx context.Context) error {
	h.channels.mu.Lock()
	h.channels.closed = true
	open := make([]*serverChannel, 0, len(h.channels.open))
	for ch := range h.channels.open {
		open = append(open, ch)
	}
	h.channels.mu.Unlock()
	for _, ch := range open {
		ch.closeIfIdle()
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		h.channels.mu.Lock()
		n := len(h.channels.open)
		h.channels.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Close closes every call channel at once, calls in flight too (their
// callers see the connection break), and refuses new ones: what a node
// process's end does to them, for http.Server.Close's caller.
func (h *Handler) Close() {
	h.channels.mu.Lock()
	h.channels.closed = true
	for ch := range h.channels.open {
		_ = ch.conn.Close()
	}
	h.channels.mu.Unlock()
}

// clientChannel is a client's end of a call channel.
type clientChannel struct {
	conn  net.Conn
	fr    frameReader
	since time.Time // idle since
}

// errNoChannels: the node does not serve call channels (a node from
// before them); the call goes as an HTTP request.
var errNoChannels = errors.New("the node serves no call channels")

// do sends req (whose body is body) on a call channel, or as an HTTP
// request to a node that has none. A call that fails on a channel that
// was kept from an earlier call before any answer came is sent again on a
// new one if it is replayable (it carries an Idempotency-Key).
func (c *Client) do(req *http.Request, body []byte) (*http.Response, error) {
	for {
		ch, reused, err := c.channel(req.Context())
		if errors.Is(err, errNoChannels) {
			return c.hc.Do(req)
		}
		if err != nil {
			return nil, err
		}
		resp, answered, err := c.callOn(ch, req, body)
		if err == nil {
			return resp, nil
		}
		_ = ch.conn.Close()
		if !reused || answered || req.Header.Get("Idempotency-Key") == "" || req.Context().Err() != nil {
			return nil, err
		}
	}
}

// callOn sends req on ch and reads the answer's head; the answer's body
// reads the rest.
func (c *Client) callOn(ch *clientChannel, req *http.Request, body []byte) (*http.Response, bool, error) {
	head, err := json.Marshal(callHead{Method: req.Method, Path: req.URL.RequestURI(), Header: req.Header, BodyLen: len(body)})
	if err != nil {
		return nil, false, err
	}
	var out bytes.Buffer
	fw := frameWriter{w: &out}
	if err := fw.frame(frameCall, head); err != nil {
		return nil, false, err
	}
	_, _ = fw.data(frameBody, body)
	ctx := req.Context()
	stop := context.AfterFunc(ctx, func() { _ = ch.conn.SetDeadline(time.Unix(1, 0)) })
	if _, err := ch.conn.Write(out.Bytes()); err != nil {
		stop()
		return nil, false, err
	}
	typ, b, err := ch.fr.next()
	if err != nil {
		stop()
		return nil, false, err
	}
	var ah answerHead
	if typ != frameHead || json.Unmarshal(b, &ah) != nil || ah.Status < 200 {
		stop()
		return nil, true, fmt.Errorf("%w: the node's answer on a call channel began with a %q frame", ErrProtocol, typ)
	}
	if ah.Header == nil {
		ah.Header = http.Header{}
	}
	resp := &http.Response{Status: fmt.Sprintf("%d %s", ah.Status, http.StatusText(ah.Status)), StatusCode: ah.Status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: ah.Header, ContentLength: -1, Request: req}
	resp.Body = &channelBody{c: c, ch: ch, stop: stop}
	return resp, true, nil
}

// channelBody reads an answer's data frames; at the end frame its channel
// goes back to the client's idle ones.
type channelBody struct {
	c    *Client
	ch   *clientChannel
	stop func() bool
	rest []byte // of the last data frame
	done bool   // the channel was put back or closed
	err  error
}

func (b *channelBody) Read(p []byte) (int, error) {
	for len(b.rest) == 0 {
		if b.err != nil {
			return 0, b.err
		}
		typ, data, err := b.ch.fr.next()
		switch {
		case err != nil:
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			b.fail(err)
		case typ == frameData:
			b.rest = data
		case typ == frameEnd:
			b.err = io.EOF
			if !b.done {
				b.done = true
				if b.stop() {
					b.c.putChannel(b.ch)
				} else {
					_ = b.ch.conn.Close()
				}
			}
		default:
			b.fail(fmt.Errorf("%w: a %q frame in an answer on a call channel", ErrProtocol, typ))
		}
	}
	n := copy(p, b.rest)
	b.rest = b.rest[n:]
	return n, nil
}

func (b *channelBody) fail(err error) {
	b.err = err
	if !b.done {
		b.done = true
		b.stop()
		_ = b.ch.conn.Close()
	}
}

// Close before the end closes the channel: what is left of the answer is
// not worth reading.
func (b *channelBody) Close() error {
	if !b.done {
		b.fail(errors.New("the answer's body was closed"))
	}
	return nil
}

// channel returns an idle call channel (reused) or opens one.
func (c *Client) channel(ctx context.Context) (*clientChannel, bool, error) {
	c.chMu.Lock()
	for len(c.idle) > 0 {
		ch := c.idle[len(c.idle)-1]
		c.idle = c.idle[:len(c.idle)-1]
		if time.Since(ch.since) < channelIdleClient {
			c.chMu.Unlock()
			if alive(ch.conn) {
				return ch, true, nil
			}
			_ = ch.conn.Close()
			c.chMu.Lock()
			continue
		}
		_ = ch.conn.Close()
	}
	none := time.Now().Before(c.noChannelsUntil)
	c.chMu.Unlock()
	if none {
		return nil, false, errNoChannels
	}
	ch, err := c.openChannel(ctx)
	return ch, false, err
}

// maxIdleChannels bounds the idle call channels a client keeps to a node.
const maxIdleChannels = 64

func (c *Client) putChannel(ch *clientChannel) {
	ch.since = time.Now()
	c.chMu.Lock()
	if !c.chClosed && len(c.idle) < maxIdleChannels {
		c.idle = append(c.idle, ch)
		ch = nil
	}
	c.chMu.Unlock()
	if ch != nil {
		_ = ch.conn.Close()
	}
}

// closeChannels closes the idle channels.
func (c *Client) closeChannels() {
	c.chMu.Lock()
	idle := c.idle
	c.idle = nil
	c.chMu.Unlock()
	for _, ch := range idle {
		_ = ch.conn.Close()
	}
}

// openChannel dials the node and upgrades the connection to a call
// channel; its errors are the transport's (do's caller wraps them). A
// node that does not know channels (it answers anything but 101) is not
// asked again for a minute: calls go as HTTP requests meanwhile.
func (c *Client) openChannel(ctx context.Context) (*clientChannel, error) {
	conn, br, resp, stop, err := c.upgrade(ctx, "channel", channelUpgrade, nil)
	if err != nil {
		return nil, err
	}
	if !stop() {
		conn.Close()
		return nil, ctx.Err()
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || !strings.EqualFold(resp.Header.Get("Upgrade"), channelUpgrade) {
		// An older node, a refused token or version: HTTP requests say
		// which, as they always did.
		conn.Close()
		c.chMu.Lock()
		c.noChannelsUntil = time.Now().Add(time.Minute)
		c.chMu.Unlock()
		return nil, errNoChannels
	}
	return &clientChannel{conn: conn, fr: frameReader{r: br}}, nil
}

// alive says whether an idle connection may still carry a call: the node
// sent nothing on it since its last answer (not its closing, not anything
// else). It peeks without waiting; a connection it cannot look into is
// taken as alive.
func alive(conn net.Conn) bool {
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, rerr := unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		ok = rerr == unix.EAGAIN
		return true
	})
	return err == nil && ok
}
