package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// StatX describes a path (not following a final symlink).
func (c *Channel) StatX(ctx context.Context, f wire.FS) (wire.Stat, error) {
	return c.fsCall(ctx, wire.OpStatX, f)
}

// Exists says whether a path is there (Stat.Exists), describing it if so.
func (c *Channel) Exists(ctx context.Context, f wire.FS) (wire.Stat, error) {
	return c.fsCall(ctx, wire.OpExists, f)
}

// Mkdir makes a directory (with f.Parents, its parents too).
func (c *Channel) Mkdir(ctx context.Context, f wire.FS) (wire.Stat, error) {
	return c.fsCall(ctx, wire.OpMkdirX, f)
}

// Rename moves f.Path to f.Dest.
func (c *Channel) Rename(ctx context.Context, f wire.FS) (wire.Stat, error) {
	return c.fsCall(ctx, wire.OpRename, f)
}

func (c *Channel) fsCall(ctx context.Context, op string, f wire.FS) (wire.Stat, error) {
	var out wire.Stat
	err := c.call(ctx, &wire.Request{Op: op, FS: &f}, &out)
	return out, err
}

// Watch watches a directory and calls onEvent for each change until ctx
// ends (then it returns ctx's error), the watched directory goes away
// (nil), or the connection breaks. started is called once the watch holds.
func (c *Channel) Watch(ctx context.Context, f wire.FS, started func(wire.WatchStarted), onEvent func(wire.WatchEvent) error) error {
	r, _, end, err := c.stream(ctx, &wire.Request{Op: wire.OpWatch, FS: &f})
	if err != nil {
		return err
	}
	defer end(false)
	var ack wire.WatchStarted
	if err := r.ExpectJSON(&ack); err != nil {
		return c.wrap(ctx, err)
	}
	if started != nil {
		started(ack)
	}
	for {
		k, b, err := next(ctx, r)
		if err != nil {
			if IsWireError(err) {
				return err
			}
			// The agent ends the stream when the watched directory goes.
			if ctx.Err() == nil && isEOF(err) {
				return nil
			}
			return c.wrap(ctx, err)
		}
		switch k {
		case wire.KindJSON:
			var ev wire.WatchEvent
			if err := json.Unmarshal(b, &ev); err != nil {
				return err
			}
			if err := onEvent(ev); err != nil {
				return err
			}
		case wire.KindError:
			return wire.DecodeError(b)
		default:
			return fmt.Errorf("agent sent unexpected frame %q", k)
		}
	}
}

func isEOF(err error) bool { return errors.Is(err, io.EOF) }
