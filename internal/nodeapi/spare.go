package nodeapi

import (
	"context"
	"net"
	"sync"
	"time"
)

// spareFor is how long a spare connection is used after it was dialed:
// well under the node's ReadHeaderTimeout (10 s), after which the node
// closes a connection that has sent no request.
const spareFor = 5 * time.Second

// spares keeps one connection to the node dialed ahead of the next stream
// call, so that a call does not wait for the TCP (and TLS) handshake and
// for the node to accept: BenchmarkFleet measured the dial as a third of
// the control plane's CPU time in an exec. A spare is dialed after each
// stream call takes one (or dials its own), so an idle client holds at
// most one spare per node, closed when it expires.
type spares struct {
	mu      sync.Mutex
	conn    net.Conn
	at      time.Time
	dialing bool
	closed  bool
}

// take returns the spare if there is a fresh one, or nil.
func (s *spares) take() net.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, at := s.conn, s.at
	s.conn = nil
	if c != nil && time.Since(at) > spareFor {
		c.Close()
		c = nil
	}
	return c
}

// refill dials a spare in the background unless one is there or on its
// way.
func (s *spares) refill(dial func(context.Context) (net.Conn, error)) {
	s.mu.Lock()
	if s.closed || s.dialing || (s.conn != nil && time.Since(s.at) < spareFor) {
		s.mu.Unlock()
		return
	}
	s.dialing = true
	s.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := dial(ctx)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.dialing = false
		if err != nil {
			return // the next call dials its own and says why
		}
		if s.closed {
			c.Close()
			return
		}
		if s.conn != nil {
			s.conn.Close()
		}
		s.conn, s.at = c, time.Now()
		// Not kept past its use: the node would close it anyway.
		time.AfterFunc(spareFor, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.conn == c {
				s.conn = nil
				c.Close()
			}
		})
	}()
}

// close drops the spare; no new one is dialed.
func (s *spares) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
}
