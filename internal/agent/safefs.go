package agent

// The guards of the files API. A path comes from the caller and the tree
// under it from code the caller runs, so neither is trusted: recursive work
// walks with openat and never follows a symlink, never leaves the
// filesystem it started on, is bounded in entries, depth and time, and
// stops when the host gives up on the request. The agent's own files (its
// channel at /run/agent, its binary at /agent, its process under /proc)
// are out of reach whatever the spelling, because every check is made on
// the path the kernel resolved (readlink of /proc/self/fd/N), not on the
// caller's text.
//
// Code running in the sandbox is root there and can still do any of this
// itself; the guards keep the files API from doing it by accident (a
// fuzzer's DELETE /proc emptied a whole sandbox through /proc/1/root).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// Bounds of one files request.
const (
	removeMaxEntries  = 1_000_000
	removeMaxDepth    = 512
	removeMaxDuration = 5 * time.Minute
	listMaxEntries    = 100_000
	// listFrameBytes keeps each frame of a listing well under wire.MaxFrame.
	listFrameBytes = 512 << 10
)

// agentBinDir is where the runtime mounts the agent's binary (read-only).
const agentBinDir = "/agent"

// protectedDirs hold the agent's own files.
var protectedDirs = []string{wire.AgentDir, agentBinDir}

// Filesystem magic numbers (statfs f_type) of kernel filesystems: nothing
// in them is a file a caller means to write or delete.
var kernelFS = map[int64]string{
	unix.PROC_SUPER_MAGIC:    "proc",
	unix.SYSFS_MAGIC:         "sysfs",
	unix.CGROUP_SUPER_MAGIC:  "cgroup",
	unix.CGROUP2_SUPER_MAGIC: "cgroup2",
	unix.DEVPTS_SUPER_MAGIC:  "devpts",
}

// fileErr is a refusal with its wire code; its text is the whole message.
type fileErr struct{ code, msg string }

func (e *fileErr) Error() string { return e.msg }

func refuse(code, format string, args ...any) error {
	return &fileErr{code: code, msg: fmt.Sprintf(format, args...)}
}

// pathErr names path in an errno's error, keeping the errno for errCode.
func pathErr(op, path string, err error) error {
	if err == nil {
		return nil
	}
	var fe *fileErr
	if errors.As(err, &fe) {
		return err
	}
	return &os.PathError{Op: op, Path: path, Err: err}
}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	return p == dir || dir == "/" || strings.HasPrefix(p, dir+"/")
}

// fdPath is the path the kernel resolved for fd.
func fdPath(fd int) (string, error) {
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(p, "/") {
		// Not a path in this mount namespace (a pipe, a socket, a
		// file of another root): nothing of ours to protect, but nothing
		// to reason about either.
		return "", fmt.Errorf("unresolvable path %q", p)
	}
	return strings.TrimSuffix(p, " (deleted)"), nil
}

// mount is one line of /proc/self/mountinfo.
type mount struct{ point, fstype string }

// recentMounts is mounts() read at most once a second, for the checks on
// every read, write and stat (a delete reads the table afresh).
func recentMounts() []mount {
	mountCache.Lock()
	defer mountCache.Unlock()
	if time.Since(mountCache.at) > time.Second {
		mountCache.ms, mountCache.at = mounts(), time.Now()
	}
	return mountCache.ms
}

var mountCache struct {
	sync.Mutex
	ms []mount
	at time.Time
}

// mounts lists the sandbox's mount points.
func mounts() []mount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// id parent major:minor root point options [optional...] - fstype source super
		if len(fields) < 7 {
			continue
		}
		m := mount{point: unescapeMount(fields[4])}
		for i := 6; i < len(fields)-1; i++ {
			if fields[i] == "-" {
				m.fstype = fields[i+1]
				break
			}
		}
		out = append(out, m)
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// agentProcess reports whether /proc/<name> is the agent or one of its
// threads.
func agentProcess(name string) bool {
	switch name {
	case "self", "thread-self":
		return true
	}
	n, err := strconv.Atoi(name)
	if err != nil {
		return false
	}
	if n == os.Getpid() {
		return true
	}
	b, err := os.ReadFile("/proc/" + name + "/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Tgid:"); ok {
			tgid, err := strconv.Atoi(strings.TrimSpace(v))
			return err == nil && tgid == os.Getpid()
		}
	}
	return false
}

// checkOwn refuses a resolved path that is the agent's own: its channel,
// its binary or its process.
func checkOwn(resolved string, ms []mount) error {
	for _, d := range protectedDirs {
		if within(resolved, d) {
			return refuse(wire.CodePermission, "%s belongs to the sandbox's agent (its channel to the host and its binary live in %s and %s); the files API does not touch it", resolved, wire.AgentDir, agentBinDir)
		}
	}
	for _, m := range ms {
		if m.fstype != "proc" || !within(resolved, m.point) || resolved == m.point {
			continue
		}
		rest := strings.TrimPrefix(resolved, strings.TrimSuffix(m.point, "/")+"/")
		first, _, _ := strings.Cut(rest, "/")
		if agentProcess(first) {
			return refuse(wire.CodePermission, "%s is the sandbox agent's own process; the files API does not touch it", resolved)
		}
	}
	return nil
}

// checkWritable refuses changes on a kernel filesystem.
func checkWritable(fd int, resolved string) error {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return pathErr("statfs", resolved, err)
	}
	if name, ok := kernelFS[int64(sfs.Type)]; ok {
		return refuse(wire.CodeReadOnly, "%s is on the kernel's %s filesystem, which the files API does not change", resolved, name)
	}
	return nil
}

// resolveExisting opens the deepest existing directory on the way to path
// (following links, as the operation itself will) and returns it with the
// path the kernel resolved for path.
func resolveExisting(path string) (fd int, resolved string, err error) {
	dir, rest := path, ""
	for {
		fd, err = unix.Open(dir, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err == nil {
			break
		}
		if dir == "/" || (err != unix.ENOENT && err != unix.ENOTDIR) {
			return -1, "", pathErr("open", dir, err)
		}
		rest = filepath.Join(filepath.Base(dir), rest)
		dir = filepath.Dir(dir)
	}
	base, err := fdPath(fd)
	if err != nil {
		unix.Close(fd)
		return -1, "", pathErr("resolve", dir, err)
	}
	return fd, filepath.Join(base, rest), nil
}

// guardRead refuses reading or listing the agent's own files.
func guardRead(path string) error {
	fd, resolved, err := resolveExisting(filepath.Clean(path))
	if err != nil {
		return err
	}
	unix.Close(fd)
	return checkOwn(resolved, recentMounts())
}

// guardWrite refuses writing into the agent's own files or onto a kernel
// filesystem.
func guardWrite(path string) error {
	fd, resolved, err := resolveExisting(filepath.Clean(path))
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := checkOwn(resolved, recentMounts()); err != nil {
		return err
	}
	if err := checkWritable(fd, resolved); err != nil {
		return err
	}
	// A device, pipe or socket would be replaced by a regular file
	// (PUT /dev/null): refuse instead. A link is replaced, not followed.
	if fi, err := os.Lstat(path); err == nil {
		if m := fi.Mode(); m&(os.ModeDevice|os.ModeCharDevice|os.ModeNamedPipe|os.ModeSocket) != 0 {
			return refuse(wire.CodeBadRequest, "%s is a %s, not a regular file; the files API does not replace it", path, fileKind(m))
		}
	}
	return nil
}

// guardEntry refuses making, moving or replacing the directory entry path
// when it is one of the agent's own files or on a kernel filesystem. The
// entry itself is not followed (a rename moves a link, not its target):
// its directory is resolved, then its name added.
func guardEntry(path string) error {
	path = filepath.Clean(path)
	fd, dir, err := resolveExisting(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	resolved := filepath.Join(dir, filepath.Base(path))
	if err := checkOwn(resolved, recentMounts()); err != nil {
		return err
	}
	return checkWritable(fd, resolved)
}

func fileKind(m os.FileMode) string {
	switch {
	case m&os.ModeCharDevice != 0:
		return "character device"
	case m&os.ModeDevice != 0:
		return "block device"
	case m&os.ModeNamedPipe != 0:
		return "named pipe"
	default:
		return "socket"
	}
}

// watchCancel returns a context that ends when the host closes the stream
// or sends anything on it: during a remove the host has nothing to say, so
// either means it gave up on the request. The stream must not be reused
// afterwards.
func watchCancel(r *wire.Reader) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, _, _ = r.Next()
		cancel()
	}()
	return ctx, cancel
}

// removeSafely deletes path (a tree when recursive) without following a
// link, crossing a mount or touching the agent's own files.
func removeSafely(ctx context.Context, path string, recursive bool) error {
	if err := CheckPath(path); err != nil {
		return refuse(wire.CodeInvalidPath, "%s", err.Error())
	}
	path = filepath.Clean(path)
	if path == "/" {
		return refuse(wire.CodeInvalidPath, "refusing to remove /")
	}
	pfd, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return pathErr("open", filepath.Dir(path), err)
	}
	defer unix.Close(pfd)
	parent, err := fdPath(pfd)
	if err != nil {
		return pathErr("resolve", filepath.Dir(path), err)
	}
	name := filepath.Base(path)
	resolved := filepath.Join(parent, name)
	if resolved == "/" {
		return refuse(wire.CodeInvalidPath, "refusing to remove / (%s leads there)", path)
	}
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return pathErr("lstat", path, err)
	}
	ms := mounts()
	if err := checkOwn(resolved, ms); err != nil {
		return err
	}
	for _, d := range protectedDirs {
		if within(d, resolved) {
			return refuse(wire.CodePermission, "%s holds the sandbox agent's files (%s); the files API does not delete it", resolved, d)
		}
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	if isDir {
		for _, m := range ms {
			switch {
			case m.point == resolved:
				return refuse(wire.CodeBusy, "%s is a mount point (%s) and cannot be deleted; delete what is in it instead", resolved, m.fstype)
			case within(m.point, resolved):
				return refuse(wire.CodeBusy, "%s contains the mount point %s (%s); nothing was deleted", resolved, m.point, m.fstype)
			}
		}
	}
	if err := checkWritable(pfd, resolved); err != nil {
		return err
	}
	if !isDir {
		return pathErr("remove", path, unix.Unlinkat(pfd, name, 0))
	}
	if recursive {
		wk := &walker{ctx: ctx, deadline: time.Now().Add(removeMaxDuration), dev: st.Dev, mounts: ms}
		if err := wk.emptyDir(pfd, name, resolved, &st, 0); err != nil {
			return err
		}
	}
	return pathErr("remove", path, unix.Unlinkat(pfd, name, unix.AT_REMOVEDIR))
}

// walker empties a directory tree on one filesystem within its bounds.
type walker struct {
	ctx      context.Context
	deadline time.Time
	entries  int
	dev      uint64
	mounts   []mount
}

func (wk *walker) check(path string) error {
	if wk.ctx.Err() != nil {
		return refuse(wire.CodeBadRequest, "the request was cancelled while deleting %s", path)
	}
	if wk.entries > removeMaxEntries {
		return refuse(wire.CodeLimit, "stopped after %d entries at %s; what was deleted is gone, call again to go on", removeMaxEntries, path)
	}
	if time.Now().After(wk.deadline) {
		return refuse(wire.CodeLimit, "stopped after %s at %s; what was deleted is gone, call again to go on", removeMaxDuration, path)
	}
	return nil
}

// emptyDir deletes everything in the directory name of pfd, which st
// describes. The directory is opened without following a link and must
// still be the one st describes.
func (wk *walker) emptyDir(pfd int, name, path string, st *unix.Stat_t, depth int) error {
	if depth >= removeMaxDepth {
		return refuse(wire.CodeLimit, "%s is more than %d directories deep", path, removeMaxDepth)
	}
	fd, err := unix.Openat(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return pathErr("open", path, err)
	}
	defer unix.Close(fd)
	var got unix.Stat_t
	if err := unix.Fstat(fd, &got); err != nil {
		return pathErr("stat", path, err)
	}
	if got.Dev != st.Dev || got.Ino != st.Ino {
		return refuse(wire.CodeBusy, "%s changed while it was being deleted", path)
	}
	buf := make([]byte, 32<<10)
	// Deleting while reading a directory may make the reader skip
	// entries, so read it again until a pass finds nothing left or
	// deletes nothing.
	for {
		if _, err := unix.Seek(fd, 0, 0); err != nil {
			return pathErr("seek", path, err)
		}
		seen, removed := 0, 0
		for {
			n, err := unix.ReadDirent(fd, buf)
			if err != nil {
				return pathErr("readdir", path, err)
			}
			if n <= 0 {
				break
			}
			_, _, names := unix.ParseDirent(buf[:n], -1, nil)
			for _, child := range names {
				seen++
				if err := wk.removeEntry(fd, child, path+"/"+child, depth+1); err != nil {
					return err
				}
				removed++
			}
		}
		if seen == 0 || removed == 0 {
			return nil
		}
	}
}

// removeEntry deletes one entry of the directory dfd, a tree if it is a
// directory on the walker's filesystem.
func (wk *walker) removeEntry(dfd int, name, path string, depth int) error {
	wk.entries++
	if err := wk.check(path); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return pathErr("lstat", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Unlinkat(dfd, name, 0); err != nil && err != unix.ENOENT {
			return pathErr("remove", path, err)
		}
		return nil
	}
	if st.Dev != wk.dev {
		return refuse(wire.CodeBusy, "%s is on another filesystem (a mount point) and was not deleted", path)
	}
	for _, m := range wk.mounts {
		if m.point == path {
			return refuse(wire.CodeBusy, "%s is a mount point (%s) and was not deleted", path, m.fstype)
		}
	}
	for _, d := range protectedDirs {
		if within(d, path) {
			return refuse(wire.CodePermission, "%s holds the sandbox agent's files and was not deleted", path)
		}
	}
	if err := wk.emptyDir(dfd, name, path, &st, depth); err != nil {
		return err
	}
	if err := unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
		return pathErr("remove", path, err)
	}
	return nil
}

// listSafely lists a directory (following the path's own links, not its
// entries') in frames of at most listFrameBytes, refusing the agent's own.
func listSafely(path string, w *wire.Writer) error {
	if err := CheckPath(path); err != nil {
		return refuse(wire.CodeInvalidPath, "%s", err.Error())
	}
	path = filepath.Clean(path)
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return refuse(wire.CodeNotDir, "%s is not a directory", path)
	}
	resolved, err := fdPath(int(f.Fd()))
	if err != nil {
		return pathErr("resolve", path, err)
	}
	if err := checkOwn(resolved, recentMounts()); err != nil {
		return err
	}
	var all []wire.FileInfo
	for {
		ents, err := f.ReadDir(1024)
		for _, e := range ents {
			fi, err := e.Info()
			if err != nil {
				continue // removed while listing
			}
			all = append(all, info(filepath.Join(path, e.Name()), fi))
			if len(all) > listMaxEntries {
				return refuse(wire.CodeLimit, "%s has more than %d entries; list a narrower directory or use exec (ls, find)", path, listMaxEntries)
			}
		}
		if err != nil || len(ents) == 0 {
			break
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	// Frames of a bounded size; every one but the last says more follow.
	start, size := 0, 0
	for i, e := range all {
		size += len(e.Name) + len(e.Path) + 120
		if size >= listFrameBytes && i > start {
			if err := w.JSON(wire.KindJSON, wire.List{Entries: all[start:i], More: true}); err != nil {
				return nil // the host went away
			}
			start, size = i, len(e.Name)+len(e.Path)+120
		}
	}
	_ = w.JSON(wire.KindJSON, wire.List{Entries: append([]wire.FileInfo{}, all[start:]...)})
	return nil
}
