package client

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// SizeExpecter is implemented by a download's destination that wants the
// file's size before its first byte (the API sends it as Content-Length,
// which lets the HTTP server splice the bytes from the agent's socket).
// ReadFile calls it only when exactly that many bytes will follow.
type SizeExpecter interface {
	ExpectSize(n int64)
}

// dataBuffer is what an upload over a data connection holds: the HTTP
// body is read into it and written to the agent in pieces of this size.
const dataBuffer = 1 << 20

// expectData registers a one-time ticket for a data connection the agent
// is about to be asked for; ok is false when the agent cannot dial one
// (then the transfer goes in data frames). drop must be called when the
// transfer ends: it forgets the ticket and closes a connection that
// arrived unclaimed.
func (c *Channel) expectData() (ticket string, conns chan *net.UnixConn, drop func(), ok bool) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", nil, nil, false
	}
	ticket = hex.EncodeToString(b)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.dataConns || c.closed {
		return "", nil, nil, false
	}
	if c.pending == nil {
		c.pending = make(map[string]chan *net.UnixConn)
	}
	conns = make(chan *net.UnixConn, 1)
	c.pending[ticket] = conns
	drop = func() {
		c.mu.Lock()
		delete(c.pending, ticket)
		c.mu.Unlock()
		select {
		case conn := <-conns:
			conn.Close()
		default:
		}
	}
	return ticket, conns, drop, true
}

// admitData hands the data connection conn, whose agent presented the
// sandbox's token, to the transfer that asked for it with ticket. The
// agent has sent its hello line and waits for "ok" before anything else,
// so br holds nothing the transfer needs.
func (c *Channel) admitData(conn *net.UnixConn, br *bufio.Reader, ticket string) {
	c.mu.Lock()
	_, ok := c.pending[ticket]
	c.mu.Unlock()
	if !ok || br.Buffered() > 0 {
		c.log.Warn("agent data connection with an unknown ticket; refused", "dir", c.dir)
		_, _ = conn.Write([]byte("bad ticket\n"))
		conn.Close()
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	setSocketBuffers(conn, wire.SocketBuffer)
	// "ok" goes out before the transfer has the connection: it may start
	// writing at once.
	if _, err := conn.Write([]byte("ok\n")); err != nil {
		conn.Close()
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	conns, ok := c.pending[ticket]
	if !ok { // the transfer gave up meanwhile
		conn.Close()
		return
	}
	delete(c.pending, ticket)
	conns <- conn
}

// waitData waits for the data connection of a transfer, or for a frame
// the agent sent instead (an error), or for ctx. The agent's end of the
// transfer may overtake its connection (which is handed over only after
// the agent was let in): then the connection is waited for, and the frame
// stays for the caller in the channel returned.
func waitData(ctx context.Context, conns <-chan *net.UnixConn, final <-chan frame) (*net.UnixConn, <-chan frame, error) {
	select {
	case conn := <-conns:
		return conn, final, nil
	case f := <-final:
		switch {
		case f.err != nil:
			return nil, nil, f.err
		case f.kind == wire.KindError:
			return nil, nil, wire.DecodeError(f.payload)
		}
		again := make(chan frame, 1)
		again <- f
		select {
		case conn := <-conns:
			return conn, again, nil
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(10 * time.Second):
			return nil, nil, fmt.Errorf("agent sent %q but no data connection", f.kind)
		}
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

// frame is one frame read off a stream by another goroutine.
type frame struct {
	kind    wire.Kind
	payload []byte
	err     error
}

// nextFrame reads r's next frame into a channel, copying the payload.
func nextFrame(r *wire.Reader) <-chan frame {
	out := make(chan frame, 1)
	go func() {
		k, b, err := r.Next()
		out <- frame{kind: k, payload: append([]byte(nil), b...), err: err}
	}()
	return out
}

// readFileData is ReadFile over a data connection (wire.Request.DataConn).
func (c *Channel) readFileData(ctx context.Context, path string, dst io.Writer, ticket string, conns <-chan *net.UnixConn) (wire.FileInfo, error) {
	r, _, end, err := c.stream(ctx, &wire.Request{Op: wire.OpRead, Path: path, DataConn: ticket})
	if err != nil {
		return wire.FileInfo{}, err
	}
	defer end(false)
	var fi wire.FileInfo
	if err := r.ExpectJSON(&fi); err != nil {
		return fi, c.wrap(ctx, err)
	}
	if !fi.DataConn {
		return fi, c.readFrames(ctx, r, dst)
	}
	final := nextFrame(r)
	conn, final, err := waitData(ctx, conns, final)
	if err != nil {
		return fi, c.wrap(ctx, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if se, ok := dst.(SizeExpecter); ok {
		se.ExpectSize(fi.Size)
	}
	n, err := copyOut(dst, io.LimitReader(conn, fi.Size))
	if err != nil {
		if ctx.Err() != nil {
			return fi, ctx.Err()
		}
		return fi, err
	}
	var f frame
	select {
	case f = <-final:
	case <-ctx.Done():
		return fi, ctx.Err()
	}
	switch {
	case f.err != nil:
		return fi, c.wrap(ctx, f.err)
	case f.kind == wire.KindError:
		return fi, wire.DecodeError(f.payload)
	case f.kind != wire.KindEOF:
		return fi, fmt.Errorf("agent sent unexpected frame %q", f.kind)
	}
	var sent wire.Written
	if err := json.Unmarshal(f.payload, &sent); err != nil {
		return fi, fmt.Errorf("agent sent a malformed end of download: %w", err)
	}
	if n != fi.Size || sent.Size != n {
		return fi, fmt.Errorf("%s changed size during the download: %d bytes arrived of %d", path, n, fi.Size)
	}
	return fi, nil
}

// writeFileData is WriteFile over a data connection: the body goes to the
// agent raw, and the KindEOF on the stream, with the count, is what makes
// the agent keep it.
func (c *Channel) writeFileData(ctx context.Context, path string, mode uint32, src io.Reader, ticket string, conns <-chan *net.UnixConn) (int64, error) {
	var out wire.Written
	err := c.uploadData(ctx, &wire.Request{Op: wire.OpWrite, Path: path, Mode: mode, DataConn: ticket}, src, conns, &out)
	return out.Size, err
}

// untarData is Untar over a data connection.
func (c *Channel) untarData(ctx context.Context, dir string, limit int64, src io.Reader, ticket string, conns <-chan *net.UnixConn) (wire.Extracted, error) {
	var out wire.Extracted
	err := c.uploadData(ctx, &wire.Request{Op: wire.OpUntar, Path: dir, Limit: limit, DataConn: ticket}, src, conns, &out)
	return out, err
}

// uploadData sends req, then src on its data connection, then the end
// with the count, and decodes the agent's answer into out.
func (c *Channel) uploadData(ctx context.Context, req *wire.Request, src io.Reader, conns <-chan *net.UnixConn, out any) error {
	r, w, end, err := c.stream(ctx, req)
	if err != nil {
		return err
	}
	defer end(false)
	var ack struct{}
	if err := r.ExpectJSON(&ack); err != nil {
		return c.wrap(ctx, err)
	}
	// The agent dialed before its answer, and the connection is handed
	// over right after the agent was let in: it is here or about to be.
	var conn *net.UnixConn
	select {
	case conn = <-conns:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	// The agent answers before the end when it fails (a full disk, a
	// refused archive entry) and closes the connection.
	reply := make(chan error, 1)
	go func() { reply <- r.ExpectJSON(out) }()
	failed := func(werr error) error {
		select {
		case e := <-reply:
			if e != nil && IsWireError(e) {
				return e
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Second):
		}
		return c.wrap(ctx, werr)
	}
	buf := make([]byte, dataBuffer)
	var total int64
	for {
		select {
		case err := <-reply:
			if err == nil {
				err = errors.New("the agent answered an upload before its end")
			}
			return c.wrap(ctx, err)
		default:
		}
		n, rerr := fill(src, buf)
		if n > 0 {
			if _, err := conn.Write(buf[:n]); err != nil {
				return failed(err)
			}
			total += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// Closed, not half-closed, and no end frame: the agent
			// drops what arrived.
			conn.Close()
			return fmt.Errorf("reading upload: %w", rerr)
		}
	}
	if err := conn.CloseWrite(); err != nil {
		return failed(err)
	}
	if err := w.JSON(wire.KindEOF, wire.Written{Size: total}); err != nil {
		return failed(err)
	}
	select {
	case err = <-reply:
	case <-ctx.Done():
		return ctx.Err()
	}
	return c.wrap(ctx, err)
}

// tarData is Tar over a data connection: the archive arrives raw until
// the agent closes the connection, and counts only when the agent's
// KindEOF on the stream confirms its length.
func (c *Channel) tarData(ctx context.Context, dir, compression string, dst io.Writer, ticket string, conns <-chan *net.UnixConn) error {
	r, _, end, err := c.stream(ctx, &wire.Request{Op: wire.OpTar, Path: dir, Compression: compression, DataConn: ticket})
	if err != nil {
		return err
	}
	defer end(false)
	var ack struct{}
	if err := r.ExpectJSON(&ack); err != nil {
		return c.wrap(ctx, err)
	}
	final := nextFrame(r)
	conn, final, err := waitData(ctx, conns, final)
	if err != nil {
		return c.wrap(ctx, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	n, err := copyOut(dst, conn)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	var f frame
	select {
	case f = <-final:
	case <-ctx.Done():
		return ctx.Err()
	}
	switch {
	case f.err != nil:
		return c.wrap(ctx, f.err)
	case f.kind == wire.KindError:
		return wire.DecodeError(f.payload)
	case f.kind != wire.KindEOF:
		return fmt.Errorf("agent sent unexpected frame %q", f.kind)
	}
	var sent wire.Written
	if err := json.Unmarshal(f.payload, &sent); err != nil {
		return fmt.Errorf("agent sent a malformed end of archive: %w", err)
	}
	if sent.Size != n {
		return fmt.Errorf("the archive of %s was cut: %d bytes arrived of %d", dir, n, sent.Size)
	}
	return nil
}

// copyOut copies src into dst: through dst's ReadFrom when it has one (the
// API's, which splices), else in pieces of up to wire.ChunkSize, one Write
// each (a node's stream to the control plane makes a frame of every Write).
func copyOut(dst io.Writer, src io.Reader) (int64, error) {
	if rf, ok := dst.(io.ReaderFrom); ok {
		return rf.ReadFrom(src)
	}
	return io.CopyBuffer(struct{ io.Writer }{dst}, src, make([]byte, wire.ChunkSize))
}
