package orkestr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"net/url"
	"time"
)

// FileStat describes a path inside a sandbox (a final symlink is not
// followed).
type FileStat struct {
	Name          string     `json:"name"`
	Path          string     `json:"path"`
	Type          string     `json:"type"` // file, dir, symlink, fifo, socket, char_device, block_device
	Size          int64      `json:"size"`
	Mode          uint32     `json:"mode"` // permission bits with setuid, setgid and sticky
	UID           uint32     `json:"uid"`
	GID           uint32     `json:"gid"`
	Owner         *string    `json:"owner"` // uid's name in the sandbox's /etc/passwd
	Group         *string    `json:"group"`
	AccessedAt    *time.Time `json:"accessed_at"`
	ModifiedAt    *time.Time `json:"modified_at"`
	ChangedAt     *time.Time `json:"changed_at"`
	SymlinkTarget *string    `json:"symlink_target"`
}

// FileOptions choose whose permissions a file call runs with.
type FileOptions struct {
	User string // UserRoot ("", the default) or UserUser
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func (f *Files) query(suffix, path, user string) (*request, error) {
	p, err := sandboxPath(f.sb.ID, "/files"+suffix)
	if err != nil {
		return nil, err
	}
	q := url.Values{"path": {path}}
	if user == "" {
		user = f.user
	}
	if user != "" {
		q.Set("user", user)
	}
	return &request{method: http.MethodGet, path: p, query: q}, nil
}

// Stat describes path; a missing one is an *Error with Code
// "file_not_found".
func (f *Files) Stat(ctx context.Context, path string, o FileOptions) (*FileStat, error) {
	req, err := f.query("/stat", path, o.User)
	if err != nil {
		return nil, err
	}
	st := &FileStat{}
	return st, f.sb.client.call(ctx, req, st)
}

// Exists reports whether path exists (a missing one is not an error).
func (f *Files) Exists(ctx context.Context, path string, o FileOptions) (bool, error) {
	req, err := f.query("/exists", path, o.User)
	if err != nil {
		return false, err
	}
	var out struct {
		Exists bool `json:"exists"`
	}
	err = f.sb.client.call(ctx, req, &out)
	return out.Exists, err
}

// MkdirOptions tune MakeDir.
type MkdirOptions struct {
	NoParents bool   // the parent must exist, and an existing path is an error
	Mode      uint32 // permission bits; 0: 0755
	User      string // UserRoot ("") or UserUser, who will own what is made
}

// MakeDir makes a directory and, unless NoParents, its missing parents.
func (f *Files) MakeDir(ctx context.Context, path string, o MkdirOptions) (*FileStat, error) {
	p, err := sandboxPath(f.sb.ID, "/files/mkdir")
	if err != nil {
		return nil, err
	}
	body := map[string]any{"path": path, "parents": !o.NoParents}
	if o.Mode != 0 {
		body["mode"] = o.Mode
	}
	if u := orDefault(o.User, f.user); u != "" {
		body["user"] = u
	}
	st := &FileStat{}
	return st, f.sb.client.call(ctx, &request{method: http.MethodPost, path: p, json: body}, st)
}

// RenameOptions tune Rename.
type RenameOptions struct {
	Overwrite bool   // replace an existing destination
	User      string // UserRoot ("") or UserUser
}

// Rename moves from to to inside the sandbox; an existing to is an *Error
// with Code "file_exists" unless Overwrite.
func (f *Files) Rename(ctx context.Context, from, to string, o RenameOptions) (*FileStat, error) {
	p, err := sandboxPath(f.sb.ID, "/files/rename")
	if err != nil {
		return nil, err
	}
	body := map[string]any{"from": from, "to": to, "overwrite": o.Overwrite}
	if u := orDefault(o.User, f.user); u != "" {
		body["user"] = u
	}
	st := &FileStat{}
	return st, f.sb.client.call(ctx, &request{method: http.MethodPost, path: p, json: body}, st)
}

// WatchEvent is one change under a watched directory. Path (and From) are
// relative to it.
type WatchEvent struct {
	Type  string `json:"type"` // create, write, remove, rename, chmod, overflow, limit
	Path  string `json:"path"`
	From  string `json:"from,omitempty"` // rename: the old path
	IsDir bool   `json:"is_dir"`
}

// Watch is an open watch of a directory: the changes made after
// OpenWatch returned are in Events, in order.
type Watch struct {
	body      io.ReadCloser
	dec       *json.Decoder
	ctx       context.Context
	requestID string
}

// OpenWatch watches the directory path (with recursive, its
// subdirectories too) and returns once the watch holds, so that a change
// made after it is seen. Close ends it.
func (f *Files) OpenWatch(ctx context.Context, path string, recursive bool) (*Watch, error) {
	req, err := f.query("/watch", path, "")
	if err != nil {
		return nil, err
	}
	if recursive {
		req.query.Set("recursive", "true")
	}
	resp, err := f.sb.client.do(ctx, req)
	if err != nil {
		return nil, err
	}
	w := &Watch{body: resp.Body, dec: json.NewDecoder(resp.Body), ctx: ctx, requestID: resp.Header.Get("X-Request-Id")}
	var first struct {
		Type string `json:"type"`
	}
	if err := w.dec.Decode(&first); err != nil || first.Type != "started" {
		resp.Body.Close()
		return nil, fmt.Errorf("orkestr: the watch did not start (%v)", err)
	}
	return w, nil
}

// Close ends the watch.
func (w *Watch) Close() error { return w.body.Close() }

// Events yields the changes until the directory goes (the sequence ends),
// the watch is closed or its context ends, or the sandbox pauses
// (ErrDetached). An error is yielded once, last.
func (w *Watch) Events() iter.Seq2[WatchEvent, error] {
	return func(yield func(WatchEvent, error) bool) {
		for {
			var ev struct {
				WatchEvent
				Error *errorPayload `json:"error"`
			}
			if err := w.dec.Decode(&ev); err != nil {
				if w.ctx.Err() != nil {
					err = w.ctx.Err()
				} else if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				yield(WatchEvent{}, fmt.Errorf("orkestr: watch ended early: %w", err))
				return
			}
			switch ev.Type {
			case "started":
			case "end":
				return
			case "detached":
				yield(WatchEvent{}, ErrDetached)
				return
			case "error":
				e := &Error{RequestID: w.requestID, Status: http.StatusInternalServerError, Details: map[string]any{}}
				if ev.Error != nil {
					e.Code, e.Message = ev.Error.Code, ev.Error.Message
				}
				yield(WatchEvent{}, classify(e))
				return
			default:
				if !yield(ev.WatchEvent, nil) {
					return
				}
			}
		}
	}
}

// Watch opens a watch (see OpenWatch) and yields its events; the watch
// ends when the loop does.
//
//	for ev, err := range sbx.Files().Watch(ctx, "/workspace", true) {
//		if err != nil {
//			return err
//		}
//		fmt.Println(ev.Type, ev.Path)
//	}
func (f *Files) Watch(ctx context.Context, path string, recursive bool) iter.Seq2[WatchEvent, error] {
	return func(yield func(WatchEvent, error) bool) {
		w, err := f.OpenWatch(ctx, path, recursive)
		if err != nil {
			yield(WatchEvent{}, err)
			return
		}
		defer w.Close()
		for ev, err := range w.Events() {
			if !yield(ev, err) || err != nil {
				return
			}
		}
	}
}
