package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/store"
)

// Why a sandbox ended, as its record keeps it (error_message).
const (
	reasonTerminated  = store.EndTerminated
	reasonExpired     = store.EndExpired
	reasonOutOfMemory = store.EndOutOfMemory
	reasonStopped     = store.EndStopped
)

// endWait bounds how long an exec that lost its sandbox waits for the
// sandbox's record to say how it ended (a terminate writes it before it
// stops the runtime; the watcher of an unplanned stop within moments).
const endWait = 3 * time.Second

// sandboxEnded turns an exec or file failure caused by the sandbox ending
// under the request into 409 sandbox_not_ready naming the real end:
// details.status is terminated or error and details.reason one of
// terminated, expired, out_of_memory or stopped. Other failures go
// through execError.
func (s *Server) sandboxEnded(r *http.Request, rt runtime.Sandbox, err error) error {
	if errors.Is(err, nodeapi.ErrUnreachable) {
		s.log.Warn("a sandbox's node stopped answering during a call", "request_id", requestID(r), "sandbox", r.PathValue("id"), "err", err)
		return apiErr(http.StatusServiceUnavailable, "node_unavailable", "The node running this sandbox stopped answering; if it does not come back within its heartbeat timeout the sandbox ends with reason node_lost.")
	}
	if !errors.Is(err, runtime.ErrStopped) && !errors.Is(err, runtime.ErrOutOfMemory) &&
		!(errors.Is(err, runtime.ErrAgent) && rt.Err() != nil) {
		return execError(err)
	}
	ctx := context.WithoutCancel(r.Context())
	id, account := r.PathValue("id"), caller(r).account.ID
	deadline := time.Now().Add(endWait)
	for {
		row, gerr := s.store.GetSandbox(ctx, account, id)
		if gerr == nil && (row.Status == store.StatusTerminated || row.Status == store.StatusError) {
			return endedError(row.Status, row.ErrorMessage)
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if errors.Is(err, runtime.ErrOutOfMemory) || errors.Is(rt.Err(), runtime.ErrOutOfMemory) {
		return endedError(store.StatusError, reasonOutOfMemory)
	}
	return endedError(store.StatusError, reasonStopped)
}

func endedError(status store.Status, reason string) *Error {
	var code, msg string
	switch reason {
	case reasonTerminated:
		code, msg = "terminated", "The sandbox was terminated (DELETE /v1/sandboxes/{id}) while this ran."
	case reasonExpired:
		code, msg = "expired", "The sandbox reached its timeout_seconds and was terminated while this ran; extend it with PATCH timeout_seconds next time."
	case store.EndNodeLost:
		code, msg = "node_lost", "The node running the sandbox stopped answering and the sandbox was lost; create a new one (a paused sandbox survives its node)."
	case reasonOutOfMemory:
		code, msg = "out_of_memory", "The sandbox was killed because it exceeded its memory limit; create a larger one."
	default:
		code, msg = "stopped", "The sandbox stopped unexpectedly while this ran; create a new one."
	}
	return apiErr(http.StatusConflict, "sandbox_not_ready", "%s", msg).with("status", string(status)).with("reason", code)
}
