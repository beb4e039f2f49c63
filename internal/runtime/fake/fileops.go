package fake

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// StatPath implements runtime.FileOps.
func (sb *Sandbox) StatPath(ctx context.Context, r runtime.FSRequest) (runtime.Stat, error) {
	st, err := sb.Exists(ctx, r)
	if err == nil && !st.Exists {
		return runtime.Stat{}, fmt.Errorf("%w: %s", runtime.ErrFileNotFound, r.Path)
	}
	return st, err
}

// Exists implements runtime.FileOps.
func (sb *Sandbox) Exists(ctx context.Context, r runtime.FSRequest) (runtime.Stat, error) {
	if err := checkPath(r.Path); err != nil {
		return runtime.Stat{}, err
	}
	p := path.Clean(r.Path)
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopErr != nil {
		return runtime.Stat{}, sb.stopErr
	}
	w, err := sb.st.Tree.resolve(p, false)
	if err != nil {
		if errors.Is(err, runtime.ErrFileNotFound) {
			return runtime.Stat{Exists: false, Path: p, Name: baseName(p)}, nil
		}
		return runtime.Stat{}, err
	}
	if w.n == nil {
		return runtime.Stat{Exists: false, Path: p, Name: baseName(p)}, nil
	}
	return statOf(baseName(p), p, w.n), nil
}

// Mkdir implements runtime.FileOps.
func (sb *Sandbox) Mkdir(ctx context.Context, r runtime.FSRequest) (runtime.Stat, error) {
	if err := checkPath(r.Path); err != nil {
		return runtime.Stat{}, err
	}
	p := path.Clean(r.Path)
	mode := r.Mode
	if mode == 0 {
		mode = 0o755
	}
	uid, err := uidOf(r.User)
	if err != nil {
		return runtime.Stat{}, err
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopErr != nil {
		return runtime.Stat{}, sb.stopErr
	}
	t := sb.st.Tree
	w, err := t.resolve(p, false)
	if err != nil && !r.Parents {
		return runtime.Stat{}, err
	}
	if err == nil && w.n != nil {
		return runtime.Stat{}, fmt.Errorf("%w: %s", runtime.ErrExists, p)
	}
	if r.Parents {
		if !mayWrite(t.deepestDir(path.Dir(p)), uid) {
			return runtime.Stat{}, fmt.Errorf("%w: %s", runtime.ErrPermission, p)
		}
		if _, _, err := t.mkdirAll(path.Dir(p), mode, uid, func(abs string) { sb.emitLocked("create", abs, true, "") }); err != nil {
			return runtime.Stat{}, err
		}
		if w, err = t.resolve(p, false); err != nil {
			return runtime.Stat{}, err
		}
		if w.n != nil {
			return runtime.Stat{}, fmt.Errorf("%w: %s", runtime.ErrExists, p)
		}
	}
	if w.dir == nil {
		return runtime.Stat{}, fmt.Errorf("%w: %s", runtime.ErrExists, p)
	}
	if !mayWrite(w.dir, uid) {
		return runtime.Stat{}, fmt.Errorf("%w: %s", runtime.ErrPermission, p)
	}
	n := newDir(mode)
	n.UID = uid
	w.dir.Children[w.name] = n
	w.dir.Modified = n.Modified
	sb.emitLocked("create", w.abs, true, "")
	return statOf(w.name, p, n), nil
}

// Rename implements runtime.FileOps.
func (sb *Sandbox) Rename(ctx context.Context, r runtime.FSRequest) (runtime.Stat, error) {
	if err := checkPath(r.Path); err != nil {
		return runtime.Stat{}, err
	}
	if err := checkPath(r.Dest); err != nil {
		return runtime.Stat{}, err
	}
	src, dst := path.Clean(r.Path), path.Clean(r.Dest)
	if src == "/" || dst == "/" {
		return runtime.Stat{}, fmt.Errorf("%w: / cannot be renamed", runtime.ErrInvalidPath)
	}
	if strings.HasPrefix(dst, src+"/") {
		return runtime.Stat{}, fmt.Errorf("%w: %s cannot move into itself", runtime.ErrInvalidPath, src)
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopErr != nil {
		return runtime.Stat{}, sb.stopErr
	}
	t := sb.st.Tree
	from, err := t.resolve(src, false)
	if err != nil {
		return runtime.Stat{}, err
	}
	if from.n == nil {
		return runtime.Stat{}, fmt.Errorf("%w: %s", runtime.ErrFileNotFound, src)
	}
	to, err := t.resolve(dst, false)
	if err != nil {
		return runtime.Stat{}, err
	}
	if to.dir == nil {
		return runtime.Stat{}, fmt.Errorf("%w: %s", runtime.ErrInvalidPath, dst)
	}
	if to.n != nil {
		switch {
		case !r.Overwrite:
			return runtime.Stat{}, fmt.Errorf("%w: %s", runtime.ErrExists, dst)
		case to.n.Kind == kindDir && from.n.Kind != kindDir:
			return runtime.Stat{}, fmt.Errorf("%w: %s", runtime.ErrIsDir, dst)
		case to.n.Kind == kindDir && len(to.n.Children) > 0:
			return runtime.Stat{}, fmt.Errorf("%w: %s", runtime.ErrNotEmpty, dst)
		case to.n.Kind != kindDir && from.n.Kind == kindDir:
			return runtime.Stat{}, fmt.Errorf("%w: %s", runtime.ErrNotDir, dst)
		}
		t.Used -= bytesIn(to.n)
	}
	delete(from.dir.Children, from.name)
	to.dir.Children[to.name] = from.n
	now := time.Now().UTC()
	from.dir.Modified, to.dir.Modified = now, now
	sb.emitLocked("rename", to.abs, from.n.Kind == kindDir, from.abs)
	return statOf(to.name, dst, from.n), nil
}

// watcher is one Watch: events under root arrive on ch.
type watcher struct {
	root      string
	recursive bool
	ch        chan runtime.WatchEvent
	gone      chan struct{} // closed when root is removed
	overflow  bool
}

// emitLocked tells the watchers of a change at abs (a resolved path).
func (sb *Sandbox) emitLocked(typ, abs string, isDir bool, from string) {
	for w := range sb.watchers {
		if typ == "remove" && (abs == w.root || strings.HasPrefix(w.root, abs+"/")) {
			select {
			case <-w.gone:
			default:
				close(w.gone)
			}
			continue
		}
		rel, ok := w.rel(abs)
		relFrom, okFrom := w.rel(from)
		if !ok && !(typ == "rename" && okFrom) {
			continue
		}
		ev := runtime.WatchEvent{Type: typ, Path: rel, IsDir: isDir}
		if typ == "rename" {
			ev.From = relFrom
		}
		select {
		case w.ch <- ev:
		default:
			if !w.overflow {
				w.overflow = true
				select {
				case w.ch <- runtime.WatchEvent{Type: "overflow"}:
				default:
				}
			}
		}
	}
}

// rel is abs relative to the watched directory, if the watch covers it.
func (w *watcher) rel(abs string) (string, bool) {
	if abs == "" {
		return "", false
	}
	prefix := w.root + "/"
	if w.root == "/" {
		prefix = "/"
	}
	if !strings.HasPrefix(abs, prefix) {
		return "", false
	}
	rel := abs[len(prefix):]
	if !w.recursive && strings.Contains(rel, "/") {
		return "", false
	}
	return rel, true
}

// Watch implements runtime.FileOps.
func (sb *Sandbox) Watch(ctx context.Context, r runtime.FSRequest, started func(dirs int), onEvent func(runtime.WatchEvent) error) error {
	if err := checkPath(r.Path); err != nil {
		return err
	}
	sb.mu.Lock()
	if sb.stopErr != nil {
		defer sb.mu.Unlock()
		return sb.stopErr
	}
	wh, err := sb.st.Tree.walkFollow(r.Path)
	if err != nil {
		sb.mu.Unlock()
		return err
	}
	if wh.n.Kind != kindDir {
		sb.mu.Unlock()
		return fmt.Errorf("%w: %s", runtime.ErrNotDir, r.Path)
	}
	w := &watcher{root: wh.abs, recursive: r.Recursive, ch: make(chan runtime.WatchEvent, 4096), gone: make(chan struct{})}
	sb.watchers[w] = struct{}{}
	dirs := 1
	if r.Recursive {
		dirs = countDirs(wh.n)
	}
	sb.mu.Unlock()
	defer func() {
		sb.mu.Lock()
		delete(sb.watchers, w)
		sb.mu.Unlock()
	}()
	if started != nil {
		started(dirs)
	}
	for {
		select {
		case ev := <-w.ch:
			if err := onEvent(ev); err != nil {
				return err
			}
		case <-w.gone:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-sb.long.Done():
			return runtime.ErrDetached
		}
	}
}

func countDirs(n *node) int {
	c := 1
	for _, ch := range n.Children {
		if ch.Kind == kindDir {
			c += countDirs(ch)
		}
	}
	return c
}
