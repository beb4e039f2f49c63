package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// A watch reads inotify events of a directory (and, recursively, of its
// subdirectories, which it adds as they appear) and sends each as a frame.
// Memory stays bounded whatever happens in the sandbox: events are read
// into one fixed buffer and written to the stream before the next read,
// so a host that reads slowly makes the kernel's queue overflow (an
// "overflow" event) rather than the agent grow; the number of watched
// directories is capped ("limit" event).

// maxWatchDirs bounds the directories one recursive watch follows.
const maxWatchDirs = 8192

// watchMask: what a watch reports.
const watchMask = unix.IN_CREATE | unix.IN_MODIFY | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
	unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR | unix.IN_DONT_FOLLOW | unix.IN_EXCL_UNLINK

// pseudoFS are not walked by a recursive watch of /: their contents are
// the kernel's, not files anyone writes.
var pseudoFS = map[string]bool{"/proc": true, "/sys": true, "/dev": true, "/run/agent": true}

type watcher struct {
	mu        sync.Mutex // guards dirs, stopping, closed and the fd's life
	stopping  bool
	closed    bool
	dropped   atomic.Bool // changes were dropped since the last "overflow" was sent
	fd        int
	root      string
	recursive bool
	dirs      map[int]string // watch descriptor → path relative to root
	limited   bool
}

func (a *Agent) watch(req *wire.Request, r *wire.Reader, w *wire.Writer) {
	if req.FS == nil {
		_ = w.Err(wire.CodeBadRequest, "watch request without fs")
		return
	}
	root := filepath.Clean(req.FS.Path)
	if err := CheckPath(req.FS.Path); err != nil {
		_ = w.Err(wire.CodeInvalidPath, err.Error())
		return
	}
	fi, err := os.Lstat(root)
	if err != nil {
		sendErr(w, err)
		return
	}
	if !fi.IsDir() {
		_ = w.Err(wire.CodeNotDir, root+" is not a directory")
		return
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		_ = w.Err(wire.CodeInternal, fmt.Sprintf("inotify: %v", err))
		return
	}
	hostGone := make(chan struct{})
	go func() {
		defer close(hostGone)
		for {
			if _, _, err := r.Next(); err != nil {
				return
			}
		}
	}()
	wt := &watcher{fd: fd, root: root, recursive: req.FS.Recursive, dirs: map[int]string{}}
	if err := wt.add(""); err != nil {
		unix.Close(fd)
		sendErr(w, err)
		return
	}
	if wt.recursive {
		wt.addTree("", nil)
	}
	q := make(chan wire.WatchEvent, maxQueuedEvents)
	if wt.limited {
		q <- wire.WatchEvent{Type: "limit"}
	}
	dirs := len(wt.dirs) // readInto owns wt.dirs from here on
	go wt.readInto(q)
	defer func() {
		wt.stop()
		for range q { // until readInto has closed the inotify fd
		}
	}()
	go func() {
		<-hostGone
		wt.stop()
	}()
	if w.JSON(wire.KindJSON, wire.WatchStarted{Dirs: dirs}) != nil {
		return
	}
	// The kernel's queue is drained at once into a bounded one of ours
	// (gVisor's inotify queue may not be bounded), which the stream
	// empties at the host's pace; what does not fit is dropped and
	// reported as one "overflow" event.
	for ev := range q {
		if w.JSON(wire.KindJSON, ev) != nil {
			return
		}
		// Changes were dropped while q was full: say so at this point.
		if wt.dropped.Swap(false) && w.JSON(wire.KindJSON, wire.WatchEvent{Type: "overflow"}) != nil {
			return
		}
	}
}

// stop ends readInto: removing every watch queues an IN_IGNORED event for
// each, which wakes its blocked read (closing the fd would not).
func (wt *watcher) stop() {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	if wt.stopping || wt.closed {
		wt.stopping = true
		return
	}
	wt.stopping = true
	for wd := range wt.dirs {
		_, _ = unix.InotifyRmWatch(wt.fd, uint32(wd))
	}
}

// maxQueuedEvents bounds the events a watch holds for a slow reader.
const maxQueuedEvents = 16384

// readInto reads inotify events into q until stop or the watched
// directory goes, then closes the inotify fd and q.
func (wt *watcher) readInto(q chan<- wire.WatchEvent) {
	defer close(q)
	defer func() {
		wt.mu.Lock()
		wt.closed = true
		unix.Close(wt.fd)
		wt.mu.Unlock()
	}()
	buf := make([]byte, 64<<10)
	push := func(ev wire.WatchEvent) {
		select {
		case q <- ev:
		default:
			wt.dropped.Store(true)
		}
	}
	for {
		n, err := unix.Read(wt.fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		wt.mu.Lock()
		if err != nil || wt.stopping || len(wt.dirs) == 0 {
			wt.mu.Unlock()
			return
		}
		moved := map[uint32]int{}
		events, rootGone := wt.parse(buf[:n], nil, moved)
		// The two halves of a move are queued one after the other and
		// a read can fall between them: give the second a moment.
		for len(moved) > 0 && !rootGone && wt.readableWithin(movePairWait) {
			n, err := unix.Read(wt.fd, buf)
			if err != nil || n <= 0 {
				break
			}
			events, rootGone = wt.parse(buf[:n], events, moved)
		}
		wt.finishMoves(events, moved)
		wt.mu.Unlock()
		for _, ev := range events {
			if ev.Type == "overflow" { // the kernel's own queue overflowed
				wt.dropped.Store(true)
				continue
			}
			push(ev)
		}
		if rootGone {
			return // the watched directory itself was removed or moved
		}
	}
}

// add watches the directory at rel (relative to the root).
func (wt *watcher) add(rel string) error {
	if len(wt.dirs) >= maxWatchDirs {
		wt.limited = true
		return nil
	}
	p := filepath.Join(wt.root, rel)
	wd, err := unix.InotifyAddWatch(wt.fd, p, watchMask)
	if err != nil {
		return &os.PathError{Op: "watch", Path: p, Err: err}
	}
	wt.dirs[wd] = rel
	return nil
}

// addTree adds every directory below rel, skipping pseudo filesystems.
// With found set, it is told of every entry below rel: for a directory
// that was just made, what appeared in it before its watch held.
func (wt *watcher) addTree(rel string, found func(wire.WatchEvent)) {
	_ = filepath.WalkDir(filepath.Join(wt.root, rel), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil // vanished or unreadable: skip it
		}
		if p == filepath.Join(wt.root, rel) {
			return nil
		}
		r, _ := filepath.Rel(wt.root, p)
		if found != nil {
			found(wire.WatchEvent{Type: "create", Path: r, IsDir: d.IsDir()})
		}
		if !d.IsDir() {
			return nil
		}
		if pseudoFS[p] {
			return filepath.SkipDir
		}
		if wt.add(r) != nil || wt.limited {
			return filepath.SkipDir
		}
		return nil
	})
}

// parse turns a buffer of inotify records into events. A move within the
// watched tree is one rename (its two halves share a cookie and arrive
// together); a move out of it is a rename without a new path, a move in a
// create.
//
// events and moved (cookie → index in events of a rename still waiting for
// its second half) carry over from the previous buffer of the same batch.
func (wt *watcher) parse(b []byte, events []wire.WatchEvent, moved map[uint32]int) (_ []wire.WatchEvent, rootGone bool) {
	for len(b) >= unix.SizeofInotifyEvent {
		raw := (*unix.InotifyEvent)(unsafe.Pointer(&b[0]))
		size := unix.SizeofInotifyEvent + int(raw.Len)
		if size > len(b) {
			break
		}
		name := strings.TrimRight(string(b[unix.SizeofInotifyEvent:size]), "\x00")
		b = b[size:]
		mask, wd, cookie := raw.Mask, int(raw.Wd), raw.Cookie
		if mask&unix.IN_Q_OVERFLOW != 0 {
			events = append(events, wire.WatchEvent{Type: "overflow"})
			continue
		}
		dir, ok := wt.dirs[wd]
		if !ok {
			continue
		}
		if mask&unix.IN_IGNORED != 0 {
			delete(wt.dirs, wd)
			continue
		}
		if mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
			if dir == "" {
				events = append(events, wire.WatchEvent{Type: "remove", Path: "", IsDir: true})
				return events, true
			}
			continue // reported by its parent's watch
		}
		rel := name
		if dir != "" {
			rel = dir + "/" + name
		}
		isDir := mask&unix.IN_ISDIR != 0
		ev := wire.WatchEvent{Path: rel, IsDir: isDir}
		// Whatever was made in a new directory before its watch held is
		// reported as created (it may come twice: found, then its event).
		found := func(e wire.WatchEvent) { events = append(events, e) }
		switch {
		case mask&unix.IN_CREATE != 0:
			ev.Type = "create"
			if isDir && wt.recursive {
				events = append(events, ev)
				_ = wt.add(rel)
				wt.addTree(rel, found)
				continue
			}
		case mask&unix.IN_MODIFY != 0:
			ev.Type = "write"
			// One write event per file per read is enough.
			if n := len(events); n > 0 && events[n-1].Type == "write" && events[n-1].Path == rel {
				continue
			}
		case mask&unix.IN_DELETE != 0:
			ev.Type = "remove"
		case mask&unix.IN_ATTRIB != 0:
			ev.Type = "chmod"
		case mask&unix.IN_MOVED_FROM != 0:
			ev = wire.WatchEvent{Type: "rename", From: rel, IsDir: isDir}
			moved[cookie] = len(events)
		case mask&unix.IN_MOVED_TO != 0:
			if i, ok := moved[cookie]; ok {
				events[i].Path = rel
				delete(moved, cookie)
				if isDir {
					wt.renameDirs(events[i].From, rel)
				}
				continue
			}
			ev.Type = "create" // moved in from outside the watch
			if isDir && wt.recursive {
				events = append(events, ev)
				_ = wt.add(rel)
				wt.addTree(rel, found)
				continue
			}
		default:
			continue
		}
		events = append(events, ev)
	}
	return events, false
}

// movePairWait is how long a move's first half waits for its second.
const movePairWait = 10 * time.Millisecond

// readableWithin reports whether the inotify fd has events within d.
func (wt *watcher) readableWithin(d time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(wt.fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int(d/time.Millisecond))
	return err == nil && n > 0 && fds[0].Revents&unix.POLLIN != 0
}

// finishMoves ends a batch: moves whose second half never came went out of
// the tree, and directories moved out are no longer watched.
func (wt *watcher) finishMoves(events []wire.WatchEvent, moved map[uint32]int) {
	for _, i := range moved {
		if events[i].IsDir {
			wt.forgetDirs(events[i].From)
		}
	}
}

// renameDirs updates the watched directories at and below from, which
// keep their watches across a rename, to their new paths.
func (wt *watcher) renameDirs(from, to string) {
	for wd, d := range wt.dirs {
		if d == from || strings.HasPrefix(d, from+"/") {
			wt.dirs[wd] = to + strings.TrimPrefix(d, from)
		}
	}
}

// forgetDirs stops watching the directories at and below rel.
func (wt *watcher) forgetDirs(rel string) {
	for wd, d := range wt.dirs {
		if d == rel || strings.HasPrefix(d, rel+"/") {
			_, _ = unix.InotifyRmWatch(wt.fd, uint32(wd))
			delete(wt.dirs, wd)
		}
	}
}
