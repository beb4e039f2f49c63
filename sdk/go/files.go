package orkestr

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// Files reads and writes files inside a sandbox. Paths are absolute paths
// inside the sandbox. Obtain it with Sandbox.Files.
type Files struct {
	sb   *Sandbox
	user string // "" (root) or UserUser
}

// Files returns the sandbox's file operations, done as root.
func (s *Sandbox) Files() *Files { return &Files{sb: s} }

// FilesAs returns the sandbox's file operations done as user (UserRoot or
// UserUser): the user's permissions decide (a refusal is an *Error with
// Code "permission_denied"), and what it writes belongs to it. A
// FileOptions.User given to a call overrides it.
func (s *Sandbox) FilesAs(user string) *Files { return &Files{sb: s, user: user} }

// FileEntry is one entry of a directory listing.
type FileEntry struct {
	Name       string      `json:"name"`
	Path       string      `json:"path"`
	IsDir      bool        `json:"is_dir"`
	Size       int64       `json:"size"`
	Mode       fs.FileMode `json:"mode"` // permission bits only
	ModifiedAt time.Time   `json:"modified_at"`
}

func (f *Files) request(method, suffix, path string) (*request, error) {
	p, err := sandboxPath(f.sb.ID, suffix)
	if err != nil {
		return nil, err
	}
	if path == "" {
		return nil, errors.New("orkestr: empty file path")
	}
	q := url.Values{"path": {path}}
	if f.user != "" {
		q.Set("user", f.user)
	}
	return &request{method: method, path: p, query: q}, nil
}

// Write writes content to the file at path, replacing it and creating its
// parent directories.
func (f *Files) Write(ctx context.Context, path, content string) error {
	_, err := f.put(ctx, path, strings.NewReader(content), func() (io.Reader, error) { return strings.NewReader(content), nil })
	return err
}

// WriteBytes writes data to the file at path, like Write.
func (f *Files) WriteBytes(ctx context.Context, path string, data []byte) error {
	_, err := f.put(ctx, path, bytes.NewReader(data), func() (io.Reader, error) { return bytes.NewReader(data), nil })
	return err
}

// WriteFrom streams r to the file at path, like Write, without holding it
// in memory, and returns the size the sandbox stored. It is retried only if
// r is an io.Seeker (it is rewound to where it was). r is not closed, and
// no new read of it starts once WriteFrom has returned.
func (f *Files) WriteFrom(ctx context.Context, path string, r io.Reader) (int64, error) {
	var rewind func() (io.Reader, error)
	body := &guardedReader{r: r}
	defer func() { body.stop() }()
	if sk, ok := r.(io.Seeker); ok {
		if start, err := sk.Seek(0, io.SeekCurrent); err == nil {
			rewind = func() (io.Reader, error) {
				body.stop()
				if _, err := sk.Seek(start, io.SeekStart); err != nil {
					return nil, err
				}
				body = &guardedReader{r: r}
				return body, nil
			}
		}
	}
	return f.put(ctx, path, body, rewind)
}

func (f *Files) put(ctx context.Context, path string, body io.Reader, rewind func() (io.Reader, error)) (int64, error) {
	req, err := f.request(http.MethodPut, "/files", path)
	if err != nil {
		return 0, err
	}
	req.body, req.rewind, req.contentType = body, rewind, "application/octet-stream"
	var out struct {
		Path string `json:"path"`
		Size int64  `json:"size"`
	}
	if err := f.sb.client.call(ctx, req, &out); err != nil {
		return 0, err
	}
	return out.Size, nil
}

// guardedReader passes reads through to r until stop, so that the HTTP
// transport, which may go on reading or closing a request body after Do
// has returned, leaves the caller's reader alone once WriteFrom returned
// (a read already in progress then still completes). Its Close does not
// close r.
type guardedReader struct {
	r       io.Reader
	stopped atomic.Bool
}

func (g *guardedReader) Read(p []byte) (int, error) {
	if g.stopped.Load() {
		return 0, errors.New("orkestr: the upload has ended")
	}
	return g.r.Read(p)
}

// WriteTo hands the body to the transport in pieces of up to 1 MiB (the
// transport's own copy would read it 32 KiB at a time), stopping as Read
// does. copyBulk hides this method from its own copy.
func (g *guardedReader) WriteTo(w io.Writer) (int64, error) {
	return copyBulk(w, g)
}

func (g *guardedReader) Close() error {
	g.stop()
	return nil
}

func (g *guardedReader) stop() { g.stopped.Store(true) }

// Open returns the content of the file at path as it streams from the
// sandbox. Close it when done.
func (f *Files) Open(ctx context.Context, path string) (io.ReadCloser, error) {
	req, err := f.request(http.MethodGet, "/files", path)
	if err != nil {
		return nil, err
	}
	resp, err := f.sb.client.do(ctx, req)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// ReadTo streams the file at path into w without holding it in memory and
// returns the number of bytes copied.
func (f *Files) ReadTo(ctx context.Context, path string, w io.Writer) (int64, error) {
	rc, err := f.Open(ctx, path)
	return drainTo(w, rc, err, path)
}

// drainTo copies the body rc (opened with err) into w and closes it; what
// names it in an error.
func drainTo(w io.Writer, rc io.ReadCloser, err error, what string) (int64, error) {
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	n, err := copyBulk(w, rc)
	if err != nil {
		return n, fmt.Errorf("orkestr: reading %s: %w", what, err)
	}
	return n, nil
}

// ReadBytes returns the content of the file at path.
func (f *Files) ReadBytes(ctx context.Context, path string) ([]byte, error) {
	var buf bytes.Buffer
	if _, err := f.ReadTo(ctx, path, &buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Read returns the content of the file at path as a string.
func (f *Files) Read(ctx context.Context, path string) (string, error) {
	b, err := f.ReadBytes(ctx, path)
	return string(b), err
}

// List returns the entries of the directory at path.
func (f *Files) List(ctx context.Context, path string) ([]FileEntry, error) {
	req, err := f.request(http.MethodGet, "/files/list", path)
	if err != nil {
		return nil, err
	}
	var out struct {
		Entries []FileEntry `json:"entries"`
	}
	if err := f.sb.client.call(ctx, req, &out); err != nil {
		return nil, err
	}
	if out.Entries == nil {
		out.Entries = []FileEntry{}
	}
	return out.Entries, nil
}

// Delete removes the file or directory (with its content) at path.
func (f *Files) Delete(ctx context.Context, path string) error {
	req, err := f.request(http.MethodDelete, "/files", path)
	if err != nil {
		return err
	}
	return f.sb.client.call(ctx, req, nil)
}

// Extracted says what WriteArchive created.
type Extracted struct {
	Path    string `json:"path"`
	Entries int    `json:"entries"`
	Bytes   int64  `json:"bytes"`
}

// WriteArchive streams a tar archive (plain, gzip or zstd, told apart by
// their magic bytes) into the sandbox, where it is extracted into the
// directory dir (created if missing) as it arrives. Modes and symlinks are
// kept; entries that are absolute, climb out with "..", lead through a
// symlink out of dir, or are device nodes are refused with an *Error of
// code invalid_archive (entries before the refused one stay). It is not
// retried. Archives are root's: a FilesAs(UserUser) refuses them.
func (f *Files) WriteArchive(ctx context.Context, dir string, archive io.Reader) (*Extracted, error) {
	if f.user != "" && f.user != UserRoot {
		return nil, errors.New("orkestr: archives are written and read as root only; use Sandbox.Files")
	}
	req, err := f.request(http.MethodPut, "/files/archive", dir)
	if err != nil {
		return nil, err
	}
	body := &guardedReader{r: archive}
	defer body.stop()
	req.body, req.contentType = body, "application/x-tar"
	out := &Extracted{}
	if err := f.sb.client.call(ctx, req, out); err != nil {
		return nil, err
	}
	return out, nil
}

// OpenArchive streams the directory dir as a tar archive, compressed with
// compression ("", "gzip" or "zstd"). Symlinks are archived as links;
// device nodes, fifos and sockets are left out. Close it when done.
func (f *Files) OpenArchive(ctx context.Context, dir, compression string) (io.ReadCloser, error) {
	if f.user != "" && f.user != UserRoot {
		return nil, errors.New("orkestr: archives are written and read as root only; use Sandbox.Files")
	}
	req, err := f.request(http.MethodGet, "/files/archive", dir)
	if err != nil {
		return nil, err
	}
	if compression != "" {
		req.query.Set("compression", compression)
	}
	resp, err := f.sb.client.do(ctx, req)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// ReadArchiveTo streams the directory dir as a tar archive (see
// OpenArchive) into w and returns the number of bytes copied.
func (f *Files) ReadArchiveTo(ctx context.Context, dir, compression string, w io.Writer) (int64, error) {
	rc, err := f.OpenArchive(ctx, dir, compression)
	return drainTo(w, rc, err, "the archive of "+dir)
}
