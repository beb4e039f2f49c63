package nodeapi

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// clientStream is the control plane's end of a stream call. One goroutine
// runs recv; input, signals and resizes may be sent from others.
type clientStream struct {
	c    *Client
	ctx  context.Context
	conn net.Conn      // an upgraded connection, or
	body io.ReadCloser // the answer of a POST (calls without input)
	fr   frameReader
	fw   *frameWriter
	stop func() bool

	mu     sync.Mutex
	cond   *sync.Cond
	avail  int // input the node will take before it grants more
	closed bool
	done   chan struct{}
	once   sync.Once
}

func newClientStream(c *Client, ctx context.Context, conn net.Conn, br *bufio.Reader, fw *frameWriter, stop func() bool) *clientStream {
	s := &clientStream{c: c, ctx: ctx, conn: conn, fr: frameReader{r: br}, fw: fw, stop: stop, avail: inputWindow, done: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// close ends the stream; if the call still runs on the node, it is
// cancelled there.
func (s *clientStream) close() {
	s.once.Do(func() {
		s.stop()
		if s.conn != nil {
			_ = s.conn.Close()
		}
		if s.body != nil {
			_ = s.body.Close()
		}
		s.mu.Lock()
		s.closed = true
		s.cond.Broadcast()
		s.mu.Unlock()
		close(s.done)
	})
}

// ended notes the call's last frame: no more input is taken. An answer's
// end is read so that its connection can be reused.
func (s *clientStream) ended() {
	s.mu.Lock()
	s.closed = true
	s.cond.Broadcast()
	s.mu.Unlock()
	if s.body != nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(s.body, 64<<10))
	}
}

// broken is the error of a connection that failed under a call.
func (s *clientStream) broken(err error) error {
	if errors.Is(err, ErrProtocol) {
		return err
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return s.c.callErr(s.ctx, fmt.Errorf("stream: %w", err))
}

// recv reads the node's frames, giving data and events to handle, until
// the call's result (decoded into result) or its error.
func (s *clientStream) recv(handle func(typ byte, b []byte) error, result any) error {
	for {
		typ, b, err := s.fr.next()
		if err != nil {
			return s.broken(err)
		}
		switch typ {
		case frameCredit:
			if len(b) != 4 {
				return fmt.Errorf("%w: credit frame of %d bytes", ErrProtocol, len(b))
			}
			s.mu.Lock()
			s.avail += int(binary.BigEndian.Uint32(b))
			s.cond.Broadcast()
			s.mu.Unlock()
		case frameResult:
			s.ended()
			if result == nil {
				return nil
			}
			return decodeJSON(b, result)
		case frameError:
			s.ended()
			var we wireError
			if err := decodeJSON(b, &we); err != nil {
				return err
			}
			return decodeError(we)
		default:
			if handle == nil {
				return fmt.Errorf("%w: unexpected frame %q from the node", ErrProtocol, typ)
			}
			if err := handle(typ, b); err != nil {
				return err
			}
		}
	}
}

// takeCredit waits until the node takes input and reserves up to n bytes
// of it; 0 once the stream is closed.
func (s *clientStream) takeCredit(n int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.avail == 0 && !s.closed {
		s.cond.Wait()
	}
	if s.closed {
		return 0
	}
	n = min(n, s.avail)
	s.avail -= n
	return n
}

var errStreamClosed = errors.New("the stream is closed")

// write sends p as input within the node's window.
func (s *clientStream) write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := s.takeCredit(min(len(p), MaxFrame))
		if c == 0 {
			return n, errStreamClosed
		}
		if err := s.fw.frame(frameInput, p[:c]); err != nil {
			return n, err
		}
		n += c
		p = p[c:]
	}
	return n, nil
}

// readErr is a failure of the caller's reader (not of the stream).
type readErr struct{ err error }

func (e readErr) Error() string { return e.err.Error() }
func (e readErr) Unwrap() error { return e.err }

// sendInput copies r to the node as input and ends it; a failure of r is
// returned as a readErr.
func (s *clientStream) sendInput(r io.Reader) error {
	buf := make([]byte, 128<<10)
	for {
		c := s.takeCredit(len(buf))
		if c == 0 {
			return errStreamClosed
		}
		n, err := r.Read(buf[:c])
		if n < c {
			s.mu.Lock()
			s.avail += c - n
			s.mu.Unlock()
		}
		if n > 0 {
			if werr := s.fw.frame(frameInput, buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return s.fw.frame(frameEOF, nil)
		}
		if err != nil {
			return readErr{err}
		}
	}
}

func (s *clientStream) control(typ byte, v any) error {
	select {
	case <-s.done:
		return errStreamClosed
	default:
	}
	return s.fw.json(typ, v)
}
