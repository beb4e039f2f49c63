package api

import (
	"errors"
	"net/http"

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
		return apiErr(http.StatusBadRequest, "invalid_path", "The path is invalid.").with("field", "path")
	case errors.Is(err, runtime.ErrIsDir):
		return apiErr(http.StatusBadRequest, "invalid_path", "The path is a directory.").with("field", "path")
	case errors.Is(err, runtime.ErrNotDir):
		return apiErr(http.StatusBadRequest, "invalid_path", "A component of the path is not a directory.").with("field", "path")
	case errors.Is(err, runtime.ErrNoSpace):
		return apiErr(http.StatusRequestEntityTooLarge, "payload_too_large", "The sandbox has no space left for this file.")
	case errors.Is(err, runtime.ErrInvalidRequest):
		return apiErr(http.StatusBadRequest, "invalid_path", "The path is not a regular file or directory.").with("field", "path")
	case errors.Is(err, runtime.ErrPermission):
		return apiErr(http.StatusBadRequest, "invalid_path", "Permission denied in the sandbox.").with("field", "path")
	}
	return execError(err)
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
		return userFileError(err, user)
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
		return userFileError(err, user)
	}
	writeJSON(w, http.StatusOK, map[string]any{"path": path, "size": n})
	return nil
}

func (s *Server) deleteFile(w http.ResponseWriter, r *http.Request) error {
	rt, path, err := s.fileSandbox(r)
	if err != nil {
		return err
	}
	if path == "/" {
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
		return userFileError(err, user)
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
		return userFileError(err, user)
	}
	out := make([]fileEntry, len(ents))
	for i, e := range ents {
		out[i] = fileEntry{Name: e.Name, Path: e.Path, IsDir: e.IsDir, Size: e.Size, Mode: e.Mode, ModifiedAt: fmtTime(e.Modified)}
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": out})
	return nil
}
