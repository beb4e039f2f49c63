// Package wire defines the framing and messages spoken between the host and
// orkestr-agent over one multiplexed stream per request.
//
// Every stream starts with a JSON request frame from the host. After that the
// two sides exchange typed frames: a one-byte kind, a four-byte big-endian
// payload length, then the payload. Bulk data (stdout, file contents) travels
// in bounded chunks so neither side ever holds a whole file in memory.
package wire

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Version is bumped whenever a message changes incompatibly.
const Version = 3

// SocketName is the file name of the host-side listening socket inside the
// per-sandbox agent directory, which is mounted at AgentDir in the sandbox.
const (
	SocketName = "agent.sock"
	TokenName  = "token"
	// RedialName is the file in which the host numbers its requests for
	// a fresh connection (RedialSignal): an agent drops its session on the
	// signal only if the file's number is newer than the one it dialed with,
	// so a signal that arrives after the agent already redialed on its own
	// does not close the fresh session.
	RedialName = "redial"
	AgentDir   = "/run/agent"
)

// MaxPathLen bounds every path in a files request.
const MaxPathLen = 4096

// CheckPath enforces the files API's path rules: absolute, no NUL, no ".."
// element, at most MaxPathLen bytes. Both ends check them: the host before
// sending a request, the agent again on receiving it.
func CheckPath(p string) error {
	switch {
	case p == "":
		return errors.New("path is empty")
	case len(p) > MaxPathLen:
		return fmt.Errorf("path is longer than %d bytes", MaxPathLen)
	case strings.ContainsRune(p, 0):
		return errors.New("path contains a NUL byte")
	case !strings.HasPrefix(p, "/"):
		return errors.New("path must be absolute (start with /)")
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return errors.New("path must not contain '..' elements")
		}
	}
	return nil
}

// ChunkSize bounds the payload of one data frame. Inside gVisor every
// syscall of the agent is trapped (tens of µs on a nested-virtualization
// host), so bulk data moves in large pieces: one read of the file and one
// write to the channel per 512 KiB.
const ChunkSize = 512 << 10

// StreamWindow is the yamux receive window of every stream on both ends:
// how much one transfer may have in flight. A bulk transfer at disk speed
// needs several chunks in flight to keep both ends busy across the
// sandbox's slow wakeups; it is also what one stream can hold in memory
// when its reader stalls.
const StreamWindow = 4 << 20

// SocketBuffer is the kernel buffer asked for on the channel's socket, so a
// reader inside the sandbox gets large pieces per (trapped) read.
const SocketBuffer = 4 << 20

// MaxFrame bounds any frame a peer will accept.
const MaxFrame = 1 << 20

// ErrFrameTooLarge is returned by Writer.Frame for a payload over MaxFrame;
// nothing is written then.
var ErrFrameTooLarge = errors.New("wire: frame too large")

// Kind identifies a frame.
type Kind byte

const (
	KindJSON   Kind = 'J' // a JSON message (request, reply, exit status)
	KindError  Kind = 'R' // a JSON Error; ends the operation
	KindStdout Kind = 'O'
	KindStderr Kind = 'E'
	KindStdin  Kind = 'I'
	KindEOF    Kind = 'C' // end of stdin or of file data
	KindSignal Kind = 'S' // payload: one byte, the signal number
	KindData   Kind = 'D' // file contents
	KindExit   Kind = 'X' // a JSON ExitStatus; ends an exec
	KindDone   Kind = 'Z' // from the host after an exec's exit: the stream is free for its next request
)

// A stream carries one request after another when both ends finished the
// last one cleanly: the agent's reply ended with its final frame and, for
// an exec, the host answered the exit with KindDone. Reads and writes of
// files, and any request that ends early, close the stream instead.

// Ops understood by the agent.
const (
	OpPing      = "ping"
	OpConfigure = "configure"
	OpExec      = "exec"
	OpRead      = "read"
	OpWrite     = "write"
	OpList      = "list"
	OpStat      = "stat"
	OpRemove    = "remove"
	OpMkdir     = "mkdir"
	// OpOOMKill asks the agent to kill the command process holding the
	// most memory: the host sends it when the sandbox reaches its memory
	// limit, so that one process dies instead of the whole sandbox.
	// Reply: OOMKilled.
	OpOOMKill = "oomkill"
	// OpUntar extracts the tar (plain, gzip or zstd) that follows in data
	// frames into the directory Path; OpTar streams Path as a tar.
	OpUntar = "untar"
	OpTar   = "tar"
)

// OOMKilled is the reply to OpOOMKill; PID 0 when no command process was
// found.
type OOMKilled struct {
	PID      int    `json:"pid"`
	Comm     string `json:"comm,omitempty"`
	RSSBytes int64  `json:"rss_bytes,omitempty"`
}

// Hello is the first line an agent writes after dialing the host socket.
type Hello struct {
	Version int    `json:"version"`
	Token   string `json:"token"`
	PID     int    `json:"pid"`
	// DataConns: this agent can move a transfer's bytes over a data
	// connection of its own (Request.DataConn).
	DataConns bool `json:"data_conns,omitempty"`
	// DataConn is set, instead of a session starting, on a data
	// connection the agent dialed for the request that named this ticket.
	DataConn string `json:"data_conn,omitempty"`
	// Redials: this agent reads RedialName; Redial is the number it read
	// when it dialed.
	Redials bool   `json:"redials,omitempty"`
	Redial  uint64 `json:"redial,omitempty"`
}

// ReadRedial reads the number in a channel directory's RedialName file (0
// when there is none).
func ReadRedial(dir string) uint64 {
	b, err := os.ReadFile(filepath.Join(dir, RedialName))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// Request opens every stream.
type Request struct {
	Op        string     `json:"op"`
	Exec      *Exec      `json:"exec,omitempty"`
	Path      string     `json:"path,omitempty"`
	Mode      uint32     `json:"mode,omitempty"`
	Recursive bool       `json:"recursive,omitempty"`
	Configure *Configure `json:"configure,omitempty"`
	Proc      *Proc      `json:"proc,omitempty"` // the OpProc* ops (process.go)
	FS        *FS        `json:"fs,omitempty"`   // the ops of fsops.go

	// Limit bounds the bytes of file content an OpUntar may write.
	Limit int64 `json:"limit,omitempty"`
	// Compression of an OpTar: "", "gzip" or "zstd".
	Compression string `json:"compression,omitempty"`
	// User does an OpRead, OpWrite, OpList or OpRemove as this user of
	// the sandbox's /etc/passwd ("" is root): its permissions decide, and
	// what it writes is its own.
	User string `json:"user,omitempty"`
	// DataConn, on an OpRead or OpWrite as root, an OpUntar or an OpTar,
	// asks the agent to move the bytes over a connection of its own
	// instead of data frames: it dials the host's socket again and presents this one-time
	// ticket in its Hello (see DataConn below).
	DataConn string `json:"data_conn,omitempty"`
}

// A data connection carries one transfer's bytes raw, beside its stream:
// no framing, no yamux window, no copies through the session, so the agent
// moves a file with sendfile/splice in a few trapped syscalls per MiB and
// the host can splice it into an HTTP response. The stream still carries
// the request, the replies and the end, so a connection closed early is
// never taken for a complete transfer:
//
//   - OpRead: the agent answers FileInfo (with DataConn set) on the
//     stream, dials, sends
//     exactly FileInfo.Size bytes (the size when it opened the file) and
//     closes the connection, then sends KindEOF whose payload is the JSON
//     Written of the bytes sent, or an error frame.
//   - OpWrite: the agent answers {} on the stream once the temporary file
//     exists and the connection is up; the host sends the bytes and
//     half-closes the connection, then sends KindEOF with the JSON Written
//     of the bytes sent. Only then, and only when the counts agree, does
//     the agent rename the file into place and answer Written.
//   - OpUntar: as OpWrite; the archive counts as ended only with the
//     host's KindEOF, and the agent answers Extracted.
//   - OpTar: the agent answers {} on the stream, dials, writes the
//     archive and closes the connection, then sends KindEOF with the
//     Written count, or an error frame.

// Extracted is the reply to a finished OpUntar.
type Extracted struct {
	Entries int   `json:"entries"`
	Bytes   int64 `json:"bytes"`
}

// Configure binds a pooled sandbox to its owner at claim time.
type Configure struct {
	Env      map[string]string `json:"env"`
	Hostname string            `json:"hostname,omitempty"`
}

// CheckEnvName enforces the rule for environment variable names. Both
// ends check it: the host before a claim it applies in the background
// (whose failure would stop the sandbox), the agent on every request.
func CheckEnvName(k string) error {
	if k == "" || strings.ContainsAny(k, "=\x00") {
		return errors.New("environment variable names must be non-empty and contain neither '=' nor NUL")
	}
	return nil
}

// Check says whether the agent would refuse c: a bad variable name, or a
// request over MaxFrame.
func (c Configure) Check() error {
	for k := range c.Env {
		if err := CheckEnvName(k); err != nil {
			return err
		}
	}
	b, err := json.Marshal(Request{Op: OpConfigure, Configure: &c})
	if err != nil {
		return err
	}
	if len(b) > MaxFrame {
		return fmt.Errorf("%w: the environment and hostname take %d bytes encoded, over %d", ErrFrameTooLarge, len(b), MaxFrame)
	}
	return nil
}

// Exec describes one command.
type Exec struct {
	Command   string            `json:"command"`
	Env       map[string]string `json:"env,omitempty"`
	Cwd       string            `json:"cwd,omitempty"`
	TimeoutMS int64             `json:"timeout_ms,omitempty"`
	Stdin     bool              `json:"stdin,omitempty"`
	// User runs the command as this user of the sandbox's /etc/passwd
	// ("" is root).
	User string `json:"user,omitempty"`
}

// ExitStatus ends an exec.
type ExitStatus struct {
	ExitCode   int   `json:"exit_code"`
	Signal     int   `json:"signal,omitempty"`
	DurationMS int64 `json:"duration_ms"`
	TimedOut   bool  `json:"timed_out,omitempty"`
	// OOMKilled: a process of the command was killed because the sandbox
	// reached its memory limit (OpOOMKill).
	OOMKilled bool `json:"oom_killed,omitempty"`
}

// FileInfo describes one file or directory.
type FileInfo struct {
	Name       string `json:"name"`
	Path       string `json:"path"`
	IsDir      bool   `json:"is_dir"`
	Size       int64  `json:"size"`
	Mode       uint32 `json:"mode"`
	ModifiedNS int64  `json:"modified_ns"`
	Symlink    bool   `json:"symlink,omitempty"`
	// DataConn, in the answer to an OpRead that asked for a data
	// connection: the bytes follow on it, exactly Size of them. Unset,
	// they follow in data frames as without one (a file whose size says
	// nothing about its content: empty, or on /proc or /sys).
	DataConn bool `json:"data_conn,omitempty"`
}

// List is the reply to OpList.
type List struct {
	Entries []FileInfo `json:"entries"`
	// More says another List frame follows with further entries: a
	// large directory is sent in frames that each fit MaxFrame.
	More bool `json:"more,omitempty"`
}

// Written is the reply to a finished OpWrite.
type Written struct {
	Size int64 `json:"size"`
}

// Error codes an agent reports.
const (
	CodeNotFound    = "not_found"
	CodeInvalidPath = "invalid_path"
	CodeIsDir       = "is_dir"
	CodeNotDir      = "not_dir"
	CodeExists      = "exists"
	CodeNotEmpty    = "not_empty"
	CodePermission  = "permission_denied"
	CodeBadRequest  = "bad_request"
	CodeNoSpace     = "no_space"
	CodeInternal    = "internal"
	// CodeInvalidArchive: an archive entry is hostile or malformed.
	CodeInvalidArchive = "invalid_archive"
	// CodeTooLarge: an archive expands past its limit.
	CodeTooLarge = "too_large"

	// Refusals of the files API (issue 16).
	CodeReadOnly = "read_only"      // a read-only or kernel filesystem (/proc, /sys)
	CodeBusy     = "busy"           // a mount point, or a file in use
	CodeIO       = "io_error"       // the file cannot be read (e.g. /proc/<pid>/mem)
	CodeLimit    = "limit_exceeded" // a request over its bounds (entries, depth, time)
)

// Error is a failure reported by the agent.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Writer writes frames. It is not safe for concurrent use.
type Writer struct {
	w   io.Writer
	hdr [5]byte
	buf []byte // header and a small payload, sent as one write
}

func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Frame writes one frame. The payload is copied behind its header so the
// frame goes out in one write: on a yamux stream every write is a frame of
// its own, and inside gVisor every frame costs a syscall and a wakeup,
// which cost more than copying even a ChunkSize payload.
func (w *Writer) Frame(k Kind, payload []byte) error {
	if len(payload) > MaxFrame {
		return fmt.Errorf("%w: %d bytes exceeds %d", ErrFrameTooLarge, len(payload), MaxFrame)
	}
	w.hdr[0] = byte(k)
	binary.BigEndian.PutUint32(w.hdr[1:], uint32(len(payload)))
	w.buf = append(append(w.buf[:0], w.hdr[:]...), payload...)
	_, err := w.w.Write(w.buf)
	if cap(w.buf) > 64<<10 && len(payload) < 16<<10 {
		w.buf = nil // an idle exec stream does not keep a bulk buffer
	}
	return err
}

// JSON writes v as a frame of kind k.
func (w *Writer) JSON(k Kind, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return w.Frame(k, b)
}

// Err writes an error frame.
func (w *Writer) Err(code, msg string) error {
	return w.JSON(KindError, &Error{Code: code, Message: msg})
}

// Reader reads frames. It is not safe for concurrent use.
type Reader struct {
	r   *bufio.Reader
	buf []byte
}

func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 32<<10)} }

// Next reads one frame. The payload is valid until the next call.
func (r *Reader) Next() (Kind, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r.r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFrame {
		return 0, nil, fmt.Errorf("wire: frame of %d bytes exceeds %d", n, MaxFrame)
	}
	if cap(r.buf) < int(n) {
		r.buf = make([]byte, n)
	}
	b := r.buf[:n]
	if _, err := io.ReadFull(r.r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return Kind(hdr[0]), b, nil
}

// ExpectJSON reads one frame and decodes it into v. An error frame is returned
// as *Error.
func (r *Reader) ExpectJSON(v any) error {
	k, b, err := r.Next()
	if err != nil {
		return err
	}
	switch k {
	case KindJSON, KindExit:
		return json.Unmarshal(b, v)
	case KindError:
		return DecodeError(b)
	default:
		return fmt.Errorf("wire: unexpected frame %q", k)
	}
}

// DecodeError turns an error frame's payload into *Error.
func DecodeError(b []byte) error {
	var e Error
	if err := json.Unmarshal(b, &e); err != nil {
		return fmt.Errorf("wire: malformed error frame: %w", err)
	}
	return &e
}
