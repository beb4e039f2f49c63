package wire

import (
	"encoding/binary"
	"io"
	"net"
)

// yamux writes every frame as two writes, its 12-byte header and then its
// body. Inside gVisor each write is a trapped syscall and each arrival wakes
// the reader, once for a header that is useless without its body. A
// CoalescingConn holds back a data frame's header and sends it in the same
// write as the body that follows. It reads only yamux's documented frame
// header (version, type, flags, stream id, length), and anything that is
// not a header of a data frame with a body is written straight through.
type CoalescingConn struct {
	net.Conn
	// Reader, when set, is read instead of Conn (bytes a handshake already
	// buffered).
	Reader io.Reader
	held   []byte // a data frame's header waiting for its body
	buf    []byte
}

const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
	coalesceMax     = 64 << 10
)

func (c *CoalescingConn) Read(p []byte) (int, error) {
	if c.Reader != nil {
		return c.Reader.Read(p)
	}
	return c.Conn.Read(p)
}

// Write is called by one goroutine at a time (yamux's send loop).
func (c *CoalescingConn) Write(p []byte) (int, error) {
	if c.held == nil {
		if len(p) == yamuxHeaderSize && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:12]) > 0 {
			c.held = append(c.buf[:0], p...)
			return len(p), nil
		}
		return c.Conn.Write(p)
	}
	if len(p) > coalesceMax {
		// Copying a large body costs more than the write it saves: the
		// two go out in one writev instead.
		bufs := net.Buffers{c.held, p}
		c.buf = c.held[:0]
		c.held = nil
		n, err := bufs.WriteTo(c.Conn)
		return max(0, int(n)-yamuxHeaderSize), err
	}
	out := append(c.held, p...)
	c.held = nil
	n, err := c.Conn.Write(out)
	c.buf = out[:0]
	if n >= yamuxHeaderSize {
		n -= yamuxHeaderSize
	} else {
		n = 0
	}
	return n, err
}
