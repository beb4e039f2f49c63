package nodeapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// Headers of the node API.
const (
	// HeaderVersion names the API version a request speaks; a response
	// carries the node's own (APIVersion).
	HeaderVersion = "Orkestr-Node-Api"
	pathPrefix    = "/node/v1/"
)

// HandlerOptions configure a node's API handler.
type HandlerOptions struct {
	// Token is the node's credential: every request must carry
	// "Authorization: Bearer <Token>". Empty refuses every request.
	Token string
	Log   *slog.Logger
	// MaxBodyBytes bounds a unary call's JSON body (default 8 MiB).
	MaxBodyBytes int64
}

type Handler struct {
	n       Node
	log     *slog.Logger
	token   [sha256.Size]byte
	noToken bool
	maxBody int64
	mux     *http.ServeMux
	// channels are the open call channels, which Shutdown closes.
	channels serverChannels
}

// NewHandler serves n's node API under /node/v1/: unary calls as JSON over
// HTTP/1.1 POST, streaming calls over connections upgraded to
// orkestr-node-stream or as POSTs whose answer streams frames (see
// frame.go and docs/architecture.md "The node API"). Serve it with a
// ReadHeaderTimeout and no WriteTimeout (streams last as long as their
// command), over TLS when the network is not loopback.
func NewHandler(n Node, o HandlerOptions) *Handler {
	h := &Handler{n: n, log: o.Log, token: sha256.Sum256([]byte(o.Token)), noToken: o.Token == "", maxBody: o.MaxBodyBytes, mux: http.NewServeMux()}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.maxBody <= 0 {
		h.maxBody = 8 << 20
	}
	h.routes()
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.authorized(r) {
		// Nothing about the node to a caller without its credential.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"code":"unauthorized","message":"missing or wrong node token"}`+"\n")
		return
	}
	w.Header().Set(HeaderVersion, strconv.Itoa(APIVersion))
	if v, err := strconv.Atoi(r.Header.Get(HeaderVersion)); err != nil || v < MinAPIVersion || v > APIVersion {
		writeJSON(w, http.StatusBadRequest, wireError{
			Code:       codeUnsupportedVersion,
			Message:    fmt.Sprintf("this node speaks node API versions %d to %d; the request asked for %q in header %s", MinAPIVersion, APIVersion, trimHeader(r.Header.Get(HeaderVersion)), HeaderVersion),
			MinVersion: MinAPIVersion, MaxVersion: APIVersion,
		})
		return
	}
	h.mux.ServeHTTP(w, r)
}

func trimHeader(s string) string {
	if len(s) > 20 {
		return s[:20] + "…"
	}
	return s
}

// authorized compares the bearer token in constant time (of hashes, so
// neither the content nor the length of the node's token shows in timing).
func (h *Handler) authorized(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	got := sha256.Sum256([]byte(tok))
	match := subtle.ConstantTimeCompare(got[:], h.token[:]) == 1
	return ok && match && !h.noToken
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (h *Handler) writeError(w http.ResponseWriter, r *http.Request, err error) {
	we, status := encodeError(err)
	if status >= 500 && status != http.StatusNotImplemented {
		h.log.Warn("node API call failed", "path", r.URL.Path, "code", we.Code, "err", err)
	}
	writeJSON(w, status, we)
}

// decodeBody reads a unary call's JSON body into v; an empty body is {}.
// Unknown fields are ignored, so a newer control plane may send fields an
// older node does not know (additive changes within a version).
func (h *Handler) decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, h.maxBody)
	b, err := io.ReadAll(body)
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return fmt.Errorf("%w: the request body is over %d bytes", ErrProtocol, h.maxBody)
		}
		return fmt.Errorf("%w: reading the request body: %v", ErrProtocol, err)
	}
	if len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: the request body is not the JSON this call takes: %v", ErrProtocol, err)
	}
	return nil
}

// unary serves a call taking Req and answering Resp as JSON.
func unary[Req, Resp any](h *Handler, f func(ctx context.Context, r *http.Request, req Req) (Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if err := h.decodeBody(w, r, &req); err != nil {
			h.writeError(w, r, err)
			return
		}
		resp, err := f(r.Context(), r, req)
		if err != nil {
			h.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, resp)
	}
}

// sandboxOf finds the running sandbox a path names as the optional
// interface T.
func sandboxOf[T any](ctx context.Context, h *Handler, r *http.Request) (T, error) {
	var zero T
	sb, err := h.n.Sandbox(ctx, r.PathValue("id"))
	if err != nil {
		return zero, err
	}
	t, ok := sb.(T)
	if !ok {
		return zero, fmt.Errorf("%w (%s)", ErrNotImplemented, strings.TrimPrefix(r.URL.Path, pathPrefix))
	}
	return t, nil
}

// sbCall serves a unary call on a sandbox's interface T.
func sbCall[T, Req, Resp any](h *Handler, f func(ctx context.Context, sb T, req Req) (Resp, error)) http.HandlerFunc {
	return unary(h, func(ctx context.Context, r *http.Request, req Req) (Resp, error) {
		sb, err := sandboxOf[T](ctx, h, r)
		if err != nil {
			var zero Resp
			return zero, err
		}
		return f(ctx, sb, req)
	})
}

// Bodies of unary calls that have no type of their own.
type (
	empty      struct{}
	idMsg      struct{ ID string }
	metricsReq struct{ Since time.Time }
	pathReq    struct {
		User      string
		Path      string
		Recursive bool
		Mode      uint32
	}
	processReq struct {
		PID        int
		Data       []byte
		CloseStdin bool
		Signal     int
	}
	countMsg struct{ N int64 }
)

func (h *Handler) routes() {
	m := h.mux
	p := func(s string) string { return "POST " + pathPrefix + s }
	n := h.n

	// Call channels (channel.go).
	m.HandleFunc(p("channel"), h.channel)

	// The node.
	m.HandleFunc(p("info"), unary(h, func(ctx context.Context, _ *http.Request, _ empty) (Info, error) { return n.Info(ctx) }))
	m.HandleFunc(p("create"), unary(h, func(ctx context.Context, _ *http.Request, req CreateRequest) (runtime.Info, error) {
		sb, err := n.Create(ctx, req)
		if err != nil {
			return runtime.Info{}, err
		}
		return sb.Info(), nil
	}))
	m.HandleFunc(p("restore"), unary(h, func(ctx context.Context, _ *http.Request, req RestoreRequest) (runtime.Info, error) {
		sb, err := n.Restore(ctx, req)
		if err != nil {
			return runtime.Info{}, err
		}
		return sb.Info(), nil
	}))
	m.HandleFunc(p("snapshots/remove"), unary(h, func(ctx context.Context, _ *http.Request, req idMsg) (empty, error) {
		return empty{}, n.RemoveSnapshot(ctx, req.ID)
	}))
	m.HandleFunc(p("reconcile"), unary(h, func(ctx context.Context, _ *http.Request, req Keep) (runtime.ReconcileReport, error) {
		return n.Reconcile(ctx, req)
	}))
	m.HandleFunc(p("sandboxes/{id}/info"), unary(h, func(ctx context.Context, r *http.Request, _ empty) (runtime.Info, error) {
		sb, err := n.Sandbox(ctx, r.PathValue("id"))
		if err != nil {
			return runtime.Info{}, err
		}
		return sb.Info(), nil
	}))
	m.HandleFunc(p("sandboxes/{id}/checkpoint"), unary(h, func(ctx context.Context, r *http.Request, req CheckpointRequest) (Snapshot, error) {
		return n.Checkpoint(ctx, r.PathValue("id"), req.Snapshot)
	}))
	m.HandleFunc(p("sandboxes/{id}/checkpoint_live"), unary(h, func(ctx context.Context, r *http.Request, req CheckpointRequest) (Snapshot, error) {
		return n.CheckpointLive(ctx, r.PathValue("id"), req.Snapshot)
	}))
	m.HandleFunc(p("sandboxes/{id}/destroy"), unary(h, func(ctx context.Context, r *http.Request, _ empty) (empty, error) {
		return empty{}, n.Destroy(ctx, r.PathValue("id"))
	}))
	m.HandleFunc(p("sandboxes/{id}/metrics"), unary(h, func(ctx context.Context, r *http.Request, req metricsReq) (Metrics, error) {
		return n.Metrics(ctx, r.PathValue("id"), req.Since)
	}))

	// runtime.Sandbox.
	type sb = runtime.Sandbox
	m.HandleFunc(p("sandboxes/{id}/configure"), sbCall(h, func(ctx context.Context, s sb, c runtime.Claim) (runtime.Info, error) {
		if err := s.Configure(ctx, c); err != nil {
			return runtime.Info{}, err
		}
		return s.Info(), nil
	}))
	m.HandleFunc(p("sandboxes/{id}/stats"), sbCall(h, func(ctx context.Context, s sb, _ empty) (runtime.Stats, error) { return s.Stats(ctx) }))
	m.HandleFunc(p("sandboxes/{id}/set_resources"), sbCall(h, func(ctx context.Context, s sb, res runtime.Resources) (runtime.Info, error) {
		if err := s.SetResources(res); err != nil {
			return runtime.Info{}, err
		}
		return s.Info(), nil
	}))
	m.HandleFunc(p("sandboxes/{id}/list"), sbCall(h, func(ctx context.Context, s sb, req pathReq) ([]runtime.FileInfo, error) {
		if req.User != "" {
			uf, ok := s.(runtime.UserFiles)
			if !ok {
				return nil, fmt.Errorf("%w (list as a user)", ErrNotImplemented)
			}
			return uf.ListAs(ctx, req.User, req.Path)
		}
		return s.List(ctx, req.Path)
	}))
	m.HandleFunc(p("sandboxes/{id}/stat"), sbCall(h, func(ctx context.Context, s sb, req pathReq) (runtime.FileInfo, error) {
		return s.Stat(ctx, req.Path)
	}))
	m.HandleFunc(p("sandboxes/{id}/remove"), sbCall(h, func(ctx context.Context, s sb, req pathReq) (empty, error) {
		if req.User != "" {
			uf, ok := s.(runtime.UserFiles)
			if !ok {
				return empty{}, fmt.Errorf("%w (remove as a user)", ErrNotImplemented)
			}
			return empty{}, uf.RemoveAs(ctx, req.User, req.Path, req.Recursive)
		}
		return empty{}, s.Remove(ctx, req.Path, req.Recursive)
	}))
	m.HandleFunc(p("sandboxes/{id}/mkdir_all"), sbCall(h, func(ctx context.Context, s sb, req pathReq) (empty, error) {
		return empty{}, s.MkdirAll(ctx, req.Path, req.Mode)
	}))

	// Optional interfaces.
	m.HandleFunc(p("sandboxes/{id}/usage"), sbCall(h, func(ctx context.Context, s runtime.UsageReader, _ empty) (runtime.Usage, error) {
		return s.Usage(ctx)
	}))
	m.HandleFunc(p("sandboxes/{id}/disk"), sbCall(h, func(ctx context.Context, s runtime.DiskReader, _ empty) (runtime.Disk, error) {
		return s.Disk()
	}))
	type fo = runtime.FileOps
	m.HandleFunc(p("sandboxes/{id}/stat_path"), sbCall(h, func(ctx context.Context, s fo, req runtime.FSRequest) (runtime.Stat, error) {
		return s.StatPath(ctx, req)
	}))
	m.HandleFunc(p("sandboxes/{id}/exists"), sbCall(h, func(ctx context.Context, s fo, req runtime.FSRequest) (runtime.Stat, error) {
		return s.Exists(ctx, req)
	}))
	m.HandleFunc(p("sandboxes/{id}/mkdir"), sbCall(h, func(ctx context.Context, s fo, req runtime.FSRequest) (runtime.Stat, error) {
		return s.Mkdir(ctx, req)
	}))
	m.HandleFunc(p("sandboxes/{id}/rename"), sbCall(h, func(ctx context.Context, s fo, req runtime.FSRequest) (runtime.Stat, error) {
		return s.Rename(ctx, req)
	}))
	type ps = runtime.Processes
	m.HandleFunc(p("sandboxes/{id}/processes/list"), sbCall(h, func(ctx context.Context, s ps, _ empty) ([]runtime.ProcessInfo, error) {
		return s.ListProcesses(ctx)
	}))
	m.HandleFunc(p("sandboxes/{id}/processes/start"), sbCall(h, func(ctx context.Context, s ps, req runtime.ProcessRequest) (runtime.ProcessInfo, error) {
		return s.StartProcess(ctx, req)
	}))
	m.HandleFunc(p("sandboxes/{id}/processes/input"), sbCall(h, func(ctx context.Context, s ps, req processReq) (empty, error) {
		return empty{}, s.ProcessInput(ctx, req.PID, req.Data, req.CloseStdin)
	}))
	m.HandleFunc(p("sandboxes/{id}/processes/signal"), sbCall(h, func(ctx context.Context, s ps, req processReq) (empty, error) {
		return empty{}, s.SignalProcess(ctx, req.PID, req.Signal)
	}))

	// Streams.
	m.HandleFunc(pathPrefix+"sandboxes/{id}/stream/{op}", h.stream)

	m.HandleFunc(pathPrefix, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, wireError{Code: "protocol", Message: fmt.Sprintf("no node API call %s %s", r.Method, r.URL.Path)})
	})
}
