package api

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// archiveSandbox is fileSandbox for the archive routes: the runtime must
// move directory trees.
func (s *Server) archiveSandbox(r *http.Request) (runtime.Archiver, string, error) {
	rt, path, err := s.fileSandbox(r)
	if err != nil {
		return nil, "", err
	}
	ar, ok := rt.(runtime.Archiver)
	if !ok {
		return nil, "", fmt.Errorf("runtime %T cannot move directory archives", rt)
	}
	return ar, path, nil
}

func archiveError(err error) error {
	switch {
	case errors.Is(err, runtime.ErrInvalidArchive):
		return apiErr(http.StatusBadRequest, "invalid_archive", "The archive was refused: %s", detail(err))
	case errors.Is(err, runtime.ErrTooLarge):
		return apiErr(http.StatusRequestEntityTooLarge, "payload_too_large", "The archive was refused: %s", detail(err))
	}
	return fileError(err)
}

// detail is the agent's message after the runtime error's prefix.
func detail(err error) string {
	msg := err.Error()
	for _, base := range []error{runtime.ErrInvalidArchive, runtime.ErrTooLarge} {
		if p := base.Error() + ": "; len(msg) > len(p) && msg[:len(p)] == p {
			return msg[len(p):]
		}
	}
	return msg
}

// putArchive extracts the request body, a tar (plain, gzip or zstd), into
// the directory ?path= inside the sandbox, as it arrives. Its expanded file
// content is limited like a file upload.
func (s *Server) putArchive(w http.ResponseWriter, r *http.Request) error {
	if r.ContentLength > s.cfg.MaxFileBytes {
		return apiErr(http.StatusRequestEntityTooLarge, "payload_too_large", "Archives are limited to %d bytes on this server.", s.cfg.MaxFileBytes)
	}
	// The body is required: no body is a mistake (a client that meant to
	// send a file), not an archive of nothing. A tar of no entries is
	// still 1024 zero bytes.
	var body io.Reader = http.MaxBytesReader(w, r.Body, s.cfg.MaxFileBytes)
	var first [1]byte
	if n, err := io.ReadFull(body, first[:]); n == 0 {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return apiErr(http.StatusRequestEntityTooLarge, "payload_too_large", "Archives are limited to %d bytes on this server.", s.cfg.MaxFileBytes)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return invalid("body", "The request body could not be read: %s.", err.Error())
		}
		return invalid("body", "The request body is empty; send a tar archive (plain, gzip or zstd).")
	}
	body = io.MultiReader(bytes.NewReader(first[:]), body)
	ar, path, err := s.archiveSandbox(r)
	if err != nil {
		return err
	}
	x, err := ar.Untar(r.Context(), path, s.cfg.MaxFileBytes, body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return apiErr(http.StatusRequestEntityTooLarge, "payload_too_large", "Archives are limited to %d bytes on this server.", s.cfg.MaxFileBytes)
		}
		return archiveError(err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"path": path, "entries": x.Entries, "bytes": x.Bytes})
	return nil
}

// getArchive streams the directory ?path= as a tar, compressed with
// ?compression=gzip|zstd (default none).
func (s *Server) getArchive(w http.ResponseWriter, r *http.Request) error {
	if err := noEmptyQuery(r.URL.Query(), "compression"); err != nil {
		return err
	}
	comp := r.URL.Query().Get("compression")
	ctype := map[string]string{"": "application/x-tar", "none": "application/x-tar", "gzip": "application/gzip", "zstd": "application/zstd"}[comp]
	if ctype == "" {
		return invalid("compression", "compression must be none, gzip or zstd.")
	}
	if comp == "none" {
		comp = ""
	}
	ar, path, err := s.archiveSandbox(r)
	if err != nil {
		return err
	}
	lw := &lazyFileWriter{w: w, contentType: ctype}
	if err := ar.Tar(r.Context(), path, comp, lw); err != nil {
		if lw.started {
			panic(http.ErrAbortHandler)
		}
		return archiveError(err)
	}
	lw.start()
	return nil
}
