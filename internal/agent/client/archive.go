package client

import (
	"context"
	"fmt"
	"io"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// Untar streams a tar (plain, gzip or zstd) from src into the directory
// dir, which the agent extracts as it arrives; limit bounds the file
// content written (0: none).
func (c *Channel) Untar(ctx context.Context, dir string, limit int64, src io.Reader) (wire.Extracted, error) {
	if ticket, conns, drop, ok := c.expectData(); ok {
		defer drop()
		return c.untarData(ctx, dir, limit, src, ticket, conns)
	}
	var out wire.Extracted
	r, w, end, err := c.stream(ctx, &wire.Request{Op: wire.OpUntar, Path: dir, Limit: limit})
	if err != nil {
		return out, err
	}
	defer end(false)
	var ack struct{}
	if err := r.ExpectJSON(&ack); err != nil {
		return out, c.wrap(ctx, err)
	}
	buf := make([]byte, wire.ChunkSize)
	for {
		n, rerr := fill(src, buf)
		if n > 0 {
			if err := w.Frame(wire.KindData, buf[:n]); err != nil {
				// The agent refused the archive and said why.
				if e := r.ExpectJSON(&out); e != nil && IsWireError(e) {
					return out, e
				}
				return out, c.wrap(ctx, err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return out, fmt.Errorf("reading upload: %w", rerr)
		}
	}
	if err := w.Frame(wire.KindEOF, nil); err != nil {
		if e := r.ExpectJSON(&out); e != nil && IsWireError(e) {
			return out, e
		}
		return out, c.wrap(ctx, err)
	}
	err = r.ExpectJSON(&out)
	return out, c.wrap(ctx, err)
}

// Tar streams the directory dir as a tar into dst. Nothing is written to
// dst if dir cannot be opened.
func (c *Channel) Tar(ctx context.Context, dir, compression string, dst io.Writer) error {
	if ticket, conns, drop, ok := c.expectData(); ok {
		defer drop()
		return c.tarData(ctx, dir, compression, dst, ticket, conns)
	}
	r, _, end, err := c.stream(ctx, &wire.Request{Op: wire.OpTar, Path: dir, Compression: compression})
	if err != nil {
		return err
	}
	defer end(false)
	var ack struct{}
	if err := r.ExpectJSON(&ack); err != nil {
		return c.wrap(ctx, err)
	}
	for {
		k, b, err := next(ctx, r)
		if err != nil {
			return c.wrap(ctx, err)
		}
		switch k {
		case wire.KindData:
			if _, err := dst.Write(b); err != nil {
				return err
			}
		case wire.KindEOF:
			return nil
		case wire.KindError:
			return wire.DecodeError(b)
		default:
			return fmt.Errorf("agent sent unexpected frame %q", k)
		}
	}
}

// fill reads into buf until it is full or src fails, and returns src's own
// error: io.EOF only for a clean end (io.ReadFull would turn a body cut
// short, io.ErrUnexpectedEOF, into the same error as a short clean end).
func fill(src io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := src.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
