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
		if err := unpackBlob(p, dest); err != nil {
			return fmt.Errorf("layer %d/%d (%s): %w", i+1, len(img.Layers), d, err)
		}
	}
	return nil
}

// unpackBlob applies one cached layer, gzip, zstd or plain tar by its
// magic bytes.
func unpackBlob(p, dest string) error {
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
	return ApplyLayer(dest, r)
}

// ApplyLayer applies one uncompressed layer tar to dest as the OCI image
// spec says: entries replace what lower layers left, `.wh.NAME` deletes
// NAME, `.wh..wh..opq` empties its directory of lower layers' content.
//
// Every path is resolved inside dest (openat2 with RESOLVE_IN_ROOT), so a
// symlink in the image, absolute or full of "..", can never make a write
// land outside it; the final component is never followed. Entries whose
// own name is absolute or climbs out with ".." are refused, as are hard
// links to such names. Device nodes are skipped: the runtime mounts /dev.
func ApplyLayer(dest string, r io.Reader) error {
	root, err := unix.Open(dest, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dest, err)
	}
	defer unix.Close(root)
	a := applier{root: root, thisLayer: map[string]bool{}}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the layer tar: %w", err)
		}
		if err := a.entry(h, tr); err != nil {
			return fmt.Errorf("entry %q: %w", h.Name, err)
		}
	}
}

type applier struct {
	root      int
	thisLayer map[string]bool // paths this layer created; an opaque marker keeps them
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

func (a *applier) entry(h *tar.Header, body io.Reader) error {
	name, err := cleanName(h.Name)
	if err != nil {
		return err
	}
	if name == "" {
		return nil // the root's own entry: dest keeps its mode
	}
	dir, base := path.Split(name)
	parent, err := a.openDir(strings.TrimSuffix(dir, "/"))
	if err != nil {
		return err
	}
	defer unix.Close(parent)

	if strings.HasPrefix(base, ".wh.") {
		if base == ".wh..wh..opq" {
			return a.opaque(parent, strings.TrimSuffix(dir, "/"))
		}
		victim := strings.TrimPrefix(base, ".wh.")
		if victim == "" || victim == "." || victim == ".." || strings.HasPrefix(victim, ".wh.") {
			return fmt.Errorf("malformed whiteout %q; refused", base)
		}
		return removeAt(parent, victim)
	}
	a.thisLayer[name] = true
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
		return finishFD(fd, h, mode)
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
		return finishFD(int(f.Fd()), h, mode)
	case tar.TypeSymlink:
		if err := removeAt(parent, base); err != nil {
			return err
		}
		if err := unix.Symlinkat(h.Linkname, parent, base); err != nil {
			return err
		}
		return a.finishNoFollow(parent, base, h)
	case tar.TypeLink:
		target, err := cleanName(h.Linkname)
		if err != nil || target == "" {
			return fmt.Errorf("hard link to %q: target outside the root; refused", h.Linkname)
		}
		tdir, tbase := path.Split(target)
		tparent, err := a.openDir(strings.TrimSuffix(tdir, "/"))
		if err != nil {
			return fmt.Errorf("hard link target %q: %w", h.Linkname, err)
		}
		defer unix.Close(tparent)
		if err := removeAt(parent, base); err != nil {
			return err
		}
		// Without AT_SYMLINK_FOLLOW a link to a symlink links the symlink
		// itself, so the target never leaves the root either.
		return unix.Linkat(tparent, tbase, parent, base, 0)
	case tar.TypeFifo:
		if err := removeAt(parent, base); err != nil {
			return err
		}
		if err := unix.Mknodat(parent, base, unix.S_IFIFO|mode, 0); err != nil {
			return err
		}
		return a.finishNoFollow(parent, base, h)
	case tar.TypeChar, tar.TypeBlock:
		return nil
	case tar.TypeXGlobalHeader:
		return nil
	default:
		return fmt.Errorf("unsupported tar entry type %q", h.Typeflag)
	}
}

// openDir opens the directory rel (relative to the root, "" for the root),
// resolving symlinks as if the root were /, and creates what is missing.
func (a *applier) openDir(rel string) (int, error) {
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	if rel == "" {
		rel = "."
	}
	fd, err := unix.Openat2(a.root, rel, how)
	if err == nil || !errors.Is(err, unix.ENOENT) {
		return fd, err
	}
	// Create the missing directories one by one, each inside the root.
	parent, err := unix.Openat2(a.root, ".", how)
	if err != nil {
		return -1, err
	}
	sofar := ""
	for _, c := range strings.Split(rel, "/") {
		sofar = path.Join(sofar, c)
		fd, err := unix.Openat2(a.root, sofar, how)
		if errors.Is(err, unix.ENOENT) {
			if err := unix.Mkdirat(parent, c, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				unix.Close(parent)
				return -1, err
			}
			fd, err = unix.Openat2(a.root, sofar, how)
		}
		unix.Close(parent)
		if err != nil {
			return -1, err
		}
		parent = fd
	}
	return parent, nil
}

// opaque empties dir of everything this layer did not put there.
func (a *applier) opaque(parent int, dir string) error {
	fd, err := unix.Openat(parent, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	d := os.NewFile(uintptr(fd), dir)
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		if !a.thisLayer[path.Join(dir, n)] {
			if err := removeAt(parent, n); err != nil {
				return err
			}
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

// finishFD sets owner, mode (after chown, which clears set-id bits),
// xattrs and times of an open file or directory.
func finishFD(fd int, h *tar.Header, mode uint32) error {
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
	mt := unix.NsecToTimeval(h.ModTime.UnixNano())
	return unix.Futimes(fd, []unix.Timeval{mt, mt})
}

// finishNoFollow sets owner and times of a symlink or fifo without
// following it.
func (a *applier) finishNoFollow(parent int, base string, h *tar.Header) error {
	if err := unix.Fchownat(parent, base, h.Uid, h.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	t := unix.NsecToTimespec(h.ModTime.UnixNano())
	return unix.UtimesNanoAt(parent, base, []unix.Timespec{t, t}, unix.AT_SYMLINK_NOFOLLOW)
}
