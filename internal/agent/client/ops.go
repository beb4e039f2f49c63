package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"syscall"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// ExecIO carries a command's streams. Nil readers and writers are allowed.
// Writes to Stdout and Stderr happen as output is produced, from one
// goroutine, so the caller can forward them live.
type ExecIO struct {
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
	Signals <-chan syscall.Signal
}

// Exec runs one command and returns its exit status. A wire.Error means the
// command never started (e.g. a missing working directory).
//
// Nothing acknowledges the start: stdin and signals are streamed right
// behind the request and the agent reads them once the command runs, which
// saves a frame and a wakeup on each side of every exec.
func (c *Channel) Exec(ctx context.Context, e wire.Exec, io_ ExecIO) (wire.ExitStatus, error) {
	e.Stdin = io_.Stdin != nil
	r, w, end, err := c.stream(ctx, &wire.Request{Op: wire.OpExec, Exec: &e})
	if err != nil {
		return wire.ExitStatus{}, err
	}
	// After the exit, KindDone tells the agent the stream is free again.
	// After a refusal the stream is reused only if nothing was sent behind
	// the request (the agent never reads what was).
	exited, refused := false, false
	sending := io_.Stdin != nil || io_.Signals != nil
	finished := make(chan struct{})
	senderDone := make(chan struct{})
	defer func() {
		close(finished)
		if sending {
			<-senderDone
		}
		switch {
		case exited:
			end(w.Frame(wire.KindDone, nil) == nil)
		default:
			end(refused && !sending)
		}
	}()
	if sending {
		go c.sendInput(w, io_, finished, senderDone)
	}

	for {
		k, b, err := next(ctx, r)
		if err != nil {
			return wire.ExitStatus{}, c.wrap(ctx, err)
		}
		switch k {
		case wire.KindStdout:
			if io_.Stdout != nil {
				if _, err := io_.Stdout.Write(b); err != nil {
					return wire.ExitStatus{}, fmt.Errorf("writing stdout: %w", err)
				}
			}
		case wire.KindStderr:
			if io_.Stderr != nil {
				if _, err := io_.Stderr.Write(b); err != nil {
					return wire.ExitStatus{}, fmt.Errorf("writing stderr: %w", err)
				}
			}
		case wire.KindExit:
			var es wire.ExitStatus
			if err := jsonUnmarshal(b, &es); err != nil {
				return wire.ExitStatus{}, err
			}
			exited = true
			// The stream's end after a cancel is what kills the command,
			// and its exit can still be read from the stream's buffer:
			// the caller gave up, so it gets its context's error.
			if err := ctx.Err(); err != nil {
				return wire.ExitStatus{}, err
			}
			return es, nil
		case wire.KindError:
			refused = true
			return wire.ExitStatus{}, c.wrap(ctx, wire.DecodeError(b))
		}
	}
}

// sendInput streams stdin and signals to a running exec until finished is
// closed; it owns the writer until then.
func (c *Channel) sendInput(w *wire.Writer, io_ ExecIO, finished <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	if io_.Stdin != nil {
		chunks := make(chan []byte)
		go func() {
			defer close(chunks)
			for {
				buf := make([]byte, 32<<10)
				n, err := io_.Stdin.Read(buf)
				if n > 0 {
					select {
					case chunks <- buf[:n]:
					case <-finished:
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		for chunks != nil {
			select {
			case b, ok := <-chunks:
				if !ok {
					_ = w.Frame(wire.KindEOF, nil)
					chunks = nil
					continue
				}
				if w.Frame(wire.KindStdin, b) != nil {
					return
				}
			case sig, ok := <-io_.Signals:
				if !ok {
					io_.Signals = nil
					continue
				}
				if w.Frame(wire.KindSignal, []byte{byte(sig)}) != nil {
					return
				}
			case <-finished:
				return
			}
		}
	}
	for {
		select {
		case sig, ok := <-io_.Signals:
			if !ok {
				return
			}
			if w.Frame(wire.KindSignal, []byte{byte(sig)}) != nil {
				return
			}
		case <-finished:
			return
		}
	}
}

// ReadFile streams a file from the sandbox into dst and returns its info.
// Nothing is written to dst if the file cannot be opened.
func (c *Channel) ReadFile(ctx context.Context, path string, dst io.Writer) (wire.FileInfo, error) {
	return c.ReadFileAs(ctx, "", path, dst)
}

// ReadFileAs is ReadFile as user ("" is root): the user's permissions
// decide.
func (c *Channel) ReadFileAs(ctx context.Context, user, path string, dst io.Writer) (wire.FileInfo, error) {
	if user == "" {
		if ticket, conns, drop, ok := c.expectData(); ok {
			defer drop()
			return c.readFileData(ctx, path, dst, ticket, conns)
		}
	}
	r, _, end, err := c.stream(ctx, &wire.Request{Op: wire.OpRead, Path: path, User: user})
	if err != nil {
		return wire.FileInfo{}, err
	}
	defer end(false)
	var fi wire.FileInfo
	if err := r.ExpectJSON(&fi); err != nil {
		return fi, c.wrap(ctx, err)
	}
	return fi, c.readFrames(ctx, r, dst)
}

// readFrames copies a download's data frames into dst up to its end.
func (c *Channel) readFrames(ctx context.Context, r *wire.Reader, dst io.Writer) error {
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

// OpenFile starts streaming a file and returns its info and a reader; the
// reader must be closed.
func (c *Channel) OpenFile(ctx context.Context, path string) (wire.FileInfo, io.ReadCloser, error) {
	r, _, end, err := c.stream(ctx, &wire.Request{Op: wire.OpRead, Path: path})
	if err != nil {
		return wire.FileInfo{}, nil, err
	}
	done := func() { end(false) }
	var fi wire.FileInfo
	if err := r.ExpectJSON(&fi); err != nil {
		done()
		return fi, nil, c.wrap(ctx, err)
	}
	return fi, &fileReader{c: c, ctx: ctx, r: r, done: done}, nil
}

type fileReader struct {
	c    *Channel
	ctx  context.Context
	r    *wire.Reader
	done func()
	buf  []byte
	err  error
}

func (f *fileReader) Read(p []byte) (int, error) {
	for len(f.buf) == 0 {
		if f.err != nil {
			return 0, f.err
		}
		k, b, err := next(f.ctx, f.r)
		switch {
		case err != nil:
			f.err = f.c.wrap(f.ctx, err)
		case k == wire.KindData:
			f.buf = append(f.buf[:0], b...)
		case k == wire.KindEOF:
			f.err = io.EOF
		case k == wire.KindError:
			f.err = wire.DecodeError(b)
		default:
			f.err = fmt.Errorf("agent sent unexpected frame %q", k)
		}
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	return n, nil
}

func (f *fileReader) Close() error { f.done(); return nil }

// WriteFile streams src into path (parents created, replaced atomically) and
// returns the bytes written. mode 0 means 0644.
func (c *Channel) WriteFile(ctx context.Context, path string, mode uint32, src io.Reader) (int64, error) {
	return c.WriteFileAs(ctx, "", path, mode, src)
}

// WriteFileAs is WriteFile as user ("" is root): the user's permissions
// decide, and the file and the parents it makes belong to the user.
func (c *Channel) WriteFileAs(ctx context.Context, user, path string, mode uint32, src io.Reader) (int64, error) {
	if user == "" {
		if ticket, conns, drop, ok := c.expectData(); ok {
			defer drop()
			return c.writeFileData(ctx, path, mode, src, ticket, conns)
		}
	}
	r, w, end, err := c.stream(ctx, &wire.Request{Op: wire.OpWrite, Path: path, Mode: mode, User: user})
	if err != nil {
		return 0, err
	}
	defer end(false)
	var ack struct{}
	if err := r.ExpectJSON(&ack); err != nil {
		return 0, c.wrap(ctx, err)
	}
	// The agent answers before the upload's end when it fails (a full
	// disk); reading its answer meanwhile stops the upload at the next
	// chunk instead of sending the rest for nothing.
	var out wire.Written
	reply := make(chan error, 1)
	go func() { reply <- r.ExpectJSON(&out) }()
	buf := make([]byte, wire.ChunkSize)
	for {
		select {
		case err := <-reply:
			if err == nil {
				err = errors.New("the agent answered an upload before its end")
			}
			return 0, c.wrap(ctx, err)
		default:
		}
		// Whole chunks: an HTTP body reads in pieces of what the socket
		// had, and every frame costs the agent a trapped syscall.
		n, rerr := fill(src, buf)
		if n > 0 {
			if err := w.Frame(wire.KindData, buf[:n]); err != nil {
				// The agent may have failed (e.g. disk full) and said why.
				if e := <-reply; e != nil && IsWireError(e) {
					return 0, e
				}
				return 0, c.wrap(ctx, err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return 0, fmt.Errorf("reading upload: %w", rerr)
		}
	}
	if err := w.Frame(wire.KindEOF, nil); err != nil {
		return 0, c.wrap(ctx, err)
	}
	if err := <-reply; err != nil {
		return 0, c.wrap(ctx, err)
	}
	return out.Size, nil
}

// List lists a directory. A large one arrives in several frames.
func (c *Channel) List(ctx context.Context, path string) ([]wire.FileInfo, error) {
	return c.ListAs(ctx, "", path)
}

// ListAs is List as user ("" is root). A large directory arrives in
// several frames (wire.List.More).
func (c *Channel) ListAs(ctx context.Context, user, path string) ([]wire.FileInfo, error) {
	r, _, end, err := c.stream(ctx, &wire.Request{Op: wire.OpList, Path: path, User: user})
	if err != nil {
		return nil, err
	}
	var all []wire.FileInfo
	for {
		var out wire.List
		err := r.ExpectJSON(&out)
		if err != nil {
			end(IsWireError(err))
			return nil, c.wrap(ctx, err)
		}
		all = append(all, out.Entries...)
		if !out.More {
			end(true)
			return all, nil
		}
	}
}

// Stat describes one path without following a final symlink.
func (c *Channel) Stat(ctx context.Context, path string) (wire.FileInfo, error) {
	var out wire.FileInfo
	err := c.call(ctx, &wire.Request{Op: wire.OpStat, Path: path}, &out)
	return out, err
}

// Remove deletes a file, or a directory tree when recursive. The agent
// watches the stream to stop when ctx ends, so it is never reused.
func (c *Channel) Remove(ctx context.Context, path string, recursive bool) error {
	return c.RemoveAs(ctx, "", path, recursive)
}

// RemoveAs is Remove as user ("" is root).
func (c *Channel) RemoveAs(ctx context.Context, user, path string, recursive bool) error {
	r, _, end, err := c.stream(ctx, &wire.Request{Op: wire.OpRemove, Path: path, Recursive: recursive, User: user})
	if err != nil {
		return err
	}
	defer end(false)
	var out struct{}
	return c.wrap(ctx, r.ExpectJSON(&out))
}

// MkdirAll creates a directory and its parents.
func (c *Channel) MkdirAll(ctx context.Context, path string, mode uint32) error {
	var out struct{}
	return c.call(ctx, &wire.Request{Op: wire.OpMkdir, Path: path, Mode: mode}, &out)
}

// OOMKill asks the agent to kill the command process that holds the most
// memory (wire.OpOOMKill).
func (c *Channel) OOMKill(ctx context.Context) (wire.OOMKilled, error) {
	var out wire.OOMKilled
	err := c.call(ctx, &wire.Request{Op: wire.OpOOMKill}, &out)
	return out, err
}

// IsWireError reports whether err is an error reported by the agent.
func IsWireError(err error) bool {
	_, ok := err.(*wire.Error)
	return ok
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// next reads the agent's next frame unless ctx has ended. A yamux stream
// serves data it had buffered even past the deadline set at cancellation,
// so a cancelled exec could otherwise read on through its output to the
// exit the agent sent after killing the command, and report success.
func next(ctx context.Context, r *wire.Reader) (wire.Kind, []byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	return r.Next()
}
