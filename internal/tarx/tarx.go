// Package tarx extracts tar archives (plain, gzip or zstd) into a
// directory without letting any entry reach outside it. The agent uses it
// inside sandboxes for uploaded archives, the CLI on the user's machine
// for archives a sandbox sends back: both treat the archive as hostile.
package tarx

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"github.com/klauspost/compress/zstd"
)

// Codes of an *Error; the agent reports them as its wire error codes.
const (
	CodeInvalid  = "invalid_archive" // a hostile or malformed entry
	CodeTooLarge = "too_large"       // past the limit of bytes or entries
	CodeNoSpace  = "no_space"        // the disk filled up
)

// Error is a refusal of the archive itself.
type Error struct{ Code, Msg string }

func (e *Error) Error() string { return e.Msg }

func refuse(format string, args ...any) error {
	return &Error{Code: CodeInvalid, Msg: fmt.Sprintf(format, args...)}
}

// Result says what Extract created.
type Result struct {
	Entries int
	Bytes   int64
}

// sourceErr remembers the error of the archive's source, so a source that
// failed (an upload cut short) is reported as such, not as a bad archive.
type sourceErr struct {
	r   io.Reader
	err error
}

func (s *sourceErr) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && s.err == nil {
		s.err = err
	}
	return n, err
}

// decompressed detects gzip and zstd by their magic bytes; anything else is
// read as a plain tar.
func decompressed(r io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReaderSize(r, 256<<10)
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, refuse("the archive is not valid gzip: %v", err)
		}
		return zr, func() { zr.Close() }, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		// A bounded window: a hostile frame header cannot make the agent
		// allocate more than this.
		zr, err := zstd.NewReader(br, zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, nil, refuse("the archive is not valid zstd: %v", err)
		}
		return zr, zr.Close, nil
	}
	return br, func() {}, nil
}

// maxEntries bounds the entries of one archive (an inode bomb).
const maxEntries = 1_000_000

// Extract extracts the archive read from src into root. Every entry is
// created through an os.Root beneath root, so no entry, and no symlink an
// entry made, can reach outside it; names that are absolute or climb out
// with ".." are refused outright, and so are device nodes, fifos and
// sockets. Symlinks are created as links, never followed out. limit bounds
// the bytes of file content written (0: no bound). Extraction stops at the
// first refused entry; the entries before it stay. A failure of src itself
// is returned as it is.
func Extract(root *os.Root, src io.Reader, limit int64) (Result, error) {
	return ExtractGuarded(root, src, limit, nil)
}

// ExtractGuarded is Extract with guard asked about every entry's cleaned
// name (relative to root) before it is created; an error from it stops
// the extraction and is returned as it is.
func ExtractGuarded(root *os.Root, src io.Reader, limit int64, guard func(name string) error) (Result, error) {
	var res Result
	se := &sourceErr{r: src}
	res, err := extract(root, se, limit, guard)
	if se.err != nil {
		return res, se.err
	}
	return res, err
}

func extract(root *os.Root, src io.Reader, limit int64, guard func(string) error) (Result, error) {
	var res Result
	zr, closeZ, err := decompressed(src)
	if err != nil {
		return res, err
	}
	defer closeZ()
	tr := tar.NewReader(zr)
	dirs := newDirCache(root)
	defer dirs.close()
	buf := make([]byte, 256<<10)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return res, nil
		}
		if err != nil {
			var ae *Error
			if errors.As(err, &ae) {
				return res, err
			}
			return res, refuse("the archive is not a valid tar (after %d entries): %v", res.Entries, err)
		}
		if res.Entries++; res.Entries > maxEntries {
			return res, &Error{Code: CodeTooLarge, Msg: fmt.Sprintf("the archive has more than %d entries", maxEntries)}
		}
		name, err := entryName(h.Name)
		if err != nil {
			return res, err
		}
		if name == "." {
			continue
		}
		if guard != nil {
			if err := guard(name); err != nil {
				return res, err
			}
		}
		perm := fs.FileMode(h.Mode) & 0o777
		special := fs.FileMode(0)
		if h.Mode&0o4000 != 0 {
			special |= fs.ModeSetuid
		}
		if h.Mode&0o2000 != 0 {
			special |= fs.ModeSetgid
		}
		if h.Mode&0o1000 != 0 {
			special |= fs.ModeSticky
		}
		// Each entry is created in its directory's own os.Root (opened
		// beneath the target's and cached), so creating a file is one
		// openat and nothing resolves outside the target.
		parent, err := dirs.get(path.Dir(name))
		if err != nil {
			return res, entryErr(name, err)
		}
		base := path.Base(name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := parent.Mkdir(base, perm); err != nil && !errors.Is(err, fs.ErrExist) {
				return res, entryErr(name, err)
			}
			if err := parent.Chmod(base, perm|special); err != nil {
				return res, entryErr(name, err)
			}
		case tar.TypeReg, tar.TypeRegA:
			if limit > 0 && res.Bytes+h.Size > limit {
				return res, &Error{Code: CodeTooLarge, Msg: fmt.Sprintf("the archive expands past the limit of %d bytes (at %s)", limit, name)}
			}
			dir := path.Dir(name)
			f, err := createFile(dirs, dir, parent, base, perm)
			if errors.Is(err, fs.ErrExist) {
				replace(parent, base)
				f, err = createFile(dirs, dir, parent, base, perm)
			}
			if err != nil {
				return res, entryErr(name, err)
			}
			n, err := io.CopyBuffer(onlyWriter{f}, io.LimitReader(tr, h.Size), buf)
			res.Bytes += n
			if err == nil && n != h.Size {
				err = refuse("the archive ends inside %s", name)
			}
			// The umask (022) may have cleared bits of perm.
			if err == nil && (perm&0o022 != 0 || special != 0) {
				err = f.chmod(uint32(perm) | uint32(h.Mode&0o7000))
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return res, entryErr(name, err)
			}
		case tar.TypeSymlink:
			if h.Linkname == "" || strings.ContainsRune(h.Linkname, 0) {
				return res, refuse("symlink %s has an empty or invalid target", name)
			}
			replace(parent, base)
			// The target is stored as written; it is resolved by whoever
			// follows the link, inside the sandbox, and never by this
			// extraction (later entries through it stay inside dir).
			if err := parent.Symlink(h.Linkname, base); err != nil {
				return res, entryErr(name, err)
			}
		case tar.TypeLink:
			target, err := entryName(h.Linkname)
			if err != nil {
				return res, err
			}
			replace(root, name)
			if err := root.Link(target, name); err != nil {
				return res, entryErr(name, err)
			}
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			return res, refuse("entry %s is a device node or fifo; archives may hold only files, directories and links", name)
		case tar.TypeXGlobalHeader:
			res.Entries--
		default:
			return res, refuse("entry %s has unsupported type %q", name, h.Typeflag)
		}
	}
}

// entryFile is a regular file being extracted (createFile).
type entryFile interface {
	io.Writer
	chmod(mode uint32) error // permission bits with setuid, setgid, sticky
	Close() error
}

// dirCache holds an os.Root for each directory entries are created in,
// and, once asked for, its descriptor (fd).
type dirCache struct {
	root *os.Root
	m    map[string]*os.Root
	fds  map[string]*os.File
}

// fd returns a descriptor of the directory dir, whose Root is r: opened
// through r, so it is the directory r holds, and kept with the cache.
func (c *dirCache) fd(dir string, r *os.Root) (int, error) {
	if f, ok := c.fds[dir]; ok {
		return int(f.Fd()), nil
	}
	f, err := r.Open(".")
	if err != nil {
		return -1, err
	}
	if c.fds == nil {
		c.fds = map[string]*os.File{}
	}
	c.fds[dir] = f
	return int(f.Fd()), nil
}

// maxCachedDirs bounds the directories held open at once (two descriptors
// each: the Root and, for creating files, the directory itself).
const maxCachedDirs = 128

func newDirCache(root *os.Root) *dirCache {
	return &dirCache{root: root, m: map[string]*os.Root{".": root}}
}

// get returns the Root of directory dir (relative to the target),
// creating it and its parents (0755) as needed.
func (c *dirCache) get(dir string) (*os.Root, error) {
	if r, ok := c.m[dir]; ok {
		return r, nil
	}
	parent, err := c.get(path.Dir(dir))
	if err != nil {
		return nil, err
	}
	base := path.Base(dir)
	r, err := parent.OpenRoot(base)
	if errors.Is(err, fs.ErrNotExist) {
		if err = parent.Mkdir(base, 0o755); err == nil || errors.Is(err, fs.ErrExist) {
			r, err = parent.OpenRoot(base)
		}
	}
	if err != nil {
		return nil, err
	}
	if len(c.m) >= maxCachedDirs {
		c.close()
		c.m = map[string]*os.Root{".": c.root}
		// The parent was closed with the rest: reopen the chain on the
		// next miss; this handle stays valid on its own.
	}
	c.m[dir] = r
	return r, nil
}

func (c *dirCache) close() {
	for k, r := range c.m {
		if k != "." {
			_ = r.Close()
		}
	}
	for _, f := range c.fds {
		_ = f.Close()
	}
	c.fds = nil
}

// onlyWriter hides os.File's ReadFrom, so io.CopyBuffer uses the 256 KiB
// buffer (one write per buffer) instead of small reads of the tar.
type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(p []byte) (int, error) { return o.w.Write(p) }

// replace removes a non-directory already at name, as tar does.
func replace(root *os.Root, name string) {
	if fi, err := root.Lstat(name); err == nil && !fi.IsDir() {
		_ = root.Remove(name)
	}
}

// entryName checks an entry's name and returns it cleaned, relative to the
// target.
func entryName(n string) (string, error) {
	if n == "" || strings.ContainsRune(n, 0) {
		return "", refuse("an entry has an empty or invalid name")
	}
	if strings.HasPrefix(n, "/") {
		return "", refuse("entry %q is absolute; archive entries must be relative to the target directory", n)
	}
	for _, el := range strings.Split(n, "/") {
		if el == ".." {
			return "", refuse("entry %q climbs out of the target directory with '..'", n)
		}
	}
	return path.Clean(n), nil
}

// entryErr reports a failure to create an entry: running out of space as
// such, an escape through a symlink as a refused archive.
func entryErr(name string, err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return &Error{Code: CodeNoSpace, Msg: fmt.Sprintf("no space left in the sandbox while extracting %s", name)}
	}
	if strings.Contains(err.Error(), "escapes") {
		return refuse("entry %s would be created outside the target directory (through a symlink)", name)
	}
	return fmt.Errorf("extracting %s: %w", name, err)
}
