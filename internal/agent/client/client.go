// Package client is the host's side of the agent channel: it listens on one
// sandbox's socket, admits only an agent that presents that sandbox's token,
// and turns exec and file calls into streams on the agent's session.
package client

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// ErrClosed is returned after Close.
var ErrClosed = errors.New("agent channel closed")

// ErrDisconnected is returned when the agent connection broke during a call.
var ErrDisconnected = errors.New("agent disconnected")

// Channel is the host end of one sandbox's agent connection. It survives the
// agent going away and coming back (host restart, checkpoint/restore): calls
// made meanwhile wait for the agent to reconnect or for their context to end.
type Channel struct {
	dir string
	ln  *net.UnixListener
	log *slog.Logger

	mu      sync.Mutex
	token   string
	sess    *yamux.Session
	ready   chan struct{} // closed while sess is usable
	closed  bool
	agentPI int
	failErr error
	idle    []idleStream // streams free for the next request, newest last

	// dataConns: the connected agent dials data connections
	// (wire.Hello.DataConns); pending holds the tickets of the ones asked
	// for and not yet arrived (dataconn.go).
	dataConns bool
	pending   map[string]chan *net.UnixConn
	// sessions counts the sessions admitted so far (Sessions); redials
	// and redial are the current session's Hello.Redials and Hello.Redial.
	sessions uint64
	redials  bool
	redial   uint64
}

// idleStream is a stream whose last request both ends finished cleanly,
// with the reader that holds whatever it buffered.
type idleStream struct {
	sess *yamux.Session
	st   *yamux.Stream
	r    *wire.Reader
}

// maxIdleStreams bounds the streams kept open for reuse; each holds a
// goroutine in the agent.
const maxIdleStreams = 8

// Listen creates dir's token and socket (replacing stale ones from a crashed
// host) and starts admitting the agent.
func Listen(dir string, log *slog.Logger) (*Channel, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	c := &Channel{dir: dir, log: log, ready: make(chan struct{})}
	if err := c.RotateToken(); err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, wire.SocketName)
	_ = os.Remove(sock)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on agent socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	c.ln = ln
	go c.acceptLoop()
	return c, nil
}

// RotateToken writes a fresh token; only an agent presenting it is admitted.
// The restored copy of a sandbox reads the token of its new directory, so a
// clone can never be admitted as its original.
func (c *Channel) RotateToken() error {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	tok := hex.EncodeToString(b)
	tmp := filepath.Join(c.dir, wire.TokenName+".tmp")
	if err := os.WriteFile(tmp, []byte(tok), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(c.dir, wire.TokenName)); err != nil {
		return err
	}
	c.mu.Lock()
	c.token = tok
	c.mu.Unlock()
	return nil
}

func (c *Channel) acceptLoop() {
	for {
		conn, err := c.ln.AcceptUnix()
		if err != nil {
			return
		}
		go c.admit(conn)
	}
}

func (c *Channel) admit(conn *net.UnixConn) {
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReaderSize(conn, 4096)
	line, err := br.ReadSlice('\n')
	if err != nil {
		conn.Close()
		return
	}
	var h wire.Hello
	if err := json.Unmarshal(line, &h); err != nil || h.Version != wire.Version {
		_, _ = conn.Write([]byte("bad hello\n"))
		conn.Close()
		return
	}
	c.mu.Lock()
	tok := c.token
	c.mu.Unlock()
	if subtle.ConstantTimeCompare([]byte(h.Token), []byte(tok)) != 1 {
		c.log.Warn("agent presented a wrong token; refused", "dir", c.dir)
		_, _ = conn.Write([]byte("bad token\n"))
		conn.Close()
		return
	}
	if h.DataConn != "" {
		c.admitData(conn, br, h.DataConn)
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	if _, err := conn.Write([]byte("ok\n")); err != nil {
		conn.Close()
		return
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	// No keepalives from this side: the host learns that a sandbox
	// died from its process (exitwatch.go), and every ping would wake
	// the idle sandbox's kernel and agent (idle CPU, docs/benchmarks.md).
	cfg.EnableKeepAlive = false
	cfg.ConnectionWriteTimeout = 5 * time.Second
	cfg.MaxStreamWindowSize = wire.StreamWindow
	setSocketBuffers(conn, wire.SocketBuffer)
	sess, err := yamux.Client(&wire.CoalescingConn{Conn: conn, Reader: br}, cfg)
	if err != nil {
		conn.Close()
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		sess.Close()
		return
	}
	old := c.sess
	c.sess = sess
	c.sessions++
	c.redials, c.redial = h.Redials, h.Redial
	c.agentPI = h.PID
	c.dataConns = h.DataConns
	select {
	case <-c.ready:
	default:
		close(c.ready)
	}
	c.mu.Unlock()
	if old != nil {
		old.Close()
	}
	<-sess.CloseChan()
	c.mu.Lock()
	if c.sess == sess {
		c.sess = nil
		c.ready = make(chan struct{})
	}
	c.mu.Unlock()
}

// Sessions is how many agent sessions have been admitted so far: a
// caller that made the agent redial passes the count it read before to
// WaitRedialed (for an agent that does not number redials).
func (c *Channel) Sessions() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sessions
}

// RequestRedial numbers a request for the agent to dial again (the caller
// then sends it wire's RedialSignal) and returns its number, for
// WaitRedialed.
func (c *Channel) RequestRedial() (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := max(wire.ReadRedial(c.dir), c.redial) + 1
	tmp := filepath.Join(c.dir, wire.RedialName+".tmp")
	if err := os.WriteFile(tmp, []byte(strconv.FormatUint(n, 10)+"\n"), 0o644); err != nil {
		return 0, err
	}
	return n, os.Rename(tmp, filepath.Join(c.dir, wire.RedialName))
}

// WaitRedialed blocks until a session dialed after redial request n is up
// (an agent that does not read the request numbers: any session later
// than the after-th).
func (c *Channel) WaitRedialed(ctx context.Context, n, after uint64) error {
	for {
		if _, err := c.session(ctx); err != nil {
			return err
		}
		c.mu.Lock()
		ok := c.sess != nil && !c.sess.IsClosed() && ((c.redials && c.redial >= n) || (!c.redials && c.sessions > after))
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the sandbox agent to dial again: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Connected reports whether an agent session is up now.
func (c *Channel) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sess != nil
}

// Disconnect drops the current session, e.g. before a checkpoint, so the
// next call waits for the restored agent.
func (c *Channel) Disconnect() {
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	if s != nil {
		s.Close()
	}
}

// WaitReady blocks until an agent is connected.
func (c *Channel) WaitReady(ctx context.Context) error {
	_, err := c.session(ctx)
	return err
}

func (c *Channel) session(ctx context.Context) (*yamux.Session, error) {
	for {
		c.mu.Lock()
		if c.closed {
			err := c.failErr
			c.mu.Unlock()
			if err == nil {
				err = ErrClosed
			}
			return nil, err
		}
		s, ready := c.sess, c.ready
		c.mu.Unlock()
		if s != nil && !s.IsClosed() {
			return s, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the sandbox agent: %w", ctx.Err())
		}
	}
}

// Close stops listening and drops the session. The socket and token files
// are removed.
func (c *Channel) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	s := c.sess
	c.sess = nil
	select {
	case <-c.ready:
	default:
		close(c.ready)
	}
	c.mu.Unlock()
	if s != nil {
		s.Close()
	}
	err := c.ln.Close()
	_ = os.Remove(filepath.Join(c.dir, wire.SocketName))
	return err
}

// stream sends req on a stream, reusing an idle one when there is one, and
// returns the stream's reader and writer and the func that ends the
// request. end(true) says both ends finished it cleanly, so the stream may
// carry another; otherwise it is closed. The stream is closed when ctx ends,
// which the agent takes as the caller going away.
func (c *Channel) stream(ctx context.Context, req *wire.Request) (*wire.Reader, *wire.Writer, func(reusable bool), error) {
	// A call whose context is already done sends nothing: the cancel below
	// closes the stream from another goroutine, which could lose the race
	// against the request's one write and let a command run anyway.
	if err := ctx.Err(); err != nil {
		return nil, nil, nil, err
	}
	s, err := c.session(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	for {
		st, r, reused := c.takeIdle(s)
		if st == nil {
			if st, err = s.OpenStream(); err != nil {
				return nil, nil, nil, fmt.Errorf("%w: %v", ErrDisconnected, err)
			}
			r = wire.NewReader(st)
		}
		stop := context.AfterFunc(ctx, func() {
			// Close only half-closes a yamux stream: the agent sees EOF, but a
			// caller blocked reading the reply (or writing) would stay blocked
			// until the agent finished. The deadline wakes it at once.
			_ = st.SetDeadline(time.Now())
			st.Close()
		})
		end := func(reusable bool) {
			if stop() && reusable && c.putIdle(s, st, r) {
				return
			}
			st.Close()
		}
		w := wire.NewWriter(st)
		err := w.JSON(wire.KindJSON, req)
		if err == nil {
			return r, w, end, nil
		}
		end(false)
		if errors.Is(err, wire.ErrFrameTooLarge) {
			// Nothing was sent: the request itself is at fault, not the
			// connection.
			return nil, nil, nil, &wire.Error{Code: wire.CodeBadRequest, Message: "request too large: " + err.Error()}
		}
		if reused && ctx.Err() == nil {
			continue // the idle stream had gone bad; take a new one
		}
		return nil, nil, nil, c.wrap(ctx, err)
	}
}

// takeIdle returns the newest idle stream of session s, if any; idle
// streams of other (dead) sessions are closed.
func (c *Channel) takeIdle(s *yamux.Session) (*yamux.Stream, *wire.Reader, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for n := len(c.idle); n > 0; n = len(c.idle) {
		is := c.idle[n-1]
		c.idle = c.idle[:n-1]
		if is.sess == s {
			return is.st, is.r, true
		}
		is.st.Close()
	}
	return nil, nil, false
}

// putIdle keeps st for reuse unless enough streams are idle already.
func (c *Channel) putIdle(s *yamux.Session, st *yamux.Stream, r *wire.Reader) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.sess != s || len(c.idle) >= maxIdleStreams {
		return false
	}
	c.idle = append(c.idle, idleStream{sess: s, st: st, r: r})
	return true
}

// wrap turns transport errors into ErrDisconnected or the context's error.
func (c *Channel) wrap(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var we *wire.Error
	if errors.As(err, &we) {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("%w: %v", ErrDisconnected, err)
}

// call runs a request with one JSON reply.
func (c *Channel) call(ctx context.Context, req *wire.Request, reply any) error {
	r, _, end, err := c.stream(ctx, req)
	if err != nil {
		return err
	}
	err = r.ExpectJSON(reply)
	end(err == nil || IsWireError(err))
	return c.wrap(ctx, err)
}

// Ping round-trips an empty request.
func (c *Channel) Ping(ctx context.Context) error {
	var out map[string]int
	return c.call(ctx, &wire.Request{Op: wire.OpPing}, &out)
}

// Configure hands the agent the sandbox's environment at claim time.
func (c *Channel) Configure(ctx context.Context, cfg wire.Configure) error {
	var out struct{}
	return c.call(ctx, &wire.Request{Op: wire.OpConfigure, Configure: &cfg}, &out)
}

// IsAgentError reports whether err came from the agent with the given code.
func IsAgentError(err error, code string) bool {
	var we *wire.Error
	return errors.As(err, &we) && we.Code == code
}

// Fail closes the channel for good and makes every waiting and future call
// return err (e.g. "the sandbox was killed because it ran out of memory").
func (c *Channel) Fail(err error) {
	c.mu.Lock()
	c.failErr = err
	c.mu.Unlock()
	_ = c.Close()
}
