package oci

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// Unpack applies img's cached layers, bottom first, into dest (an existing,
// empty directory).
func Unpack(ctx context.Context, img Image, opt Options, dest string) error {
	for i, d := range img.Layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		p, err := blobPath(opt.CacheDir, d)
		if err != nil {
			return err
		}
		if err := unpackBlob(ctx, p, dest); err != nil {
			return fmt.Errorf("layer %d/%d (%s): %w", i+1, len(img.Layers), d, err)
		}
		if opt.Progress != nil {
			var size int64
			if fi, err := os.Stat(p); err == nil {
				size = fi.Size()
			}
			opt.Progress(Progress{Layer: i + 1, Layers: len(img.Layers), Digest: d, Bytes: size, Total: size, Unpacked: true})
		}
	}
	return nil
}

// unpackBlob applies one cached layer, gzip, zstd or plain tar by its
// magic bytes.
func unpackBlob(ctx context.Context, p, dest string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("layer is not in the cache (pull the image again): %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	magic, _ := br.Peek(4)
	var r io.Reader = br
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		gz, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		defer gz.Close()
		r = gz
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return err
		}
		defer zr.Close()
		r = zr
	}
	return ApplyLayer(ctx, dest, r)
}

// ApplyLayer applies one uncompressed layer tar to dest as the OCI image
// spec's layer format says: entries replace what lower layers left,
// `.wh.NAME` deletes NAME and `.wh..wh..opq` hides everything lower layers
// put in its directory, at any depth. Whiteouts hide only lower layers'
// content, never this layer's own entries, in whatever order the tar has
// them. Directory times are set once the whole layer is in place, since
// writing an entry into a directory changes its mtime.
//
// Every path is resolved inside dest as if dest were / (RESOLVE_IN_ROOT
// semantics): a symlink in a parent path is followed, but an absolute one
// or one full of ".." stays inside dest, and a missing directory it points
// to is created inside dest. The final component is never followed. Entry
// names that are absolute or climb out with "..", and hard links to such
// names, are refused. Device nodes are skipped: the runtime mounts /dev.
//
// ctx is checked between entries and while a file's content is copied.
func ApplyLayer(ctx context.Context, dest string, r io.Reader) error {
	root, err := unix.Open(dest, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dest, err)
	}
	defer unix.Close(root)
	a := applier{root: root, ours: map[string]bool{}, holds: map[string]bool{}}
	tr := tar.NewReader(ctxReader{ctx, r})
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			return a.restoreDirTimes()
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("reading the layer tar: %w", err)
		}
		if err := a.entry(h, tr); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("entry %q: %w", h.Name, err)
		}
	}
}

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	// maxSymlinks bounds the symlinks followed while resolving one path,
	// as the kernel's 40 does.
	maxSymlinks = 40
)

type applier struct {
	root int
	// ours holds the paths (resolved, relative to the root) of this
	// layer's entries; holds their ancestors. Whiteouts spare both.
	ours, holds map[string]bool
	dirs        []dirTimes
}

type dirTimes struct {
	path         string
	atime, mtime time.Time
}

// cleanName checks a tar name and returns it relative to the root ("" for
// the root itself).
func cleanName(n string) (string, error) {
	if strings.HasPrefix(n, "/") {
		return "", errors.New("absolute path in a layer; refused")
	}
	c := path.Clean(n)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", errors.New("path climbs out of the root; refused")
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

// split returns a cleaned name's directory ("" for the root) and base.
func split(name string) (string, string) {
	dir, base := path.Split(name)
	return strings.TrimSuffix(dir, "/"), base
}

// join joins a resolved directory ("" for the root) and a name in it.
func join(dir, base string) string {
	if dir == "" {
		return base
	}
	return dir + "/" + base
}

// mark records p as an entry of this layer.
func (a *applier) mark(p string) {
	a.ours[p] = true
	for d := path.Dir(p); d != "."; d = path.Dir(d) {
		a.holds[d] = true
	}
}

func (a *applier) entry(h *tar.Header, body io.Reader) error {
	name, err := cleanName(h.Name)
	if err != nil {
		return err
	}
	if name == "" {
		return nil // the root's own entry: dest keeps its mode
	}
	dir, base := split(name)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return a.whiteout(dir, base)
	}
	if h.Typeflag == tar.TypeChar || h.Typeflag == tar.TypeBlock || h.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	parent, pdir, err := a.openDir(dir, true)
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	a.mark(join(pdir, base))
	mode := uint32(h.Mode) & 0o7777

	switch h.Typeflag {
	case tar.TypeDir:
		var st unix.Stat_t
		if err := unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err := removeAt(parent, base); err != nil {
				return err
			}
			if err := unix.Mkdirat(parent, base, 0o700); err != nil {
				return err
			}
		}
		fd, err := unix.Openat(parent, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := setAttrs(fd, h, mode); err != nil {
			return err
		}
		a.dirs = append(a.dirs, dirTimes{join(pdir, base), h.AccessTime, h.ModTime})
		return nil
	case tar.TypeReg, tar.TypeRegA:
		if err := removeAt(parent, base); err != nil {
			return err
		}
		fd, err := unix.Openat(parent, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		if _, err := io.Copy(f, body); err != nil {
			return err
		}
		if err := setAttrs(int(f.Fd()), h, mode); err != nil {
			return err
		}
		return setTimes(parent, base, h.AccessTime, h.ModTime)
	case tar.TypeSymlink:
		if err := removeAt(parent, base); err != nil {
			return err
		}
		if err := unix.Symlinkat(h.Linkname, parent, base); err != nil {
			return err
		}
		if err := unix.Fchownat(parent, base, h.Uid, h.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		return setTimes(parent, base, h.AccessTime, h.ModTime)
	case tar.TypeLink:
		return a.hardLink(parent, pdir, base, h.Linkname)
	case tar.TypeFifo:
		if err := removeAt(parent, base); err != nil {
			return err
		}
		if err := unix.Mknodat(parent, base, unix.S_IFIFO|mode, 0); err != nil {
			return err
		}
		if err := unix.Fchownat(parent, base, h.Uid, h.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		// mknod's mode went through the umask, and chown clears set-id
		// bits: set the tar's mode last.
		if err := unix.Fchmodat(parent, base, mode, 0); err != nil {
			return err
		}
		return setTimes(parent, base, h.AccessTime, h.ModTime)
	default:
		return fmt.Errorf("unsupported tar entry type %q", h.Typeflag)
	}
}

// whiteout applies `.wh.NAME` or the opaque marker in dir. Nothing is
// created: a whiteout of something that is not there is a no-op.
func (a *applier) whiteout(dir, base string) error {
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if base != opaqueMarker && (victim == "" || victim == "." || victim == ".." || strings.HasPrefix(victim, whiteoutPrefix)) {
		return fmt.Errorf("malformed whiteout %q; refused", base)
	}
	parent, pdir, err := a.openDir(dir, false)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	if base == opaqueMarker {
		return a.hideLower(parent, pdir)
	}
	p := join(pdir, victim)
	if !a.ours[p] && !a.holds[p] {
		return removeAt(parent, victim)
	}
	// This layer put victim there (or something under it): the whiteout
	// hides only what lower layers have below it.
	return a.hideLowerIn(parent, victim, p)
}

// hideLower removes from the directory dirfd (resolved path dir) all that
// this layer did not put there, at any depth.
func (a *applier) hideLower(dirfd int, dir string) error {
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	d := os.NewFile(uintptr(fd), dir)
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, n := range names {
		p := join(dir, n)
		if !a.ours[p] && !a.holds[p] {
			err = removeAt(fd, n)
		} else {
			err = a.hideLowerIn(fd, n, p)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// hideLowerIn runs hideLower on name in dirfd if it is a directory (not a
// symlink to one).
func (a *applier) hideLowerIn(dirfd int, name, p string) error {
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return a.hideLower(fd, p)
}

// hardLink links parent/base to target, a name in the root that a lower
// layer or an earlier entry of this one must have put there.
func (a *applier) hardLink(parent int, pdir, base, linkname string) error {
	target, err := cleanName(linkname)
	if err != nil || target == "" {
		return fmt.Errorf("hard link to %q: target outside the root; refused", linkname)
	}
	missing := fmt.Errorf("hard link to %q: the target does not exist (the layer is malformed: a link must follow its target)", linkname)
	tdir, tbase := split(target)
	tparent, tpdir, err := a.openDir(tdir, false)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return missing
	}
	if err != nil {
		return fmt.Errorf("hard link target %q: %w", linkname, err)
	}
	defer unix.Close(tparent)
	var st unix.Stat_t
	if err := unix.Fstatat(tparent, tbase, &st, unix.AT_SYMLINK_NOFOLLOW); errors.Is(err, unix.ENOENT) {
		return missing
	} else if err != nil {
		return fmt.Errorf("hard link target %q: %w", linkname, err)
	}
	if join(tpdir, tbase) == join(pdir, base) {
		return fmt.Errorf("hard link to %q is a link to itself; refused", linkname)
	}
	if err := removeAt(parent, base); err != nil {
		return err
	}
	// Without AT_SYMLINK_FOLLOW a link to a symlink links the symlink
	// itself, so the target never leaves the root either.
	return unix.Linkat(tparent, tbase, parent, base, 0)
}

// openDir opens the directory rel (a cleaned name relative to the root, ""
// for the root) as an O_PATH descriptor and returns it with its resolved
// path: symlinks on the way are followed as if the root were /. With
// create, missing directories are made (0755), also where a symlink points
// to one that does not exist yet.
func (a *applier) openDir(rel string, create bool) (int, string, error) {
	fd, err := a.openResolved(rel)
	if err == nil {
		return fd, rel, nil
	}
	if !errors.Is(err, unix.ELOOP) && !errors.Is(err, unix.ENOENT) {
		return -1, "", err
	}
	return a.walk(rel, create)
}

// openResolved opens a path that has no symlinks in it; one that has
// fails with ELOOP.
func (a *applier) openResolved(rel string) (int, error) {
	if rel == "" {
		rel = "."
	}
	return unix.Openat2(a.root, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
}

// walk resolves rel one component at a time, keeping the path resolved so
// far free of symlinks, so that ".." and absolute symlinks end at the
// root and never above it.
func (a *applier) walk(rel string, create bool) (int, string, error) {
	var done []string
	todo := strings.Split(rel, "/")
	cur, err := a.openResolved("")
	if err != nil {
		return -1, "", err
	}
	// reopen moves cur to the resolved path after ".." or an absolute
	// symlink.
	reopen := func() error {
		unix.Close(cur)
		cur, err = a.openResolved(strings.Join(done, "/"))
		return err
	}
	for links := 0; len(todo) > 0; {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(done) > 0 {
				done = done[:len(done)-1]
			}
			if err := reopen(); err != nil {
				return -1, "", err
			}
			continue
		}
		var st unix.Stat_t
		err := unix.Fstatat(cur, c, &st, unix.AT_SYMLINK_NOFOLLOW)
		switch {
		case errors.Is(err, unix.ENOENT) && create:
			if err := unix.Mkdirat(cur, c, 0o755); err != nil {
				unix.Close(cur)
				return -1, "", err
			}
			// Mkdirat's mode went through the umask.
			if err := unix.Fchmodat(cur, c, 0o755, 0); err != nil {
				unix.Close(cur)
				return -1, "", err
			}
		case err != nil:
			unix.Close(cur)
			return -1, "", err
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			if links++; links > maxSymlinks {
				unix.Close(cur)
				return -1, "", fmt.Errorf("resolving %q: more than %d symlinks: %w", rel, maxSymlinks, unix.ELOOP)
			}
			target, err := readlinkAt(cur, c)
			if err != nil {
				unix.Close(cur)
				return -1, "", err
			}
			if strings.HasPrefix(target, "/") {
				done = done[:0]
				if err := reopen(); err != nil {
					return -1, "", err
				}
			}
			todo = append(strings.Split(target, "/"), todo...)
			continue
		case st.Mode&unix.S_IFMT != unix.S_IFDIR:
			unix.Close(cur)
			return -1, "", fmt.Errorf("resolving %q: %s is not a directory: %w", rel, join(strings.Join(done, "/"), c), unix.ENOTDIR)
		}
		next, err := unix.Openat(cur, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(cur)
		if err != nil {
			return -1, "", err
		}
		cur = next
		done = append(done, c)
	}
	return cur, strings.Join(done, "/"), nil
}

func readlinkAt(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// restoreDirTimes sets the times of this layer's directories, which the
// entries written into them have changed.
func (a *applier) restoreDirTimes() error {
	for _, d := range a.dirs {
		dir, base := split(d.path)
		parent, err := a.openResolved(dir)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			continue // removed or replaced later in the layer
		}
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			err = setTimes(parent, base, d.atime, d.mtime)
		}
		unix.Close(parent)
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("times of %s: %w", d.path, err)
		}
	}
	return nil
}

// removeAt removes name in dirfd, a whole tree if it is a directory,
// without following symlinks. A missing name is not an error.
func removeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	d := os.NewFile(uintptr(fd), name)
	names, err := d.Readdirnames(-1)
	if err == nil {
		for _, n := range names {
			if err = removeAt(fd, n); err != nil {
				break
			}
		}
	}
	d.Close()
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// setAttrs sets owner, mode (after chown, which clears set-id bits) and
// xattrs of an open file or directory.
func setAttrs(fd int, h *tar.Header, mode uint32) error {
	if err := unix.Fchown(fd, h.Uid, h.Gid); err != nil {
		return err
	}
	if err := unix.Fchmod(fd, mode); err != nil {
		return err
	}
	for k, v := range h.PAXRecords {
		if attr, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if err := unix.Fsetxattr(fd, attr, []byte(v), 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
				return fmt.Errorf("xattr %s: %w", attr, err)
			}
		}
	}
	return nil
}

// setTimes sets the times of name in dirfd without following it; a
// missing access time is the modification time.
func setTimes(dirfd int, name string, atime, mtime time.Time) error {
	if atime.IsZero() {
		atime = mtime
	}
	// Seconds and nanoseconds, not UnixNano, which overflows outside
	// 1678..2262.
	ts := []unix.Timespec{{Sec: atime.Unix(), Nsec: int64(atime.Nanosecond())}, {Sec: mtime.Unix(), Nsec: int64(mtime.Nanosecond())}}
	return unix.UtimesNanoAt(dirfd, name, ts, unix.AT_SYMLINK_NOFOLLOW)
}
