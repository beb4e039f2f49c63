package api

import (
	"encoding/binary"
	"encoding/json"
	"mime"
	"net/http"
	"strings"
	"sync"
)

// execFramesType is the binary-safe format of the exec stream, chosen with
// this media type in Accept; NDJSON stays the default. Every frame is one
// type byte, the payload's length as 4 bytes big-endian, and the payload:
//
//	1 stdout  the command's bytes, exactly as written
//	2 stderr  likewise
//	3 exit    a JSON object, the same as NDJSON's "exit" line
//	4 error   a JSON object, the same as NDJSON's "error" line
//
// Output is not re-encoded, so bytes that are not UTF-8 arrive as they were
// written and a client decodes nothing but the closing event.
const execFramesType = "application/vnd.orkestr.exec-frames"

const (
	frameStdout byte = 1
	frameStderr byte = 2
	frameExit   byte = 3
	frameError  byte = 4
)

// wantsFrames reports whether the client asked for execFramesType.
func wantsFrames(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for _, part := range strings.Split(v, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err == nil && mt == execFramesType && params["q"] != "0" {
				return true
			}
		}
	}
	return false
}

// frameSink writes frames to the response, each flushed as it is written:
// the command's output reaches the client as it is produced, and a client
// that reads slowly blocks the write, which blocks the agent, which blocks
// the command (nothing queues up in between).
type frameSink struct {
	mu  sync.Mutex
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf []byte
}

func (f *frameSink) frame(t byte, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	// Header and payload in one write: the response's chunked encoding
	// makes every write a chunk of its own.
	f.buf = append(f.buf[:0], t, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(f.buf[1:5], uint32(len(p)))
	f.buf = append(f.buf, p...)
	if _, err := f.w.Write(f.buf); err != nil {
		return err
	}
	return f.rc.Flush()
}

func (f *frameSink) event(v map[string]any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	t := frameExit
	if v["type"] == "error" {
		t = frameError
	}
	return f.frame(t, b)
}

// stream is the writer of one output stream.
func (f *frameSink) stream(t byte) frameStream { return frameStream{f: f, t: t} }

type frameStream struct {
	f *frameSink
	t byte
}

func (s frameStream) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := s.f.frame(s.t, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
