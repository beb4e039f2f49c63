package nodeapi

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sync"
)

// A stream call (exec, file transfer, terminal, watch, attach, tar) runs
// over a connection upgraded from HTTP/1.1 (Upgrade: orkestr-node-stream)
// and carries frames both ways, or, when the client sends no input frames,
// as a POST whose answer carries the node's frames:
//
//	+--------+--------------------+-------------------+
//	| type 1 | length 4 (big end) | payload (length)  |
//	+--------+--------------------+-------------------+
//
// A payload is at most MaxFrame bytes; a larger length ends the stream as a
// protocol error. JSON payloads are the Go types named in each call.
const (
	// MaxFrame bounds a frame's payload.
	MaxFrame = 256 << 10
	// streamUpgrade is the protocol named in the Upgrade header.
	streamUpgrade = "orkestr-node-stream"
	// inputWindow is how many bytes of input (stdin, terminal keys) a
	// client may send before the node grants more with a credit frame, so
	// that input a command does not read never holds up signals, resizes
	// or a close behind it.
	inputWindow = 1 << 20
)

// Frame types. Client to node:
const (
	frameParams = 'P' // JSON: the call's parameters; always the first frame
	frameInput  = 'i' // bytes: stdin, file or archive content, typed keys
	frameEOF    = 'c' // empty: the input ended
	frameSignal = 's' // JSON signalMsg: a signal for the command
	frameResize = 'z' // JSON resizeMsg: a terminal's new size
)

// Node to client:
const (
	frameStdout  = 'o' // bytes: stdout, file or archive content, terminal output
	frameStderr  = 'e' // bytes: stderr
	frameCredit  = 'k' // 4 bytes big endian: more input the client may send
	frameStarted = 'S' // JSON: the call runs (terminal: startedMsg; watch: startedMsg; attach: {}, when asked for)
	frameEvent   = 'w' // JSON runtime.WatchEvent
	frameDropped = 'd' // 8 bytes big endian: output bytes an attach missed
	frameResult  = 'R' // JSON: the call's result; last frame
	frameError   = 'E' // JSON wireError: the call failed; last frame
)

type signalMsg struct {
	Signal int `json:"signal"`
}

type resizeMsg struct {
	Rows int `json:"rows"`
	Cols int `json:"cols"`
}

type startedMsg struct {
	PID  int `json:"pid,omitempty"`
	Dirs int `json:"dirs,omitempty"`
}

// frameWriter writes whole frames to a connection from any goroutine.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
	// flush, if set, pushes each frame out (an HTTP response's buffer).
	flush func() error
}

func (fw *frameWriter) frame(typ byte, payload []byte) error {
	if len(payload) > MaxFrame {
		return fmt.Errorf("%w: frame of %d bytes over the limit of %d", ErrProtocol, len(payload), MaxFrame)
	}
	var hdr [5]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	fw.mu.Lock()
	defer fw.mu.Unlock()
	var err error
	if len(payload) == 0 {
		_, err = fw.w.Write(hdr[:])
	} else {
		bufs := net.Buffers{hdr[:], payload}
		_, err = bufs.WriteTo(fw.w)
	}
	if err == nil && fw.flush != nil {
		err = fw.flush()
	}
	return err
}

func (fw *frameWriter) json(typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return fw.frame(typ, b)
}

// data writes p as as many frames as its size needs.
func (fw *frameWriter) data(typ byte, p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := p[:min(len(p), MaxFrame)]
		if err := fw.frame(typ, c); err != nil {
			return n, err
		}
		n += len(c)
		p = p[len(c):]
	}
	return n, nil
}

// typedWriter is an io.Writer sending frames of one type.
type typedWriter struct {
	fw  *frameWriter
	typ byte
}

func (t typedWriter) Write(p []byte) (int, error) { return t.fw.data(t.typ, p) }

// frameReader reads frames from one goroutine; the payload it returns is
// valid until the next call.
type frameReader struct {
	r   io.Reader
	buf []byte
}

func (fr *frameReader) next() (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(fr.r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFrame {
		return 0, nil, fmt.Errorf("%w: frame of %d bytes over the limit of %d", ErrProtocol, n, MaxFrame)
	}
	if cap(fr.buf) < int(n) {
		fr.buf = make([]byte, n, max(int(n), 32<<10))
	}
	b := fr.buf[:n]
	if _, err := io.ReadFull(fr.r, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return hdr[0], b, nil
}

func decodeJSON(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	return nil
}
