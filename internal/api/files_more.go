package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"path"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// The extended file calls: stat, exists, mkdir, rename and watch, each as
// root or as the sandbox's unprivileged user.

type statJSON struct {
	Name          string  `json:"name"`
	Path          string  `json:"path"`
	Type          string  `json:"type"`
	Size          int64   `json:"size"`
	Mode          uint32  `json:"mode"`
	UID           uint32  `json:"uid"`
	GID           uint32  `json:"gid"`
	Owner         *string `json:"owner"`
	Group         *string `json:"group"`
	AccessedAt    *string `json:"accessed_at"`
	ModifiedAt    *string `json:"modified_at"`
	ChangedAt     *string `json:"changed_at"`
	SymlinkTarget *string `json:"symlink_target"`
}

func strOrNil(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func timeOrNil(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	return fmtTimePtr(&t)
}

func statOut(s runtime.Stat) statJSON {
	out := statJSON{Name: s.Name, Path: s.Path, Type: s.Type, Size: s.Size, Mode: s.Mode, UID: s.UID, GID: s.GID,
		Owner: strOrNil(s.Owner), Group: strOrNil(s.Group),
		AccessedAt: timeOrNil(s.Accessed), ModifiedAt: timeOrNil(s.Modified), ChangedAt: timeOrNil(s.Changed)}
	if s.Type == "symlink" {
		out.SymlinkTarget = &s.Target
	}
	return out
}

// fsError maps the failures of the extended file calls.
func fsError(err error) error {
	switch {
	case errors.Is(err, runtime.ErrExists):
		return apiErr(http.StatusConflict, "file_exists", "Something already exists at that path.").with("field", "path")
	case errors.Is(err, runtime.ErrNotEmpty):
		return apiErr(http.StatusConflict, "file_exists", "A non-empty directory is in the way.").with("field", "to")
	case errors.Is(err, runtime.ErrCrossDevice):
		return apiErr(http.StatusBadRequest, "invalid_path", "Cannot move between two filesystems of the sandbox (/tmp is one of its own); copy and delete instead.").with("field", "to")
	case errors.Is(err, runtime.ErrPermission):
		// The agent says why: the user's permissions, or the agent's own
		// files, which no user may change.
		return apiErr(http.StatusForbidden, "permission_denied", "Permission denied in the sandbox%s (as the sandbox's user: use user \"root\", or change the file's mode).", agentReason(err, runtime.ErrPermission)).with("field", "path")
	case errors.Is(err, runtime.ErrNoUser):
		return invalid("user", "The sandbox's template has no unprivileged user; rebuild it (orkestrd admin template build) or use root.")
	}
	return fileError(err)
}

// fileOps finds the running sandbox of an extended file call.
func (s *Server) fileOps(r *http.Request) (runtime.FileOps, error) {
	return runningAs[runtime.FileOps](s, r, "This server's runtime does not have these file calls.")
}

// runningAs finds the running sandbox of r as the optional runtime
// interface T; a runtime without it is 501 with lacks as the message.
func runningAs[T any](s *Server, r *http.Request, lacks string) (T, error) {
	var none T
	rt, err := s.runningRuntime(r)
	if err != nil {
		return none, err
	}
	v, ok := rt.(T)
	if !ok {
		return none, apiErr(http.StatusNotImplemented, "not_implemented", "%s", lacks)
	}
	return v, nil
}

// queryFS reads ?path= (exactly once) and ?user= of a GET file call.
func queryFS(r *http.Request) (runtime.FSRequest, error) {
	q := r.URL.Query()
	if len(q["path"]) != 1 {
		return runtime.FSRequest{}, apiErr(http.StatusBadRequest, "invalid_path", "Give exactly one path query parameter.").with("field", "path")
	}
	path := q.Get("path")
	if err := checkPath("path", path); err != nil {
		return runtime.FSRequest{}, err
	}
	var user *string
	if len(q["user"]) > 0 {
		u := q.Get("user")
		user = &u
	}
	u, err := checkUser(user)
	if err != nil {
		return runtime.FSRequest{}, err
	}
	return runtime.FSRequest{Path: path, User: u}, nil
}

func (s *Server) statFile(w http.ResponseWriter, r *http.Request) error {
	req, err := queryFS(r)
	if err != nil {
		return err
	}
	f, err := s.fileOps(r)
	if err != nil {
		return err
	}
	st, err := f.StatPath(r.Context(), req)
	if err != nil {
		return fsError(err)
	}
	writeJSON(w, http.StatusOK, statOut(st))
	return nil
}

func (s *Server) fileExists(w http.ResponseWriter, r *http.Request) error {
	req, err := queryFS(r)
	if err != nil {
		return err
	}
	f, err := s.fileOps(r)
	if err != nil {
		return err
	}
	st, err := f.Exists(r.Context(), req)
	if err != nil {
		return fsError(err)
	}
	out := map[string]any{"exists": st.Exists, "type": nil}
	if st.Exists {
		out["type"] = st.Type
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) makeDir(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Path    string  `json:"path"`
		Parents *bool   `json:"parents"`
		Mode    *uint32 `json:"mode"`
		User    *string `json:"user"`
	}
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if err := checkPath("path", req.Path); err != nil {
		return err
	}
	if isRoot(req.Path) {
		return apiErr(http.StatusBadRequest, "invalid_path", "Refusing to make /: it always exists; name a directory below it.").with("field", "path")
	}
	user, err := checkUser(req.User)
	if err != nil {
		return err
	}
	fr := runtime.FSRequest{Path: req.Path, Parents: req.Parents == nil || *req.Parents, User: user}
	if req.Mode != nil {
		if *req.Mode == 0 || *req.Mode > 0o7777 {
			return invalid("mode", "Field mode must be permission bits between 1 and 4095 (0o7777), e.g. 493 for 0755.")
		}
		fr.Mode = *req.Mode
	}
	f, err := s.fileOps(r)
	if err != nil {
		return err
	}
	st, err := f.Mkdir(r.Context(), fr)
	if err != nil {
		return fsError(err)
	}
	writeJSON(w, http.StatusOK, statOut(st))
	return nil
}

func (s *Server) renameFile(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		From      string  `json:"from"`
		To        string  `json:"to"`
		Overwrite bool    `json:"overwrite"`
		User      *string `json:"user"`
	}
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if err := checkPath("from", req.From); err != nil {
		return err
	}
	if err := checkPath("to", req.To); err != nil {
		return err
	}
	if isRoot(req.From) {
		return apiErr(http.StatusBadRequest, "invalid_path", "Refusing to move /.").with("field", "from")
	}
	if isRoot(req.To) {
		return apiErr(http.StatusBadRequest, "invalid_path", "Refusing to move anything onto /.").with("field", "to")
	}
	user, err := checkUser(req.User)
	if err != nil {
		return err
	}
	f, err := s.fileOps(r)
	if err != nil {
		return err
	}
	st, err := f.Rename(r.Context(), runtime.FSRequest{Path: req.From, Dest: req.To, Overwrite: req.Overwrite, User: user})
	if err != nil {
		return fsError(err)
	}
	writeJSON(w, http.StatusOK, statOut(st))
	return nil
}

// watchFiles streams the changes under a directory as NDJSON: "started"
// once the watch holds, then one line per event, and last "end" (the
// directory went away), "detached" (the sandbox was paused or stopped) or
// "error".
func (s *Server) watchFiles(w http.ResponseWriter, r *http.Request) error {
	req, err := queryFS(r)
	if err != nil {
		return err
	}
	if req.Recursive, err = queryBool(r, "recursive"); err != nil {
		return err
	}
	f, err := s.fileOps(r)
	if err != nil {
		return err
	}
	var out *ndjson
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	err = f.Watch(ctx, req, func(dirs int) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		out = &ndjson{w: w, rc: http.NewResponseController(w), enc: enc}
		_ = out.send(map[string]any{"type": "started", "path": req.Path, "dirs": dirs})
	}, func(ev runtime.WatchEvent) error {
		line := map[string]any{"type": ev.Type, "path": ev.Path, "is_dir": ev.IsDir}
		if ev.Type == "rename" {
			line["from"] = ev.From
		}
		return out.send(line)
	})
	if out == nil { // refused before it started: an ordinary error answer
		if err == nil {
			err = errInternal
		}
		return fsError(err)
	}
	switch {
	case err == nil:
		_ = out.send(map[string]any{"type": "end", "reason": "The watched directory was removed or moved."})
	case errors.Is(err, runtime.ErrDetached):
		_ = out.send(map[string]any{"type": "detached", "reason": "The sandbox was paused or stopped; watch again after a resume."})
	case r.Context().Err() != nil:
	default:
		var e *Error
		if !errors.As(fsError(err), &e) {
			s.log.Error("watch failed", "request_id", requestID(r), "err", err)
			e = errInternal
		}
		_ = out.send(map[string]any{"type": "error", "error": map[string]any{"code": e.Code, "message": e.Message, "details": map[string]any{}}})
	}
	return nil
}

// queryBool reads the boolean query parameter name: true/1, false/0, or
// absent (false). Given empty (?recursive=), it is a mistake, as for every
// query parameter (docs/api.md, "One contract").
func queryBool(r *http.Request, name string) (bool, error) {
	q := r.URL.Query()
	if _, ok := q[name]; !ok {
		return false, nil
	}
	switch q.Get(name) {
	case "false", "0":
		return false, nil
	case "true", "1":
		return true, nil
	}
	return false, invalid(name, "Query parameter %s must be true or false.", name)
}

// isRoot reports whether an absolute path names / in any spelling ("//",
// "/.", "/./"): the calls that refuse / refuse all of them.
func isRoot(p string) bool {
	return path.Clean(p) == "/"
}
