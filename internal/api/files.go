package api

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// fileSandbox validates ?path= and finds the running sandbox.
func (s *Server) fileSandbox(r *http.Request) (runtime.Sandbox, string, error) {
	q := r.URL.Query()
	if len(q["path"]) != 1 {
		return nil, "", apiErr(http.StatusBadRequest, "invalid_path", "Give exactly one path query parameter.").with("field", "path")
	}
	path := q.Get("path")
	if err := checkPath("path", path); err != nil {
		return nil, "", err
	}
	rt, err := s.runningRuntime(r)
	if err != nil {
		return nil, "", err
	}
	return rt, path, nil
}

// fileAs reads ?user= of a read, write, list or delete and returns the
// sandbox's calls for that user; nil for root, whose calls are rt's own.
func fileAs(r *http.Request, rt runtime.Sandbox) (runtime.UserFiles, string, error) {
	var user *string
	if q := r.URL.Query(); len(q["user"]) > 0 {
		u := q.Get("user")
		user = &u
	}
	u, err := checkUser(user)
	if err != nil || u == runtime.UserRoot {
		return nil, u, err
	}
	uf, ok := rt.(runtime.UserFiles)
	if !ok {
		return nil, "", apiErr(http.StatusNotImplemented, "not_implemented", "This server's runtime cannot do file calls as user; use root.")
	}
	return uf, u, nil
}

// userFileError maps a file call's failure; a user's lacking permissions
// are a 403, as for the extended file calls.
func userFileError(err error, user string) error {
	if user != runtime.UserRoot {
		return fsError(err)
	}
	return fileError(err)
}

func fileError(err error) error {
	switch {
	case errors.Is(err, runtime.ErrFileNotFound):
		return apiErr(http.StatusNotFound, "file_not_found", "No such file or directory in the sandbox.")
	case errors.Is(err, runtime.ErrInvalidPath):
		return apiErr(http.StatusBadRequest, "invalid_path", "The path is invalid%s.", agentReason(err, runtime.ErrInvalidPath)).with("field", "path")
	case errors.Is(err, runtime.ErrIsDir):
		return apiErr(http.StatusBadRequest, "invalid_path", "The path is a directory.").with("field", "path")
	case errors.Is(err, runtime.ErrNotDir):
		return apiErr(http.StatusBadRequest, "not_a_directory", "The path or one of its parents is not a directory%s.", agentReason(err, runtime.ErrNotDir)).with("field", "path")
	case errors.Is(err, runtime.ErrNoSpace):
		return apiErr(http.StatusRequestEntityTooLarge, "payload_too_large", "The sandbox has no space left for this file.")
	case errors.Is(err, runtime.ErrInvalidRequest):
		return apiErr(http.StatusBadRequest, "invalid_path", "The path is not a regular file or directory.").with("field", "path")
	case errors.Is(err, runtime.ErrPermission):
		return apiErr(http.StatusForbidden, "permission_denied", "Permission denied in the sandbox%s.", agentReason(err, runtime.ErrPermission)).with("field", "path")
	case errors.Is(err, runtime.ErrReadOnly):
		return apiErr(http.StatusConflict, "read_only", "The path is on a read-only filesystem%s.", agentReason(err, runtime.ErrReadOnly)).with("field", "path")
	case errors.Is(err, runtime.ErrFileBusy), errors.Is(err, runtime.ErrNotEmpty):
		return apiErr(http.StatusConflict, "busy", "The path is busy (a mount point, or in use)%s.", agentReason(err, runtime.ErrFileBusy, runtime.ErrNotEmpty)).with("field", "path")
	case errors.Is(err, runtime.ErrIO):
		return apiErr(http.StatusUnprocessableEntity, "io_error", "The file cannot be read%s.", agentReason(err, runtime.ErrIO)).with("field", "path")
	case errors.Is(err, runtime.ErrFileLimit):
		return apiErr(http.StatusUnprocessableEntity, "limit_exceeded", "The operation went over its bounds%s.", agentReason(err, runtime.ErrFileLimit)).with("field", "path")
	}
	return execError(err)
}

// agentReason is the agent's own account of a file error (it names paths
// inside the sandbox only), as ": reason", or "" when there is none.
func agentReason(err error, bases ...error) string {
	msg := err.Error()
	for _, b := range bases {
		if rest, ok := strings.CutPrefix(msg, b.Error()+": "); ok {
			if len(rest) > 500 {
				rest = rest[:500] + "…"
			}
			return ": " + strings.ToValidUTF8(rest, "")
		}
	}
	return ""
}

// fileFailed maps a failed file operation: the sandbox ending under it is
// named as such, anything else goes through fileError.
func (s *Server) fileFailed(r *http.Request, rt runtime.Sandbox, err error, user string) error {
	if errors.Is(err, runtime.ErrStopped) || errors.Is(err, runtime.ErrOutOfMemory) || errors.Is(err, runtime.ErrAgent) {
		return s.sandboxEnded(r, rt, err)
	}
	return userFileError(err, user)
}

// lazyFileWriter sends the 200 headers with the first byte, so an error
// found before any data can still become a JSON error response.
type lazyFileWriter struct {
	w           http.ResponseWriter
	started     bool
	contentType string // "": application/octet-stream
}

func (l *lazyFileWriter) start() {
	if !l.started {
		l.started = true
		ct := l.contentType
		if ct == "" {
			ct = "application/octet-stream"
		}
		l.w.Header().Set("Content-Type", ct)
		l.w.WriteHeader(http.StatusOK)
	}
}

func (l *lazyFileWriter) Write(p []byte) (int, error) {
	l.start()
	return l.w.Write(p)
}

// ExpectSize is told the download's exact length before its first byte
// (the agent channel's SizeExpecter): it goes out as Content-Length, so
// the response is not chunked and ReadFrom below can splice.
func (l *lazyFileWriter) ExpectSize(n int64) {
	if !l.started {
		l.w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	}
}

// ReadFrom hands r to the HTTP server's own ReadFrom, which, for a
// response of known length, splices from r's socket (the agent's data
// connection) into the client's: the bytes do not pass through orkestrd.
func (l *lazyFileWriter) ReadFrom(r io.Reader) (int64, error) {
	l.start()
	w := l.w
	for {
		if rf, ok := w.(io.ReaderFrom); ok {
			return rf.ReadFrom(r)
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return io.Copy(writerOnly{l.w}, r)
		}
		w = u.Unwrap()
	}
}

// writerOnly hides a writer's ReadFrom from io.Copy.
type writerOnly struct{ io.Writer }

// abandon forgets what ExpectSize announced when the download fails before
// its first byte, so the error response has its own length.
func (l *lazyFileWriter) abandon() {
	if !l.started {
		l.w.Header().Del("Content-Length")
	}
}

func (s *Server) readFile(w http.ResponseWriter, r *http.Request) error {
	rt, path, err := s.fileSandbox(r)
	if err != nil {
		return err
	}
	uf, user, err := fileAs(r, rt)
	if err != nil {
		return err
	}
	lw := &lazyFileWriter{w: w}
	if uf != nil {
		_, err = uf.ReadFileAs(r.Context(), user, path, lw)
	} else {
		_, err = rt.ReadFile(r.Context(), path, lw)
	}
	if err != nil {
		if lw.started {
			// Headers are gone: abort the response so the client sees a
			// broken transfer rather than a short file.
			panic(http.ErrAbortHandler)
		}
		lw.abandon()
		return s.fileFailed(r, rt, err, user)
	}
	lw.start()
	return nil
}

func (s *Server) writeFile(w http.ResponseWriter, r *http.Request) error {
	if r.ContentLength > s.cfg.MaxFileBytes {
		return apiErr(http.StatusRequestEntityTooLarge, "payload_too_large", "Files are limited to %d bytes on this server.", s.cfg.MaxFileBytes)
	}
	rt, path, err := s.fileSandbox(r)
	if err != nil {
		return err
	}
	uf, user, err := fileAs(r, rt)
	if err != nil {
		return err
	}
	body := http.MaxBytesReader(w, r.Body, s.cfg.MaxFileBytes)
	var n int64
	if uf != nil {
		n, err = uf.WriteFileAs(r.Context(), user, path, 0, body)
	} else {
		n, err = rt.WriteFile(r.Context(), path, 0, body)
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return apiErr(http.StatusRequestEntityTooLarge, "payload_too_large", "Files are limited to %d bytes on this server.", s.cfg.MaxFileBytes)
		}
		return s.fileFailed(r, rt, err, user)
	}
	writeJSON(w, http.StatusOK, map[string]any{"path": path, "size": n})
	return nil
}

func (s *Server) deleteFile(w http.ResponseWriter, r *http.Request) error {
	rt, path, err := s.fileSandbox(r)
	if err != nil {
		return err
	}
	if isRoot(path) {
		return apiErr(http.StatusBadRequest, "invalid_path", "Refusing to delete /.").with("field", "path")
	}
	uf, user, err := fileAs(r, rt)
	if err != nil {
		return err
	}
	if uf != nil {
		err = uf.RemoveAs(r.Context(), user, path, true)
	} else {
		err = rt.Remove(r.Context(), path, true)
	}
	if err != nil {
		return s.fileFailed(r, rt, err, user)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

type fileEntry struct {
	Name       string `json:"name"`
	Path       string `json:"path"`
	IsDir      bool   `json:"is_dir"`
	Size       int64  `json:"size"`
	Mode       uint32 `json:"mode"`
	ModifiedAt string `json:"modified_at"`
}

func (s *Server) listFiles(w http.ResponseWriter, r *http.Request) error {
	rt, path, err := s.fileSandbox(r)
	if err != nil {
		return err
	}
	uf, user, err := fileAs(r, rt)
	if err != nil {
		return err
	}
	var ents []runtime.FileInfo
	if uf != nil {
		ents, err = uf.ListAs(r.Context(), user, path)
	} else {
		ents, err = rt.List(r.Context(), path)
	}
	if err != nil {
		return s.fileFailed(r, rt, err, user)
	}
	out := make([]fileEntry, len(ents))
	for i, e := range ents {
		out[i] = fileEntry{Name: e.Name, Path: e.Path, IsDir: e.IsDir, Size: e.Size, Mode: e.Mode, ModifiedAt: fmtTime(e.Modified)}
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": out})
	return nil
}
