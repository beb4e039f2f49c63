package orkestr

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"mime"
	"net"
	"net/http"
	"strconv"
	"unicode/utf8"
	"unsafe"
)

// maxStdin is what fits in the API's 1 MiB JSON body limit.
const maxStdin = 1 << 20

// ExecOptions tune one command. Zero fields take the API's defaults.
type ExecOptions struct {
	TimeoutSeconds int               // 0: 60 s
	Env            map[string]string // added to the sandbox's env for this command
	Cwd            string            // "": /workspace
	// Stdin is read to its end before the command starts and sent as the
	// command's standard input. It must be UTF-8 text of at most 1 MiB.
	Stdin io.Reader
	// User runs the command as UserRoot ("", the default) or UserUser.
	User string
}

// BlockedConnection is a connection the sandbox's network policy dropped.
type BlockedConnection struct {
	Host string `json:"host"`
	Port int    `json:"port"`
}

func (b BlockedConnection) String() string {
	return net.JoinHostPort(b.Host, strconv.Itoa(b.Port))
}

// ExecResult is how a command ended. A non-zero ExitCode is not an error
// (unless connections were blocked: see NetworkPolicyError).
type ExecResult struct {
	Stdout             string              `json:"stdout"`
	Stderr             string              `json:"stderr"`
	ExitCode           int                 `json:"exit_code"`
	DurationMS         int64               `json:"duration_ms"`
	BlockedConnections []BlockedConnection `json:"blocked_connections"`
	// OOMKilled: a process of the command was killed because the sandbox
	// reached its memory limit; the sandbox keeps running.
	OOMKilled bool `json:"oom_killed"`
}

type execBody struct {
	Command        string            `json:"command"`
	TimeoutSeconds int               `json:"timeout_seconds,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	Cwd            string            `json:"cwd,omitempty"`
	Stdin          *string           `json:"stdin,omitempty"`
	User           string            `json:"user,omitempty"`
}

func newExecBody(command string, o ExecOptions) (*execBody, error) {
	b := &execBody{Command: command, TimeoutSeconds: o.TimeoutSeconds, Env: o.Env, Cwd: o.Cwd, User: o.User}
	if o.Stdin != nil {
		raw, err := io.ReadAll(io.LimitReader(o.Stdin, maxStdin+1))
		if err != nil {
			return nil, fmt.Errorf("orkestr: reading stdin: %w", err)
		}
		if len(raw) > maxStdin {
			return nil, errors.New("orkestr: stdin is larger than the API's 1 MiB limit; write it to a file instead")
		}
		if !utf8.Valid(raw) {
			return nil, errors.New("orkestr: stdin is not UTF-8 text; write binary input to a file instead")
		}
		s := string(raw)
		b.Stdin = &s
	}
	return b, nil
}

// Exec runs command with /bin/sh -c inside the sandbox and waits for it.
// It fails with *ExecTimeoutError (carrying the output so far) if the
// command outlives its timeout, and returns both the result and a
// *NetworkPolicyError if it exited non-zero after blocked connections. It
// is never retried.
func (s *Sandbox) Exec(ctx context.Context, command string, o ExecOptions) (*ExecResult, error) {
	path, err := sandboxPath(s.ID, "/exec")
	if err != nil {
		return nil, err
	}
	body, err := newExecBody(command, o)
	if err != nil {
		return nil, err
	}
	res := &ExecResult{}
	if err := s.client.call(ctx, &request{method: http.MethodPost, path: path, json: body}, res); err != nil {
		return nil, err
	}
	if res.BlockedConnections == nil {
		res.BlockedConnections = []BlockedConnection{}
	}
	return res, checkNetworkPolicy(res)
}

// Stream names of an ExecChunk.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// ExecChunk is a piece of a running command's output. Data holds the bytes
// exactly as the command wrote them (a Go string may hold any bytes), also
// when they are not UTF-8; a multi-byte character may be split between two
// chunks.
type ExecChunk struct {
	Stream string `json:"stream"` // StreamStdout or StreamStderr
	Data   string `json:"data"`
}

// ExecStream is a running command whose output arrives as it is written.
// Range over Chunks, then call Wait; Close releases it early.
//
//	st, err := sbx.ExecStream(ctx, "python long_task.py", orkestr.ExecOptions{})
//	if err != nil {
//		return err
//	}
//	defer st.Close()
//	for c := range st.Chunks() {
//		fmt.Print(c.Data)
//	}
//	res, err := st.Wait()
type ExecStream struct {
	body      io.ReadCloser
	dec       *json.Decoder // NDJSON, from a server without the binary framing
	frames    *bufio.Reader // the binary framing (execFramesType)
	requestID string
	done      bool
	result    *ExecResult
	err       error
}

// streamEvent is one line of the NDJSON stream.
type streamEvent struct {
	Type               string              `json:"type"`
	Data               string              `json:"data"`
	ExitCode           int                 `json:"exit_code"`
	DurationMS         int64               `json:"duration_ms"`
	BlockedConnections []BlockedConnection `json:"blocked_connections"`
	OOMKilled          bool                `json:"oom_killed"`
	Error              *errorPayload       `json:"error"`
}

// ExecStream starts command like Exec and returns as soon as the API
// accepted it; the output arrives through the returned stream. It is never
// retried.
func (s *Sandbox) ExecStream(ctx context.Context, command string, o ExecOptions) (*ExecStream, error) {
	path, err := sandboxPath(s.ID, "/exec/stream")
	if err != nil {
		return nil, err
	}
	body, err := newExecBody(command, o)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.do(ctx, &request{method: http.MethodPost, path: path, json: body, accept: execFramesType})
	if err != nil {
		return nil, err
	}
	st := &ExecStream{body: resp.Body, requestID: resp.Header.Get("X-Request-Id")}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt == execFramesType {
		st.frames = bufio.NewReaderSize(resp.Body, 64<<10)
	} else {
		st.dec = json.NewDecoder(resp.Body)
	}
	return st, nil
}

// execFramesType is the exec stream's binary-safe framing: per frame a type
// byte (1 stdout, 2 stderr, 3 exit, 4 error), a 4-byte big-endian length and
// the payload (output bytes as written; JSON for exit and error).
const execFramesType = "application/vnd.orkestr.exec-frames"

// maxFrame bounds a frame the SDK accepts: the server sends at most 256 KiB
// of output per frame.
const maxFrame = 16 << 20

// readEvent reads the next event of either format. With scratch, an
// output frame is read into *scratch (grown as needed) and the event's Data
// shares it until the next call, for a caller that writes it out at once;
// without, every frame gets a buffer of its own.
func (st *ExecStream) readEvent(scratch *[]byte) (streamEvent, error) {
	var ev streamEvent
	if st.frames == nil {
		err := st.dec.Decode(&ev)
		return ev, err
	}
	var hdr [5]byte
	if _, err := io.ReadFull(st.frames, hdr[:]); err != nil {
		return ev, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxFrame {
		return ev, fmt.Errorf("a frame of %d bytes (the server sends at most %d)", n, maxFrame)
	}
	var payload []byte
	if scratch != nil && (hdr[0] == 1 || hdr[0] == 2) {
		if uint32(cap(*scratch)) < n {
			*scratch = make([]byte, n)
		}
		payload = (*scratch)[:n]
	} else {
		// A fresh buffer per frame, never written again: the chunk's
		// string can share it instead of copying it.
		payload = make([]byte, n)
	}
	if _, err := io.ReadFull(st.frames, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return ev, err
	}
	switch hdr[0] {
	case 1:
		ev.Type, ev.Data = StreamStdout, unsafe.String(unsafe.SliceData(payload), len(payload))
	case 2:
		ev.Type, ev.Data = StreamStderr, unsafe.String(unsafe.SliceData(payload), len(payload))
	case 3, 4:
		if err := json.Unmarshal(payload, &ev); err != nil {
			return ev, fmt.Errorf("a malformed closing event: %w", err)
		}
	}
	// Unknown frame types are skipped, for forward compatibility.
	return ev, nil
}

// next reads the stream up to the next chunk; false once the command has
// ended or the stream failed (see Wait). scratch is as for readEvent.
func (st *ExecStream) next(scratch *[]byte) (ExecChunk, bool) {
	for !st.done {
		ev, err := st.readEvent(scratch)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			st.finish(nil, fmt.Errorf("orkestr: exec stream ended before the command did: %w", err))
			break
		}
		switch ev.Type {
		case StreamStdout, StreamStderr:
			return ExecChunk{Stream: ev.Type, Data: ev.Data}, true
		case "exit":
			res := &ExecResult{ExitCode: ev.ExitCode, DurationMS: ev.DurationMS, BlockedConnections: ev.BlockedConnections, OOMKilled: ev.OOMKilled}
			if res.BlockedConnections == nil {
				res.BlockedConnections = []BlockedConnection{}
			}
			st.finish(res, checkNetworkPolicy(res))
		case "error":
			e := &Error{RequestID: st.requestID, Status: http.StatusInternalServerError, Details: map[string]any{}}
			if ev.Error != nil {
				e.Code, e.Message = ev.Error.Code, ev.Error.Message
				if ev.Error.Details != nil {
					e.Details = ev.Error.Details
				}
				if status, ok := statusOf[e.Code]; ok {
					e.Status = status
				}
			}
			st.finish(nil, classify(e))
		}
		// Unknown event types are skipped, for forward compatibility.
	}
	return ExecChunk{}, false
}

func (st *ExecStream) finish(res *ExecResult, err error) {
	st.done, st.result, st.err = true, res, err
	st.body.Close()
}

// Chunks yields the output as it arrives, until the command ends or the
// stream fails. It can be ranged over once; stopping early leaves the rest
// for Wait to discard.
func (st *ExecStream) Chunks() iter.Seq[ExecChunk] {
	return func(yield func(ExecChunk) bool) {
		for {
			c, ok := st.next(nil)
			if !ok || !yield(c) {
				return
			}
		}
	}
}

// Wait discards any output not yet read and returns how the command ended.
// Stdout and Stderr of the result are empty: the output came as chunks.
// Errors are as for Exec; a *NetworkPolicyError comes with the result.
func (st *ExecStream) Wait() (*ExecResult, error) {
	var scratch []byte // what is discarded is never kept
	for {
		if _, ok := st.next(&scratch); !ok {
			return st.result, st.err
		}
	}
}

// Close ends the stream early, abandoning the output (the command itself
// runs on to its end or timeout). It is safe to call after Wait.
func (st *ExecStream) Close() error {
	if !st.done {
		st.finish(nil, errors.New("orkestr: exec stream closed"))
	}
	return nil
}

// ExecStreamTo runs command like ExecStream and copies its output to
// stdout and stderr (either may be nil to discard) as it arrives. The
// result is as for ExecStream's Wait.
func (s *Sandbox) ExecStreamTo(ctx context.Context, command string, o ExecOptions, stdout, stderr io.Writer) (*ExecResult, error) {
	st, err := s.ExecStream(ctx, command, o)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	// One buffer for every frame: each is written out before the next is
	// read, and allocating (and collecting) a buffer per frame cost more
	// CPU than the copy.
	var scratch []byte
	for {
		c, ok := st.next(&scratch)
		if !ok {
			break
		}
		w := stdout
		if c.Stream == StreamStderr {
			w = stderr
		}
		if w == nil {
			continue
		}
		if _, err := io.WriteString(w, c.Data); err != nil {
			return nil, fmt.Errorf("orkestr: writing the command's %s: %w", c.Stream, err)
		}
	}
	return st.Wait()
}
