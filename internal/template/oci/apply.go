package oci

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh." // aufs bookkeeping; only the opaque marker means anything
	opaqueMarker   = ".wh..wh..opq"
)

// ApplyLayer applies one uncompressed layer tar to dest as the OCI image
// spec says: entries replace what lower layers left (a file may replace a
// directory and the other way round; an existing directory is kept and
// gets the entry's attributes), `.wh.NAME` deletes NAME, and
// `.wh..wh..opq` empties its directory of everything the layer itself does
// not put there.
//
// Nothing is ever written outside dest. Entries whose name is absolute or
// climbs out with ".." are refused, as are hard links to such names. Every
// other path is resolved inside dest as if dest were "/" (like Docker): a
// symlink in the image, however it points, can only lead to somewhere in
// dest, and the entry's own name is never followed. Device nodes are
// skipped: the runtime mounts /dev.
func ApplyLayer(dest string, r io.Reader) error {
	root, err := unix.Open(dest, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", dest, err)
	}
	defer unix.Close(root)
	a := &applier{root: root, seen: map[string]bool{}, buf: make([]byte, 128<<10)}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return a.setDirTimes()
		}
		if err != nil {
			return fmt.Errorf("reading the layer: %w", err)
		}
		if err := a.apply(h, tr); err != nil {
			return fmt.Errorf("layer entry %q: %w", h.Name, err)
		}
	}
}

// applier applies one layer.
type applier struct {
	root int // dest, O_PATH
	// seen holds every path this layer has put in place and their parents:
	// an opaque marker keeps them.
	seen map[string]bool
	// dirs are the layer's directories, whose times are set last: adding
	// entries to a directory changes its mtime.
	dirs []*tar.Header
	buf  []byte // copy buffer shared by all files
}

func (a *applier) apply(h *tar.Header, body io.Reader) error {
	switch h.Typeflag {
	case tar.TypeChar, tar.TypeBlock, tar.TypeXGlobalHeader:
		return nil // the runtime mounts /dev; a global header is no file
	}
	name, err := cleanName(h.Name)
	if err != nil || name == "" {
		return err // "" is dest itself, which keeps its own attributes
	}
	dir, base := splitPath(name)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return a.whiteout(dir, base)
	}
	parent, err := a.mkdirAll(dir)
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	a.markSeen(name)
	switch h.Typeflag {
	case tar.TypeDir:
		return a.dir(parent, base, h)
	case tar.TypeReg, tar.TypeGNUSparse:
		return a.file(parent, base, h, body)
	case tar.TypeSymlink:
		return symlink(parent, base, h)
	case tar.TypeLink:
		return a.hardlink(parent, name, base, h)
	case tar.TypeFifo:
		return fifo(parent, base, h)
	}
	return fmt.Errorf("unsupported tar entry type %q", h.Typeflag)
}

// cleanName checks an entry's name and returns it relative to the root
// ("" for the root itself). Absolute and climbing names are refused rather
// than rewritten: no honest image builder writes them.
func cleanName(n string) (string, error) {
	if path.IsAbs(n) {
		return "", errors.New("absolute path in a layer; refused")
	}
	c := path.Clean(n)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", errors.New(`path climbs out of the root with ".."; refused`)
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

// splitPath splits a clean relative name into its directory ("" for the
// root) and last component.
func splitPath(name string) (dir, base string) {
	dir, base = path.Split(name)
	return strings.TrimSuffix(dir, "/"), base
}

func (a *applier) markSeen(name string) {
	for p := name; p != "." && !a.seen[p]; p = path.Dir(p) {
		a.seen[p] = true
	}
}

// whiteout applies `.wh.NAME` or the opaque marker found in directory dir.
func (a *applier) whiteout(dir, base string) error {
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if victim == "" || victim == "." || victim == ".." {
		return errors.New("malformed whiteout; refused")
	}
	if strings.HasPrefix(base, whiteoutMeta) && base != opaqueMarker {
		return nil
	}
	parent, err := a.openDir(dir)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil // nothing below to hide
	}
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	if base == opaqueMarker {
		return a.removeUnseen(parent, dir)
	}
	return removeAt(parent, victim)
}

// removeUnseen empties the directory open as fd, named dir, of everything
// this layer has not put there, at any depth: an opaque directory shows its
// own layer's entries only.
func (a *applier) removeUnseen(fd int, dir string) error {
	names, err := readDirNames(fd)
	if err != nil {
		return err
	}
	for _, n := range names {
		p := path.Join(dir, n)
		if !a.seen[p] {
			if err := removeAt(fd, n); err != nil {
				return err
			}
			continue
		}
		sub, err := unix.Openat(fd, n, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			continue // a file or symlink of this layer
		}
		if err != nil {
			return err
		}
		err = a.removeUnseen(sub, p)
		unix.Close(sub)
		if err != nil {
			return err
		}
	}
	return nil
}

// dir makes base a directory, keeping one that is there already.
func (a *applier) dir(parent int, base string, h *tar.Header) error {
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
	a.dirs = append(a.dirs, h)
	return setAttrs(fd, h)
}

func (a *applier) file(parent int, base string, h *tar.Header, body io.Reader) error {
	if err := removeAt(parent, base); err != nil {
		return err
	}
	fd, err := unix.Openat(parent, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), base)
	defer f.Close()
	// Hiding os.File's ReadFrom makes CopyBuffer use a.buf instead of
	// allocating a buffer per file.
	if _, err := io.CopyBuffer(struct{ io.Writer }{f}, body, a.buf); err != nil {
		return err
	}
	if err := setAttrs(fd, h); err != nil {
		return err
	}
	if err := setTimesAt(parent, base, h); err != nil {
		return err
	}
	return f.Close()
}

// symlink creates base pointing verbatim at the entry's target: it is only
// ever resolved inside a root (by this package, or in the sandbox).
func symlink(parent int, base string, h *tar.Header) error {
	if err := removeAt(parent, base); err != nil {
		return err
	}
	if err := unix.Symlinkat(h.Linkname, parent, base); err != nil {
		return err
	}
	if err := lchownAt(parent, base, h); err != nil {
		return err
	}
	return setTimesAt(parent, base, h)
}

// hardlink links base to an earlier entry (of this layer or a lower one).
func (a *applier) hardlink(parent int, name, base string, h *tar.Header) error {
	target, err := cleanName(h.Linkname)
	if err == nil && target == "" {
		err = errors.New("the root itself")
	}
	if err != nil {
		return fmt.Errorf("hard link to %q: %w", h.Linkname, err)
	}
	if target == name {
		return nil
	}
	tdir, tbase := splitPath(target)
	tparent, err := a.openDir(tdir)
	if err != nil {
		return fmt.Errorf("hard link to %q: %w", h.Linkname, err)
	}
	defer unix.Close(tparent)
	if err := removeAt(parent, base); err != nil {
		return err
	}
	// Without AT_SYMLINK_FOLLOW, a link to a symlink links the symlink
	// itself: the target is never resolved beyond tparent, which is inside
	// the root.
	if err := unix.Linkat(tparent, tbase, parent, base, 0); err != nil {
		return fmt.Errorf("hard link to %q: %w", h.Linkname, err)
	}
	return nil
}

func fifo(parent int, base string, h *tar.Header) error {
	if err := removeAt(parent, base); err != nil {
		return err
	}
	if err := unix.Mknodat(parent, base, unix.S_IFIFO|0o600, 0); err != nil {
		return err
	}
	if err := lchownAt(parent, base, h); err != nil {
		return err
	}
	// Fchmodat follows symlinks, but base is the fifo just made. The mode
	// is set here because mknod's is cut by the umask.
	if err := unix.Fchmodat(parent, base, uint32(h.Mode)&0o7777, 0); err != nil {
		return err
	}
	return setTimesAt(parent, base, h)
}

// setAttrs sets owner, mode and xattrs of an open file or directory. The
// mode comes after the owner because chown clears set-id bits, and so do
// xattrs: chown drops security.capability.
func setAttrs(fd int, h *tar.Header) error {
	if err := unix.Fchown(fd, h.Uid, h.Gid); err != nil && !unprivileged(err) {
		return fmt.Errorf("chown %d:%d: %w", h.Uid, h.Gid, err)
	}
	if err := unix.Fchmod(fd, uint32(h.Mode)&0o7777); err != nil {
		return err
	}
	for k, v := range h.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if err := unix.Fsetxattr(fd, attr, []byte(v), 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
			return fmt.Errorf("xattr %s: %w", attr, err)
		}
	}
	return nil
}

// lchownAt sets the owner of a symlink or fifo without following it.
func lchownAt(parent int, base string, h *tar.Header) error {
	err := unix.Fchownat(parent, base, h.Uid, h.Gid, unix.AT_SYMLINK_NOFOLLOW)
	if err != nil && !unprivileged(err) {
		return fmt.Errorf("chown %d:%d: %w", h.Uid, h.Gid, err)
	}
	return nil
}

// unprivileged reports a chown that failed only because this process may
// not give files away (tests as a normal user); as root every chown counts.
func unprivileged(err error) bool {
	return errors.Is(err, unix.EPERM) && os.Geteuid() != 0
}

func setTimesAt(parent int, base string, h *tar.Header) error {
	atime := h.AccessTime
	if atime.Before(h.ModTime) {
		atime = h.ModTime
	}
	ts := []unix.Timespec{timespec(atime), timespec(h.ModTime)}
	return unix.UtimesNanoAt(parent, base, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// timespec avoids UnixNano, which overflows outside 1678..2262.
func timespec(t time.Time) unix.Timespec {
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}

// setDirTimes sets the times of the layer's directories once nothing more
// is added to them; a directory that a later entry removed or replaced is
// skipped.
func (a *applier) setDirTimes() error {
	for _, h := range a.dirs {
		name, _ := cleanName(h.Name)
		dir, base := splitPath(name)
		parent, err := a.openDir(dir)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			err = setTimesAt(parent, base, h)
		}
		unix.Close(parent)
		if err != nil {
			return fmt.Errorf("layer entry %q: %w", h.Name, err)
		}
	}
	return nil
}
