package nodeapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// Errors of the transport itself.
var (
	// ErrNotImplemented: the node's runtime driver lacks the optional
	// interface a call needs (e.g. a driver without terminals).
	ErrNotImplemented = errors.New("the node's runtime cannot do this")
	// ErrProtocol: a peer broke the node API's framing or sent a body that
	// does not decode.
	ErrProtocol = errors.New("node API protocol error")
)

// errorCode is one row of the table by which errors cross the wire: the
// node sends Code (and Status for plain HTTP clients), the client returns an
// error that errors.Is Sentinel and says the node's message word for word.
type errorCode struct {
	Code     string
	Status   int
	Sentinel error
}

// errorCodes is the one table mapping codes and sentinels. Order matters
// when encoding: an error is sent as the first row it matches, so a more
// specific sentinel comes before one it may wrap.
var errorCodes = []errorCode{
	// The sandbox.
	{"out_of_memory", http.StatusConflict, runtime.ErrOutOfMemory},
	{"sandbox_stopped", http.StatusConflict, runtime.ErrStopped},
	{"sandbox_not_found", http.StatusNotFound, runtime.ErrNotFound},
	{"detached", http.StatusConflict, runtime.ErrDetached},
	{"busy", http.StatusConflict, runtime.ErrBusy},
	{"agent_unavailable", http.StatusBadGateway, runtime.ErrAgent},
	{"agent_failed", http.StatusBadGateway, runtime.ErrAgentFailed},
	{"no_network", http.StatusConflict, runtime.ErrNoNetwork},
	// Files.
	{"file_not_found", http.StatusNotFound, runtime.ErrFileNotFound},
	{"invalid_path", http.StatusBadRequest, runtime.ErrInvalidPath},
	{"is_dir", http.StatusBadRequest, runtime.ErrIsDir},
	{"not_dir", http.StatusBadRequest, runtime.ErrNotDir},
	{"not_empty", http.StatusConflict, runtime.ErrNotEmpty},
	{"no_space", http.StatusInsufficientStorage, runtime.ErrNoSpace},
	{"permission", http.StatusForbidden, runtime.ErrPermission},
	{"read_only", http.StatusConflict, runtime.ErrReadOnly},
	{"file_busy", http.StatusConflict, runtime.ErrFileBusy},
	{"io", http.StatusUnprocessableEntity, runtime.ErrIO},
	{"file_limit", http.StatusUnprocessableEntity, runtime.ErrFileLimit},
	{"exists", http.StatusConflict, runtime.ErrExists},
	{"cross_device", http.StatusConflict, runtime.ErrCrossDevice},
	{"invalid_archive", http.StatusBadRequest, runtime.ErrInvalidArchive},
	{"too_large", http.StatusRequestEntityTooLarge, runtime.ErrTooLarge},
	// Processes and users.
	{"no_process", http.StatusNotFound, runtime.ErrNoProcess},
	{"no_user", http.StatusBadRequest, runtime.ErrNoUser},
	{"invalid_request", http.StatusBadRequest, runtime.ErrInvalidRequest},
	// The node.
	{"template_not_built", http.StatusConflict, ErrTemplateNotBuilt},
	{"unknown_size", http.StatusBadRequest, ErrUnknownSize},
	{"disk_low", http.StatusServiceUnavailable, ErrDiskLow},
	{"no_capacity", http.StatusServiceUnavailable, ErrNoCapacity},
	{"snapshot_not_found", http.StatusNotFound, ErrSnapshotNotFound},
	{"snapshot_store_unavailable", http.StatusServiceUnavailable, ErrSnapshotStoreUnavailable},
	{"snapshot_corrupt", http.StatusUnprocessableEntity, ErrSnapshotCorrupt},
	{"unreachable", http.StatusBadGateway, ErrUnreachable},
	{"not_implemented", http.StatusNotImplemented, ErrNotImplemented},
	{"protocol", http.StatusBadRequest, ErrProtocol},
	// A call the node gave up on (its request context ended).
	{"canceled", 499, context.Canceled},
	{"deadline_exceeded", http.StatusGatewayTimeout, context.DeadlineExceeded},
}

// Codes of the transport that carry no sentinel of their own.
const (
	codeInternal           = "internal"
	codeUnauthorized       = "unauthorized"
	codeUnsupportedVersion = "unsupported_version"
)

// wireError is an error as it crosses the wire.
type wireError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// MinVersion and MaxVersion: the range a node speaks, with
	// unsupported_version.
	MinVersion int `json:"min_version,omitempty"`
	MaxVersion int `json:"max_version,omitempty"`
}

// encodeError finds err's code and HTTP status; the message is err's text.
func encodeError(err error) (wireError, int) {
	for _, c := range errorCodes {
		if errors.Is(err, c.Sentinel) {
			return wireError{Code: c.Code, Message: err.Error()}, c.Status
		}
	}
	return wireError{Code: codeInternal, Message: err.Error()}, http.StatusInternalServerError
}

// RemoteError is an error a node returned. Its text is the node's message
// word for word (so a caller can cut a sentinel's text off its front, as
// in-process), and errors.Is matches the sentinel its code stands for.
type RemoteError struct {
	Code     string
	Message  string
	sentinel error
}

func (e *RemoteError) Error() string { return e.Message }

func (e *RemoteError) Unwrap() error { return e.sentinel }

// decodeError turns a wire error back into the error the node had.
func decodeError(we wireError) error {
	msg := we.Message
	if msg == "" {
		msg = "node error " + we.Code
	}
	for _, c := range errorCodes {
		if c.Code == we.Code {
			return &RemoteError{Code: we.Code, Message: msg, sentinel: c.Sentinel}
		}
	}
	return &RemoteError{Code: we.Code, Message: msg}
}

// unreachable wraps the cause of a failed call: errors.Is matches both
// ErrUnreachable and the cause.
type unreachable struct {
	node  string
	cause error
}

func (e *unreachable) Error() string {
	return fmt.Sprintf("%v (%s): %v", ErrUnreachable, e.node, e.cause)
}

func (e *unreachable) Unwrap() []error { return []error{ErrUnreachable, e.cause} }
