package nodeapi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// Parameters of the stream calls (the first frame's JSON).
type (
	execParams struct {
		Command string
		Env     map[string]string
		Cwd     string
		Timeout time.Duration
		User    string
		// Stdin, Stdout, Stderr: the caller gave one (nil and a writer
		// that discards are not the same to every driver).
		Stdin, Stdout, Stderr bool
		// Signals: the caller may send signals (only then does the
		// driver get a channel for them).
		Signals bool `json:",omitempty"`
		// StdinData is the whole stdin, sent with the parameters when it
		// is small and known up front (then no input frames follow).
		StdinData []byte `json:",omitempty"`
		// Buffered is runtime.ExecRequest.Buffered: output frames are not
		// pushed out one by one. A node before it flushes each frame.
		Buffered bool `json:",omitempty"`
	}
	fileParams struct {
		User string
		Path string
		Mode uint32
		// Data is the whole content of a small write, sent with the
		// parameters (then no input frames follow).
		Data []byte `json:",omitempty"`
	}
	tarParams struct {
		Dir         string
		Compression string
		Limit       int64
		Data        []byte `json:",omitempty"` // as fileParams.Data
	}
	attachParams struct {
		PID                     int
		Replay                  bool
		Stdout, Stderr, Dropped bool
		// Attached asks for a frameStarted once the attach has its place
		// in the output (runtime.ProcessOutput.Attached). A node before it
		// ignores the field and sends none.
		Attached bool
	}
)

// paramsWait bounds how long a node waits for a stream's first frame.
const paramsWait = 30 * time.Second

// lingerWait bounds how long a node reads what a client still sends after
// the call's last frame, so that the client sees that frame rather than a
// reset.
const lingerWait = 5 * time.Second

// streamOp runs one stream call on a sandbox and returns its result.
type streamOp func(ctx context.Context, s *serverStream, sb runtime.Sandbox, params []byte) (any, error)

// inputOps are the stream calls that need an upgraded connection. The
// others may also be made as a plain POST whose body is the parameters and
// whose answer streams the node's frames, on a kept-alive connection; they
// then have no input but what the parameters carry (StdinData, Data).
var inputOps = map[string]bool{"terminal": true}

var streamOps = map[string]streamOp{
	"exec":       opExec,
	"read_file":  opReadFile,
	"write_file": opWriteFile,
	"tar":        opTar,
	"untar":      opUntar,
	"attach":     opAttach,
	"terminal":   opTerminal,
	"watch":      opWatch,
}

// serverStream is the node's end of an upgraded connection. One goroutine
// (readLoop) reads the client's frames; the call's goroutines write.
type serverStream struct {
	conn net.Conn
	fr   frameReader
	fw   *frameWriter
	in   *windowedInput
	// signals and resizes from the client; buffered, dropped if the call
	// never reads them.
	signals chan syscall.Signal
	resizes chan resizeMsg
	cancel  context.CancelCauseFunc
}

func hasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

func (h *Handler) stream(w http.ResponseWriter, r *http.Request) {
	// A refused upgrade closes the connection: a client may have sent its
	// first frame behind the request already.
	refuse := func(err error) {
		w.Header().Set("Connection", "close")
		h.writeError(w, r, err)
	}
	op, ok := streamOps[r.PathValue("op")]
	if !ok {
		refuse(fmt.Errorf("%w: no stream call %q", ErrProtocol, r.PathValue("op")))
		return
	}
	if !hasToken(r.Header, "Connection", "upgrade") || !hasToken(r.Header, "Upgrade", streamUpgrade) {
		if inputOps[r.PathValue("op")] {
			refuse(fmt.Errorf("%w: stream call %s takes input: it needs Connection: Upgrade and Upgrade: %s", ErrProtocol, r.PathValue("op"), streamUpgrade))
			return
		}
		h.responseStream(w, r, op)
		return
	}
	sb, err := h.n.Sandbox(r.Context(), r.PathValue("id"))
	if err != nil {
		refuse(err)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		refuse(fmt.Errorf("%w: cannot take over the connection: %v", ErrProtocol, err))
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(brw.Writer, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n%s: %d\r\n\r\n", streamUpgrade, HeaderVersion, APIVersion); err != nil {
		return
	}
	if err := brw.Writer.Flush(); err != nil {
		return
	}

	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	s := &serverStream{
		conn: conn, fr: frameReader{r: brw.Reader}, fw: &frameWriter{w: conn},
		signals: make(chan syscall.Signal, 16), resizes: make(chan resizeMsg, 16), cancel: cancel,
	}
	s.in = newWindowedInput(s.fw)

	_ = conn.SetReadDeadline(time.Now().Add(paramsWait))
	typ, params, err := s.fr.next()
	if err != nil || typ != frameParams {
		switch {
		case err == nil:
			err = fmt.Errorf("%w: the first frame must be the call's parameters ('P'), not %q", ErrProtocol, typ)
		case !errors.Is(err, ErrProtocol):
			err = fmt.Errorf("%w: no parameters frame within %v: %v", ErrProtocol, paramsWait, err)
		}
		s.finish(nil, err)
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	params = append([]byte(nil), params...)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		s.readLoop(ctx)
	}()

	res, err := op(ctx, s, sb, params)
	if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause // the client broke the protocol
	}
	if err != nil && errors.Is(context.Cause(ctx), context.Canceled) {
		h.log.Debug("node API stream ended by its client", "op", r.PathValue("op"), "sandbox", r.PathValue("id"))
	}
	s.finish(res, err)
	s.in.close(errStreamOver)
	// Read what the client still sends until it closes, so that it gets the
	// last frame rather than a reset.
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = conn.SetReadDeadline(time.Now().Add(lingerWait))
	<-readDone
}

var errStreamOver = errors.New("the stream call ended")

// responseStream serves a stream call without input as a plain POST: the
// body is the parameters, the answer the node's frames. The client going
// ends the request's context, which cancels the call.
func (h *Handler) responseStream(w http.ResponseWriter, r *http.Request, op streamOp) {
	params, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxFrame))
	if err != nil {
		h.writeError(w, r, fmt.Errorf("%w: the parameters are over %d bytes or unreadable", ErrProtocol, MaxFrame))
		return
	}
	sb, err := h.n.Sandbox(r.Context(), r.PathValue("id"))
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-orkestr-node-frames")
	w.WriteHeader(http.StatusOK)
	s := &serverStream{fw: &frameWriter{w: w, flush: rc.Flush}, signals: make(chan syscall.Signal), resizes: make(chan resizeMsg), cancel: func(error) {}}
	s.in = newWindowedInput(s.fw)
	s.in.close(io.EOF)
	res, err := op(r.Context(), s, sb, params)
	// The last frame is not flushed by itself: the handler's return writes
	// it with the response's end in one write, so the client, which reads
	// the answer to its end to reuse the connection, wakes once for both.
	s.fw.mu.Lock()
	s.fw.flush = nil
	s.fw.mu.Unlock()
	s.finish(res, err)
}

// finish sends the call's last frame.
func (s *serverStream) finish(res any, err error) {
	if err != nil {
		we, _ := encodeError(err)
		_ = s.fw.json(frameError, we)
		return
	}
	if res == nil {
		res = empty{}
	}
	_ = s.fw.json(frameResult, res)
}

// readLoop dispatches the client's frames until the connection ends; a
// connection that ends before the call does cancels it.
func (s *serverStream) readLoop(ctx context.Context) {
	for {
		typ, b, err := s.fr.next()
		if err != nil {
			if errors.Is(err, ErrProtocol) {
				s.cancel(err)
			} else {
				s.cancel(context.Canceled)
			}
			s.in.close(io.ErrUnexpectedEOF)
			return
		}
		switch typ {
		case frameInput:
			if err := s.in.push(b); err != nil {
				s.cancel(err)
			}
		case frameEOF:
			s.in.close(io.EOF)
		case frameSignal:
			var m signalMsg
			if err := decodeJSON(b, &m); err != nil || m.Signal < 1 || m.Signal > 64 {
				s.cancel(fmt.Errorf("%w: a signal frame must hold {\"signal\": 1..64}", ErrProtocol))
				continue
			}
			select {
			case s.signals <- syscall.Signal(m.Signal):
			default:
			}
		case frameResize:
			var m resizeMsg
			if err := decodeJSON(b, &m); err != nil {
				s.cancel(err)
				continue
			}
			select {
			case s.resizes <- m:
			default:
			}
		default:
			s.cancel(fmt.Errorf("%w: unknown frame type %q from the client", ErrProtocol, typ))
		}
	}
}

// windowedInput queues the client's input for the call to read. The client
// sends at most inputWindow bytes ahead of what the call read; the node
// grants more with credit frames as the call reads. The queue therefore
// never holds more than the window, and the read loop never blocks on it.
type windowedInput struct {
	fw      *frameWriter
	mu      sync.Mutex
	cond    *sync.Cond
	chunks  [][]byte
	queued  int
	unacked int // read since the last credit
	err     error
}

func newWindowedInput(fw *frameWriter) *windowedInput {
	w := &windowedInput{fw: fw}
	w.cond = sync.NewCond(&w.mu)
	return w
}

func (w *windowedInput) push(b []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return nil // the call stopped reading; drop
	}
	if w.queued+len(b) > inputWindow {
		return fmt.Errorf("%w: the client sent more input than its window of %d bytes", ErrProtocol, inputWindow)
	}
	w.chunks = append(w.chunks, append([]byte(nil), b...))
	w.queued += len(b)
	w.cond.Broadcast()
	return nil
}

func (w *windowedInput) close(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.cond.Broadcast()
	w.mu.Unlock()
}

func (w *windowedInput) Read(p []byte) (int, error) {
	w.mu.Lock()
	for len(w.chunks) == 0 && w.err == nil {
		w.cond.Wait()
	}
	if len(w.chunks) == 0 {
		err := w.err
		w.mu.Unlock()
		if err == errStreamOver {
			err = io.ErrClosedPipe
		}
		return 0, err
	}
	n := copy(p, w.chunks[0])
	if n == len(w.chunks[0]) {
		w.chunks[0] = nil
		w.chunks = w.chunks[1:]
	} else {
		w.chunks[0] = w.chunks[0][n:]
	}
	w.queued -= n
	w.unacked += n
	var grant int
	if w.unacked >= inputWindow/4 || w.queued == 0 {
		grant, w.unacked = w.unacked, 0
	}
	w.mu.Unlock()
	if grant > 0 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(grant))
		_ = w.fw.frame(frameCredit, b[:])
	}
	return n, nil
}

func opExec(ctx context.Context, s *serverStream, sb runtime.Sandbox, params []byte) (any, error) {
	var p execParams
	if err := decodeJSON(params, &p); err != nil {
		return nil, err
	}
	req := runtime.ExecRequest{Command: p.Command, Env: p.Env, Cwd: p.Cwd, Timeout: p.Timeout, User: p.User, Buffered: p.Buffered}
	if p.Buffered {
		// The frames wait in the response's buffer (a chunk goes out
		// when it fills) for the result's write at the end.
		s.fw.mu.Lock()
		s.fw.flush = nil
		s.fw.mu.Unlock()
	}
	if p.Signals {
		req.Signals = s.signals
	}
	switch {
	case p.StdinData != nil:
		req.Stdin = bytes.NewReader(p.StdinData)
	case p.Stdin:
		req.Stdin = s.in
	}
	if p.Stdout {
		req.Stdout = typedWriter{s.fw, frameStdout}
	}
	if p.Stderr {
		req.Stderr = typedWriter{s.fw, frameStderr}
	}
	return sb.Exec(ctx, req)
}

func opReadFile(ctx context.Context, s *serverStream, sb runtime.Sandbox, params []byte) (any, error) {
	var p fileParams
	if err := decodeJSON(params, &p); err != nil {
		return nil, err
	}
	w := typedWriter{s.fw, frameStdout}
	if p.User != "" {
		uf, ok := sb.(runtime.UserFiles)
		if !ok {
			return nil, fmt.Errorf("%w (read as a user)", ErrNotImplemented)
		}
		return uf.ReadFileAs(ctx, p.User, p.Path, w)
	}
	return sb.ReadFile(ctx, p.Path, w)
}

func opWriteFile(ctx context.Context, s *serverStream, sb runtime.Sandbox, params []byte) (any, error) {
	var p fileParams
	if err := decodeJSON(params, &p); err != nil {
		return nil, err
	}
	var n int64
	var err error
	in := io.Reader(s.in)
	if p.Data != nil {
		in = bytes.NewReader(p.Data)
	}
	if p.User != "" {
		uf, ok := sb.(runtime.UserFiles)
		if !ok {
			return nil, fmt.Errorf("%w (write as a user)", ErrNotImplemented)
		}
		n, err = uf.WriteFileAs(ctx, p.User, p.Path, p.Mode, in)
	} else {
		n, err = sb.WriteFile(ctx, p.Path, p.Mode, in)
	}
	return countMsg{N: n}, err
}

func opTar(ctx context.Context, s *serverStream, sb runtime.Sandbox, params []byte) (any, error) {
	var p tarParams
	if err := decodeJSON(params, &p); err != nil {
		return nil, err
	}
	ar, ok := sb.(runtime.Archiver)
	if !ok {
		return nil, fmt.Errorf("%w (tar)", ErrNotImplemented)
	}
	return nil, ar.Tar(ctx, p.Dir, p.Compression, typedWriter{s.fw, frameStdout})
}

func opUntar(ctx context.Context, s *serverStream, sb runtime.Sandbox, params []byte) (any, error) {
	var p tarParams
	if err := decodeJSON(params, &p); err != nil {
		return nil, err
	}
	ar, ok := sb.(runtime.Archiver)
	if !ok {
		return nil, fmt.Errorf("%w (untar)", ErrNotImplemented)
	}
	in := io.Reader(s.in)
	if p.Data != nil {
		in = bytes.NewReader(p.Data)
	}
	return ar.Untar(ctx, p.Dir, p.Limit, in)
}

func opAttach(ctx context.Context, s *serverStream, sb runtime.Sandbox, params []byte) (any, error) {
	var p attachParams
	if err := decodeJSON(params, &p); err != nil {
		return nil, err
	}
	ps, ok := sb.(runtime.Processes)
	if !ok {
		return nil, fmt.Errorf("%w (processes)", ErrNotImplemented)
	}
	var out runtime.ProcessOutput
	if p.Stdout {
		out.Stdout = typedWriter{s.fw, frameStdout}
	}
	if p.Stderr {
		out.Stderr = typedWriter{s.fw, frameStderr}
	}
	if p.Dropped {
		out.Dropped = func(n int64) {
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], uint64(n))
			_ = s.fw.frame(frameDropped, b[:])
		}
	}
	if p.Attached {
		out.Attached = func() { _ = s.fw.json(frameStarted, struct{}{}) }
	}
	return ps.AttachProcess(ctx, p.PID, p.Replay, out)
}

func opWatch(ctx context.Context, s *serverStream, sb runtime.Sandbox, params []byte) (any, error) {
	var p runtime.FSRequest
	if err := decodeJSON(params, &p); err != nil {
		return nil, err
	}
	fo, ok := sb.(runtime.FileOps)
	if !ok {
		return nil, fmt.Errorf("%w (watch)", ErrNotImplemented)
	}
	err := fo.Watch(ctx, p, func(dirs int) {
		_ = s.fw.json(frameStarted, startedMsg{Dirs: dirs})
	}, func(ev runtime.WatchEvent) error {
		return s.fw.json(frameEvent, ev)
	})
	return nil, err
}

func opTerminal(ctx context.Context, s *serverStream, sb runtime.Sandbox, params []byte) (any, error) {
	var p runtime.TerminalRequest
	if err := decodeJSON(params, &p); err != nil {
		return nil, err
	}
	op, ok := sb.(runtime.TerminalOpener)
	if !ok {
		return nil, fmt.Errorf("%w (terminals)", ErrNotImplemented)
	}
	term, err := op.OpenTerminal(ctx, p)
	if err != nil {
		return nil, err
	}
	defer term.Close()
	if err := s.fw.json(frameStarted, startedMsg{PID: term.PID()}); err != nil {
		return nil, err
	}
	// Typed keys, signals and resizes go to the terminal as they come.
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := s.in.Read(buf)
			if n > 0 {
				if _, werr := term.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	controlDone := make(chan struct{})
	defer close(controlDone)
	go func() {
		for {
			select {
			case sig := <-s.signals:
				_ = term.Signal(sig)
			case rs := <-s.resizes:
				_ = term.Resize(rs.Rows, rs.Cols)
			case <-controlDone:
				return
			}
		}
	}()
	return term.Output(typedWriter{s.fw, frameStdout})
}
