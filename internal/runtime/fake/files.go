package fake

import (
	"context"
	"fmt"
	"io"
	"path"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

var _ runtime.UserFiles = (*Sandbox)(nil)

// ReadFile implements runtime.Sandbox.
func (sb *Sandbox) ReadFile(ctx context.Context, p string, w io.Writer) (runtime.FileInfo, error) {
	return sb.ReadFileAs(ctx, "", p, w)
}

// ReadFileAs implements runtime.UserFiles.
func (sb *Sandbox) ReadFileAs(ctx context.Context, user, p string, w io.Writer) (runtime.FileInfo, error) {
	if err := checkPath(p); err != nil {
		return runtime.FileInfo{}, err
	}
	uid, err := uidOf(user)
	if err != nil {
		return runtime.FileInfo{}, err
	}
	sb.mu.Lock()
	if sb.stopErr != nil {
		defer sb.mu.Unlock()
		return runtime.FileInfo{}, sb.stopErr
	}
	wh, err := sb.st.Tree.walkFollow(p)
	sb.mu.Unlock()
	if err != nil {
		return runtime.FileInfo{}, err
	}
	if wh.n.Kind == kindDir {
		return runtime.FileInfo{}, fmt.Errorf("%w: %s", runtime.ErrIsDir, p)
	}
	if !mayRead(wh.n, uid) {
		return runtime.FileInfo{}, fmt.Errorf("%w: %s", runtime.ErrPermission, p)
	}
	// A file's contents are never changed in place (writes replace the
	// node's slice), so they are read outside the lock.
	data := wh.n.Data
	fi := fileInfo(baseName(p), p, wh.n)
	for len(data) > 0 {
		if err := ctx.Err(); err != nil {
			return runtime.FileInfo{}, err
		}
		n := min(len(data), 256<<10)
		if _, err := w.Write(data[:n]); err != nil {
			return runtime.FileInfo{}, err
		}
		data = data[n:]
	}
	return fi, nil
}

func baseName(p string) string {
	if b := path.Base(p); b != "/" {
		return b
	}
	return "/"
}

// WriteFile implements runtime.Sandbox: the upload is read whole, then
// replaces the file at once; a failed upload changes nothing.
func (sb *Sandbox) WriteFile(ctx context.Context, p string, mode uint32, r io.Reader) (int64, error) {
	return sb.WriteFileAs(ctx, "", p, mode, r)
}

// WriteFileAs implements runtime.UserFiles: what the user writes is the
// user's, and only where it may write.
func (sb *Sandbox) WriteFileAs(ctx context.Context, user, p string, mode uint32, r io.Reader) (int64, error) {
	if err := checkPath(p); err != nil {
		return 0, err
	}
	uid, err := uidOf(user)
	if err != nil {
		return 0, err
	}
	p = path.Clean(p)
	if p == "/" {
		return 0, fmt.Errorf("%w: /", runtime.ErrIsDir)
	}
	sb.mu.Lock()
	if sb.stopErr != nil {
		defer sb.mu.Unlock()
		return 0, sb.stopErr
	}
	if w, err := sb.st.Tree.resolve(p, true); err == nil && w.n != nil && w.n.Kind == kindDir {
		sb.mu.Unlock()
		return 0, fmt.Errorf("%w: %s", runtime.ErrIsDir, p)
	}
	limit := sb.st.Resources.DiskBytes
	sb.mu.Unlock()
	var data []byte
	buf := make([]byte, 256<<10)
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		n, err := r.Read(buf)
		data = append(data, buf[:n]...)
		if limit > 0 && int64(len(data)) > limit {
			return 0, fmt.Errorf("%w: %s", runtime.ErrNoSpace, p)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("reading upload: %w", err)
		}
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopErr != nil {
		return 0, sb.stopErr
	}
	if err := sb.writeLocked(p, data, mode, false, uid); err != nil {
		return 0, err
	}
	return int64(len(data)), nil
}

// writeLocked puts data at p, making its parents; with follow a final
// link is written through (as a shell's > does), otherwise replaced (as an
// upload's rename does).
func (sb *Sandbox) writeLocked(p string, data []byte, mode uint32, follow bool, uid uint32) error {
	if mode == 0 {
		mode = 0o644
	}
	t := sb.st.Tree
	if follow {
		if w, err := t.resolve(p, true); err == nil && w.dir != nil {
			p = w.abs
		}
	}
	if !mayWrite(t.deepestDir(path.Dir(p)), uid) {
		return fmt.Errorf("%w: %s", runtime.ErrPermission, p)
	}
	dir, dirAbs, err := t.mkdirAll(path.Dir(p), 0o755, uid, func(abs string) { sb.emitLocked("create", abs, true, "") })
	if err != nil {
		return err
	}
	name := path.Base(p)
	old := dir.Children[name]
	if old != nil && old.Kind == kindDir {
		return fmt.Errorf("%w: %s", runtime.ErrIsDir, p)
	}
	var oldSize int64
	if old != nil && old.Kind == kindFile {
		oldSize = int64(len(old.Data))
	}
	if limit := sb.st.Resources.DiskBytes; limit > 0 && t.Used-oldSize+int64(len(data)) > limit {
		return fmt.Errorf("%w: %s", runtime.ErrNoSpace, p)
	}
	now := time.Now().UTC()
	dir.Children[name] = &node{Kind: kindFile, Mode: mode & 0o7777, Data: data, Modified: now, UID: uid}
	dir.Modified = now
	t.Used += int64(len(data)) - oldSize
	ev := "create"
	if old != nil {
		ev = "write"
	}
	sb.emitLocked(ev, path.Join(dirAbs, name), false, "")
	return nil
}

// writeShellFile is a command's `> FILE`.
func (sb *Sandbox) writeShellFile(p string, data []byte, uid uint32) error {
	if err := checkPath(p); err != nil {
		return err
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.writeLocked(path.Clean(p), data, 0o644, true, uid)
}

// readShellFile is a command's cat FILE.
func (sb *Sandbox) readShellFile(p string) ([]byte, error) {
	if err := checkPath(p); err != nil {
		return nil, err
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	w, err := sb.st.Tree.walkFollow(p)
	if err != nil {
		return nil, err
	}
	if w.n.Kind == kindDir {
		return nil, runtime.ErrIsDir
	}
	return w.n.Data, nil
}

// symlink is a command's ln -s.
func (sb *Sandbox) symlink(target, link string, uid uint32) error {
	if err := checkPath(link); err != nil {
		return err
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	w, err := sb.st.Tree.resolve(path.Clean(link), false)
	if err != nil {
		return err
	}
	if w.dir == nil || w.n != nil {
		return fmt.Errorf("%w: %s", runtime.ErrExists, link)
	}
	if !mayWrite(w.dir, uid) {
		return fmt.Errorf("%w: %s", runtime.ErrPermission, link)
	}
	now := time.Now().UTC()
	w.dir.Children[w.name] = &node{Kind: kindLink, Mode: 0o777, Target: target, Modified: now, UID: uid}
	w.dir.Modified = now
	sb.emitLocked("create", w.abs, false, "")
	return nil
}

// List implements runtime.Sandbox.
func (sb *Sandbox) List(ctx context.Context, p string) ([]runtime.FileInfo, error) {
	return sb.ListAs(ctx, "", p)
}

// ListAs implements runtime.UserFiles.
func (sb *Sandbox) ListAs(ctx context.Context, user, p string) ([]runtime.FileInfo, error) {
	if err := checkPath(p); err != nil {
		return nil, err
	}
	uid, err := uidOf(user)
	if err != nil {
		return nil, err
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopErr != nil {
		return nil, sb.stopErr
	}
	w, err := sb.st.Tree.walkFollow(p)
	if err != nil {
		return nil, err
	}
	if w.n.Kind != kindDir {
		return nil, fmt.Errorf("%w: %s", runtime.ErrNotDir, p)
	}
	if !mayRead(w.n, uid) {
		return nil, fmt.Errorf("%w: %s", runtime.ErrPermission, p)
	}
	return list(path.Clean(p), w.n), nil
}

// Stat implements runtime.Sandbox; a final link is not followed.
func (sb *Sandbox) Stat(ctx context.Context, p string) (runtime.FileInfo, error) {
	if err := checkPath(p); err != nil {
		return runtime.FileInfo{}, err
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopErr != nil {
		return runtime.FileInfo{}, sb.stopErr
	}
	w, err := sb.st.Tree.resolve(p, false)
	if err != nil {
		return runtime.FileInfo{}, err
	}
	if w.n == nil {
		return runtime.FileInfo{}, fmt.Errorf("%w: %s", runtime.ErrFileNotFound, p)
	}
	return fileInfo(baseName(p), path.Clean(p), w.n), nil
}

// Remove implements runtime.Sandbox; a link is removed, not its target.
func (sb *Sandbox) Remove(ctx context.Context, p string, recursive bool) error {
	return sb.RemoveAs(ctx, "", p, recursive)
}

// RemoveAs implements runtime.UserFiles.
func (sb *Sandbox) RemoveAs(ctx context.Context, user, p string, recursive bool) error {
	if err := checkPath(p); err != nil {
		return err
	}
	uid, err := uidOf(user)
	if err != nil {
		return err
	}
	p = path.Clean(p)
	if p == "/" {
		return fmt.Errorf("%w: / cannot be removed", runtime.ErrInvalidPath)
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopErr != nil {
		return sb.stopErr
	}
	w, err := sb.st.Tree.resolve(p, false)
	if err != nil {
		return err
	}
	if w.n == nil {
		return fmt.Errorf("%w: %s", runtime.ErrFileNotFound, p)
	}
	if w.n.Kind == kindDir && len(w.n.Children) > 0 && !recursive {
		return fmt.Errorf("%w: %s", runtime.ErrNotEmpty, p)
	}
	sticky := w.dir.Mode&0o1000 != 0 && uid != 0 && w.n.UID != uid && w.dir.UID != uid
	if !mayWrite(w.dir, uid) || sticky || uid != 0 && w.n.Kind == kindDir && !ownsTree(w.n, uid) {
		return fmt.Errorf("%w: %s", runtime.ErrPermission, p)
	}
	delete(w.dir.Children, w.name)
	w.dir.Modified = time.Now().UTC()
	sb.st.Tree.Used -= bytesIn(w.n)
	sb.emitLocked("remove", w.abs, w.n.Kind == kindDir, "")
	return nil
}

// MkdirAll implements runtime.Sandbox.
func (sb *Sandbox) MkdirAll(ctx context.Context, p string, mode uint32) error {
	if err := checkPath(p); err != nil {
		return err
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopErr != nil {
		return sb.stopErr
	}
	_, _, err := sb.st.Tree.mkdirAll(path.Clean(p), mode, 0, func(abs string) { sb.emitLocked("create", abs, true, "") })
	return err
}

// ownsTree says whether uid may remove everything below dir.
func ownsTree(dir *node, uid uint32) bool {
	if !mayWrite(dir, uid) {
		return false
	}
	for _, c := range dir.Children {
		if c.Kind == kindDir && !ownsTree(c, uid) {
			return false
		}
	}
	return true
}
