package nodeapi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// noCtxTimeout bounds the calls whose runtime signature has no context
// (SetResources, Disk).
const noCtxTimeout = 30 * time.Second

// maxInlineStdin bounds the stdin an exec, and the content a file write or
// an untar, sends with its parameters.
const maxInlineStdin = 64 << 10

// maxTermDim mirrors the agent's bound on a terminal's rows and columns, so
// a bad size fails at once, as it does in process.
const maxTermDim = 1000

// remoteSandbox is a sandbox on a node, reached through its API. It keeps
// no connection: every call is a request. It learns that the sandbox
// stopped only from a call's answer (Done closes then); nothing polls.
type remoteSandbox struct {
	c  *Client
	id string

	mu   sync.Mutex
	info runtime.Info
	err  error
	done chan struct{}
}

// The optional interfaces a node's sandboxes may have; a node whose driver
// lacks one answers ErrNotImplemented.
var (
	_ runtime.Sandbox        = (*remoteSandbox)(nil)
	_ runtime.FileOps        = (*remoteSandbox)(nil)
	_ runtime.UserFiles      = (*remoteSandbox)(nil)
	_ runtime.Processes      = (*remoteSandbox)(nil)
	_ runtime.TerminalOpener = (*remoteSandbox)(nil)
	_ runtime.Archiver       = (*remoteSandbox)(nil)
	_ runtime.DiskReader     = (*remoteSandbox)(nil)
	_ runtime.UsageReader    = (*remoteSandbox)(nil)
)

func (c *Client) remote(i runtime.Info) *remoteSandbox {
	return &remoteSandbox{c: c, id: i.ID, info: i, done: make(chan struct{})}
}

// observe notes a call's error that says the sandbox is gone.
func (r *remoteSandbox) observe(err error) error {
	if err != nil && (errors.Is(err, runtime.ErrStopped) || errors.Is(err, runtime.ErrOutOfMemory) || errors.Is(err, runtime.ErrNotFound)) {
		r.stopped(err)
	}
	return err
}

func (r *remoteSandbox) stopped(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
		close(r.done)
	}
}

func (r *remoteSandbox) call(ctx context.Context, op string, in, out any) error {
	return r.observe(r.c.call(ctx, sandboxPath(r.id, op), in, out))
}

func (r *remoteSandbox) setInfo(i runtime.Info) {
	r.mu.Lock()
	r.info = i
	r.mu.Unlock()
}

func (r *remoteSandbox) ID() string { return r.id }

// Info is what the node last said about the sandbox (at Sandbox, Create,
// Restore, Configure or SetResources), stopped once a call found it so.
func (r *remoteSandbox) Info() runtime.Info {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := r.info
	if r.err != nil {
		i.State = runtime.StateStopped
	}
	return i
}

func (r *remoteSandbox) Done() <-chan struct{} { return r.done }

func (r *remoteSandbox) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (r *remoteSandbox) Configure(ctx context.Context, c runtime.Claim) error {
	var i runtime.Info
	if err := r.call(ctx, "configure", c, &i); err != nil {
		return err
	}
	r.setInfo(i)
	return nil
}

func (r *remoteSandbox) SetResources(res runtime.Resources) error {
	ctx, cancel := context.WithTimeout(context.Background(), noCtxTimeout)
	defer cancel()
	var i runtime.Info
	if err := r.call(ctx, "set_resources", res, &i); err != nil {
		return err
	}
	r.setInfo(i)
	return nil
}

func (r *remoteSandbox) Stats(ctx context.Context) (runtime.Stats, error) {
	var s runtime.Stats
	return s, r.call(ctx, "stats", empty{}, &s)
}

func (r *remoteSandbox) Usage(ctx context.Context) (runtime.Usage, error) {
	var u runtime.Usage
	return u, r.call(ctx, "usage", empty{}, &u)
}

func (r *remoteSandbox) Disk() (runtime.Disk, error) {
	ctx, cancel := context.WithTimeout(context.Background(), noCtxTimeout)
	defer cancel()
	var d runtime.Disk
	return d, r.call(ctx, "disk", empty{}, &d)
}

// Checkpoint is the node's business: it keeps snapshots on its own disk.
func (r *remoteSandbox) Checkpoint(ctx context.Context, dir string) (runtime.Snapshot, error) {
	return runtime.Snapshot{}, fmt.Errorf("%w: a sandbox on a node is checkpointed with Node.Checkpoint, which keeps the snapshot on the node", runtime.ErrInvalidRequest)
}

func (r *remoteSandbox) Destroy(ctx context.Context) error {
	if err := r.c.Destroy(ctx, r.id); err != nil {
		return err
	}
	r.stopped(runtime.ErrStopped)
	return nil
}

func (r *remoteSandbox) List(ctx context.Context, path string) ([]runtime.FileInfo, error) {
	return r.ListAs(ctx, "", path)
}

func (r *remoteSandbox) ListAs(ctx context.Context, user, path string) ([]runtime.FileInfo, error) {
	var out []runtime.FileInfo
	return out, r.call(ctx, "list", pathReq{User: user, Path: path}, &out)
}

func (r *remoteSandbox) Stat(ctx context.Context, path string) (runtime.FileInfo, error) {
	var fi runtime.FileInfo
	return fi, r.call(ctx, "stat", pathReq{Path: path}, &fi)
}

func (r *remoteSandbox) Remove(ctx context.Context, path string, recursive bool) error {
	return r.RemoveAs(ctx, "", path, recursive)
}

func (r *remoteSandbox) RemoveAs(ctx context.Context, user, path string, recursive bool) error {
	return r.call(ctx, "remove", pathReq{User: user, Path: path, Recursive: recursive}, &empty{})
}

func (r *remoteSandbox) MkdirAll(ctx context.Context, path string, mode uint32) error {
	return r.call(ctx, "mkdir_all", pathReq{Path: path, Mode: mode}, &empty{})
}

func (r *remoteSandbox) fsCall(ctx context.Context, op string, req runtime.FSRequest) (runtime.Stat, error) {
	var st runtime.Stat
	return st, r.call(ctx, op, req, &st)
}

func (r *remoteSandbox) StatPath(ctx context.Context, req runtime.FSRequest) (runtime.Stat, error) {
	return r.fsCall(ctx, "stat_path", req)
}

func (r *remoteSandbox) Exists(ctx context.Context, req runtime.FSRequest) (runtime.Stat, error) {
	return r.fsCall(ctx, "exists", req)
}

func (r *remoteSandbox) Mkdir(ctx context.Context, req runtime.FSRequest) (runtime.Stat, error) {
	return r.fsCall(ctx, "mkdir", req)
}

func (r *remoteSandbox) Rename(ctx context.Context, req runtime.FSRequest) (runtime.Stat, error) {
	return r.fsCall(ctx, "rename", req)
}

func (r *remoteSandbox) StartProcess(ctx context.Context, req runtime.ProcessRequest) (runtime.ProcessInfo, error) {
	var p runtime.ProcessInfo
	return p, r.call(ctx, "processes/start", req, &p)
}

func (r *remoteSandbox) ListProcesses(ctx context.Context) ([]runtime.ProcessInfo, error) {
	var ps []runtime.ProcessInfo
	return ps, r.call(ctx, "processes/list", empty{}, &ps)
}

func (r *remoteSandbox) ProcessInput(ctx context.Context, pid int, data []byte, closeStdin bool) error {
	return r.call(ctx, "processes/input", processReq{PID: pid, Data: data, CloseStdin: closeStdin}, &empty{})
}

func (r *remoteSandbox) SignalProcess(ctx context.Context, pid, signal int) error {
	return r.call(ctx, "processes/signal", processReq{PID: pid, Signal: signal}, &empty{})
}

// stream runs a stream call: opens it, starts send (if any) beside it,
// receives until the result, and closes it.
func (r *remoteSandbox) stream(ctx context.Context, op string, params any, send func(*clientStream) error, handle func(byte, []byte) error, result any) error {
	var s *clientStream
	var err error
	if send == nil {
		s, err = r.c.postStream(ctx, r.id, op, params)
	} else {
		s, err = r.c.openStream(ctx, r.id, op, params)
	}
	if err != nil {
		return r.observe(err)
	}
	defer s.close()
	var sendMu sync.Mutex
	var sendErr error
	if send != nil {
		go func() {
			if err := send(s); err != nil {
				var re readErr
				if errors.As(err, &re) {
					// The caller's reader failed: abandon the call.
					sendMu.Lock()
					sendErr = re.err
					sendMu.Unlock()
					s.close()
				}
			}
		}()
	}
	err = s.recv(handle, result)
	if err != nil {
		// Not waiting for send: it may be blocked in the caller's reader.
		sendMu.Lock()
		defer sendMu.Unlock()
		if sendErr != nil {
			return sendErr
		}
	}
	return r.observe(err)
}

// writers returns a frame handler writing stdout and stderr frames.
func writers(stdout, stderr io.Writer) func(byte, []byte) error {
	return func(typ byte, b []byte) error {
		var w io.Writer
		switch typ {
		case frameStdout:
			w = stdout
		case frameStderr:
			w = stderr
		default:
			return fmt.Errorf("%w: unexpected frame %q from the node", ErrProtocol, typ)
		}
		if w == nil {
			return nil
		}
		if _, err := w.Write(b); err != nil {
			return fmt.Errorf("writing output: %w", err)
		}
		return nil
	}
}

func (r *remoteSandbox) Exec(ctx context.Context, req runtime.ExecRequest) (runtime.ExecResult, error) {
	p := execParams{Command: req.Command, Env: req.Env, Cwd: req.Cwd, Timeout: req.Timeout, User: req.User,
		Stdin: req.Stdin != nil, Stdout: req.Stdout != nil, Stderr: req.Stderr != nil, Signals: req.Signals != nil,
		Buffered: req.Buffered}
	if l, ok := req.Stdin.(interface{ Len() int }); ok && l.Len() <= maxInlineStdin && req.Signals == nil {
		// Small stdin known up front (api's exec): with the parameters.
		b, err := io.ReadAll(req.Stdin)
		if err != nil {
			return runtime.ExecResult{}, err
		}
		p.StdinData, req.Stdin = b, nil
	}
	var send func(*clientStream) error
	if req.Stdin != nil || req.Signals != nil {
		send = func(s *clientStream) error {
			if req.Signals != nil {
				go forwardSignals(s, req.Signals)
			}
			if req.Stdin != nil {
				// As in process: a failing stdin is the end of input.
				if err := s.sendInput(req.Stdin); err != nil {
					var re readErr
					if errors.As(err, &re) {
						_ = s.fw.frame(frameEOF, nil)
					}
				}
			}
			return nil
		}
	}
	var res runtime.ExecResult
	err := r.stream(ctx, "exec", p, send, writers(req.Stdout, req.Stderr), &res)
	return res, err
}

func forwardSignals(s *clientStream, sigs <-chan syscall.Signal) {
	for {
		select {
		case sig, ok := <-sigs:
			if !ok {
				return
			}
			if s.control(frameSignal, signalMsg{Signal: int(sig)}) != nil {
				return
			}
		case <-s.done:
			return
		}
	}
}

func (r *remoteSandbox) ReadFile(ctx context.Context, path string, w io.Writer) (runtime.FileInfo, error) {
	return r.ReadFileAs(ctx, "", path, w)
}

func (r *remoteSandbox) ReadFileAs(ctx context.Context, user, path string, w io.Writer) (runtime.FileInfo, error) {
	var fi runtime.FileInfo
	err := r.stream(ctx, "read_file", fileParams{User: user, Path: path}, nil, writers(w, nil), &fi)
	return fi, err
}

func (r *remoteSandbox) WriteFile(ctx context.Context, path string, mode uint32, src io.Reader) (int64, error) {
	return r.WriteFileAs(ctx, "", path, mode, src)
}

// peekSmall reads src's start: all of it when it ends within
// maxInlineStdin bytes (whole), else a reader of the same content.
func peekSmall(src io.Reader) (data []byte, rest io.Reader, whole bool, err error) {
	buf := make([]byte, maxInlineStdin)
	n, err := io.ReadFull(src, buf)
	switch err {
	case io.EOF, io.ErrUnexpectedEOF:
		return buf[:n], nil, true, nil
	case nil:
		return nil, io.MultiReader(bytes.NewReader(buf), src), false, nil
	}
	return nil, nil, false, err
}

// upload sends src to a call: with the parameters when it is small (set
// by inline), else as input frames on an upgraded connection.
func upload(src io.Reader, inline func([]byte)) (func(*clientStream) error, error) {
	data, rest, whole, err := peekSmall(src)
	if err != nil {
		return nil, err
	}
	if whole {
		inline(data)
		return nil, nil
	}
	return func(s *clientStream) error { return s.sendInput(rest) }, nil
}

func (r *remoteSandbox) WriteFileAs(ctx context.Context, user, path string, mode uint32, src io.Reader) (int64, error) {
	p := fileParams{User: user, Path: path, Mode: mode}
	send, err := upload(src, func(b []byte) { p.Data = b })
	if err != nil {
		return 0, err
	}
	var n countMsg
	err = r.stream(ctx, "write_file", &p, send, nil, &n)
	return n.N, err
}

func (r *remoteSandbox) Untar(ctx context.Context, dir string, limit int64, src io.Reader) (runtime.Extracted, error) {
	p := tarParams{Dir: dir, Limit: limit}
	send, err := upload(src, func(b []byte) { p.Data = b })
	if err != nil {
		return runtime.Extracted{}, err
	}
	var x runtime.Extracted
	err = r.stream(ctx, "untar", &p, send, nil, &x)
	return x, err
}

func (r *remoteSandbox) Tar(ctx context.Context, dir, compression string, w io.Writer) error {
	return r.stream(ctx, "tar", tarParams{Dir: dir, Compression: compression}, nil, writers(w, nil), nil)
}

func (r *remoteSandbox) AttachProcess(ctx context.Context, pid int, replay bool, out runtime.ProcessOutput) (runtime.ProcessInfo, error) {
	p := attachParams{PID: pid, Replay: replay, Stdout: out.Stdout != nil, Stderr: out.Stderr != nil, Dropped: out.Dropped != nil,
		Attached: out.Attached != nil}
	w := writers(out.Stdout, out.Stderr)
	handle := func(typ byte, b []byte) error {
		if typ == frameStarted && out.Attached != nil {
			out.Attached()
			return nil
		}
		if typ == frameDropped {
			if len(b) != 8 {
				return fmt.Errorf("%w: dropped frame of %d bytes", ErrProtocol, len(b))
			}
			if out.Dropped != nil {
				out.Dropped(int64(binary.BigEndian.Uint64(b)))
			}
			return nil
		}
		return w(typ, b)
	}
	var info runtime.ProcessInfo
	err := r.stream(ctx, "attach", p, nil, handle, &info)
	return info, err
}

func (r *remoteSandbox) Watch(ctx context.Context, req runtime.FSRequest, started func(int), onEvent func(runtime.WatchEvent) error) error {
	handle := func(typ byte, b []byte) error {
		switch typ {
		case frameStarted:
			var m startedMsg
			if err := decodeJSON(b, &m); err != nil {
				return err
			}
			if started != nil {
				started(m.Dirs)
			}
		case frameEvent:
			var ev runtime.WatchEvent
			if err := decodeJSON(b, &ev); err != nil {
				return err
			}
			return onEvent(ev)
		default:
			return fmt.Errorf("%w: unexpected frame %q from the node", ErrProtocol, typ)
		}
		return nil
	}
	return r.stream(ctx, "watch", req, nil, handle, nil)
}

func (r *remoteSandbox) OpenTerminal(ctx context.Context, req runtime.TerminalRequest) (runtime.Terminal, error) {
	s, err := r.c.openStream(ctx, r.id, "terminal", req)
	if err != nil {
		return nil, r.observe(err)
	}
	var pid int
	err = s.recv(func(typ byte, b []byte) error {
		if typ != frameStarted {
			return fmt.Errorf("%w: unexpected frame %q before the terminal started", ErrProtocol, typ)
		}
		var m startedMsg
		if err := decodeJSON(b, &m); err != nil {
			return err
		}
		pid = m.PID
		return errStarted
	}, nil)
	if !errors.Is(err, errStarted) {
		s.close()
		if err == nil {
			err = fmt.Errorf("%w: the terminal ended before it started", ErrProtocol)
		}
		return nil, r.observe(err)
	}
	return &remoteTerminal{r: r, s: s, pid: pid}, nil
}

var errStarted = errors.New("started")

// remoteTerminal is a terminal session on a node. Input is sent within the
// node's window, which Output's reading replenishes: run Output alongside
// Write, as for any terminal.
type remoteTerminal struct {
	r   *remoteSandbox
	s   *clientStream
	pid int
}

func (t *remoteTerminal) PID() int { return t.pid }

func (t *remoteTerminal) Write(p []byte) (int, error) {
	n, err := t.s.write(p)
	if err != nil {
		return n, fmt.Errorf("%w: the terminal is closed", runtime.ErrStopped)
	}
	return n, nil
}

func (t *remoteTerminal) Resize(rows, cols int) error {
	if rows < 1 || cols < 1 || rows > maxTermDim || cols > maxTermDim {
		return fmt.Errorf("%w: terminal size %dx%d is out of range (1 to %d rows and columns)", runtime.ErrInvalidRequest, rows, cols, maxTermDim)
	}
	return t.s.control(frameResize, resizeMsg{Rows: rows, Cols: cols})
}

func (t *remoteTerminal) Signal(sig syscall.Signal) error {
	return t.s.control(frameSignal, signalMsg{Signal: int(sig)})
}

func (t *remoteTerminal) Output(w io.Writer) (runtime.ExecResult, error) {
	var res runtime.ExecResult
	err := t.s.recv(writers(w, nil), &res)
	if err != nil {
		t.s.close()
	}
	return res, t.r.observe(err)
}

func (t *remoteTerminal) Close() error {
	t.s.close()
	return nil
}
