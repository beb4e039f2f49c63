package agent

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
	"path/filepath"
	"strings"
	"syscall"

	"github.com/klauspost/compress/zstd"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// archiveError is a refusal of the archive itself (a hostile or malformed
// entry, or an archive larger than allowed), reported with its own code.
type archiveError struct{ code, msg string }

func (e *archiveError) Error() string { return e.msg }

func refuse(format string, args ...any) error {
	return &archiveError{code: wire.CodeInvalidArchive, msg: fmt.Sprintf(format, args...)}
}

// frameSource reads the data frames of an upload as one byte stream.
type frameSource struct {
	r   *wire.Reader
	buf []byte
	eof bool
}

// errHostGone means the host ended the upload without its end frame.
var errHostGone = errors.New("the host went away during the upload")

func (f *frameSource) Read(p []byte) (int, error) {
	for len(f.buf) == 0 {
		if f.eof {
			return 0, io.EOF
		}
		k, b, err := f.r.Next()
		if err != nil {
			return 0, errHostGone
		}
		switch k {
		case wire.KindData:
			f.buf = b
		case wire.KindEOF:
			f.eof = true
		default:
			return 0, refuse("unexpected frame %q in an archive upload", k)
		}
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	return n, nil
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

// untar extracts a tar stream (plain, gzip or zstd) from the host into dir,
// creating dir. Every entry is created through an os.Root of dir, so no
// entry, and no symlink an entry made, can reach outside it; names that are
// absolute or climb out with ".." are refused outright, and so are device
// nodes, fifos and sockets. Symlinks are created as links, never followed
// out. limit bounds the bytes of file content written (0: no bound).
// Extraction stops at the first refused entry; the entries before it stay.
func untar(req *wire.Request, r *wire.Reader, w *wire.Writer) {
	dir := req.Path
	if err := CheckPath(dir); err != nil {
		_ = w.Err(wire.CodeInvalidPath, err.Error())
		return
	}
	dir = filepath.Clean(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		sendErr(w, err)
		return
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		sendErr(w, err)
		return
	}
	defer root.Close()
	if err := w.JSON(wire.KindJSON, struct{}{}); err != nil {
		return
	}
	src := &frameSource{r: r}
	res, err := extract(root, src, req.Limit)
	if err != nil {
		if errors.Is(err, errHostGone) {
			return
		}
		var ae *archiveError
		if errors.As(err, &ae) {
			_ = w.Err(ae.code, ae.msg)
			return
		}
		sendErr(w, err)
		return
	}
	// Drain what follows the archive's end (tar pads with zero blocks).
	if _, err := io.Copy(io.Discard, src); err != nil {
		return
	}
	_ = w.JSON(wire.KindJSON, res)
}

// maxEntries bounds the entries of one archive (an inode bomb).
const maxEntries = 1_000_000

func extract(root *os.Root, src io.Reader, limit int64) (wire.Extracted, error) {
	var res wire.Extracted
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
			if errors.Is(err, errHostGone) {
				return res, err
			}
			var ae *archiveError
			if errors.As(err, &ae) {
				return res, err
			}
			return res, refuse("the archive is not a valid tar (after %d entries): %v", res.Entries, err)
		}
		if res.Entries++; res.Entries > maxEntries {
			return res, &archiveError{code: wire.CodeTooLarge, msg: fmt.Sprintf("the archive has more than %d entries", maxEntries)}
		}
		name, err := entryName(h.Name)
		if err != nil {
			return res, err
		}
		if name == "." {
			continue
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
				return res, &archiveError{code: wire.CodeTooLarge, msg: fmt.Sprintf("the archive expands past the limit of %d bytes (at %s)", limit, name)}
			}
			f, err := parent.OpenFile(base, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
			if errors.Is(err, fs.ErrExist) {
				replace(parent, base)
				f, err = parent.OpenFile(base, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
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
				err = f.Chmod(perm | special)
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

// dirCache holds an os.Root for each directory entries are created in.
type dirCache struct {
	root *os.Root
	m    map[string]*os.Root
}

// maxCachedDirs bounds the directory handles held open at once.
const maxCachedDirs = 256

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
	if errCode(err) == wire.CodeNoSpace {
		return &archiveError{code: wire.CodeNoSpace, msg: fmt.Sprintf("no space left in the sandbox while extracting %s", name)}
	}
	if strings.Contains(err.Error(), "escapes") {
		return refuse("entry %s would be created outside the target directory (through a symlink)", name)
	}
	return fmt.Errorf("extracting %s: %w", name, err)
}

// tarDir streams dir as a tar (compression "", "gzip" or "zstd") in data
// frames. Symlinks are archived as links and never followed; device nodes,
// fifos and sockets are skipped.
func tarDir(req *wire.Request, w *wire.Writer) {
	dir := req.Path
	if err := CheckPath(dir); err != nil {
		_ = w.Err(wire.CodeInvalidPath, err.Error())
		return
	}
	dir = filepath.Clean(dir)
	fi, err := os.Stat(dir)
	if err != nil {
		sendErr(w, err)
		return
	}
	if !fi.IsDir() {
		_ = w.Err(wire.CodeNotDir, dir+" is not a directory")
		return
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		sendErr(w, err)
		return
	}
	defer root.Close()
	if err := w.JSON(wire.KindJSON, struct{}{}); err != nil {
		return
	}
	fw := bufio.NewWriterSize(frameSink{w}, wire.ChunkSize)
	var out io.Writer = fw
	var closeZ func() error = func() error { return nil }
	switch req.Compression {
	case "gzip":
		zw, _ := gzip.NewWriterLevel(fw, gzip.BestSpeed)
		out, closeZ = zw, zw.Close
	case "zstd":
		zw, _ := zstd.NewWriter(fw, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		out, closeZ = zw, zw.Close
	}
	tw := tar.NewWriter(out)
	buf := make([]byte, 256<<10)
	err = fs.WalkDir(root.FS(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil // removed while walking
		}
		link := ""
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if link, err = root.Readlink(name); err != nil {
				return nil
			}
		case fi.Mode().IsRegular(), fi.IsDir():
		default:
			return nil // devices, fifos, sockets
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name = name
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uname, h.Gname = "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := root.OpenFile(name, os.O_RDONLY|noFollow, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.CopyBuffer(tw, io.LimitReader(f, h.Size), buf)
		if err == nil && n < h.Size {
			// Shrunk while archiving: pad, so the archive stays valid.
			_, err = io.CopyN(tw, zeros{}, h.Size-n)
		}
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = closeZ()
	}
	if err == nil {
		err = fw.Flush()
	}
	if err != nil {
		if errors.Is(err, errSinkGone) {
			return
		}
		sendErr(w, err)
		return
	}
	_ = w.Frame(wire.KindEOF, nil)
}

var errSinkGone = errors.New("the host went away")

const noFollow = syscall.O_NOFOLLOW

// frameSink writes data frames.
type frameSink struct{ w *wire.Writer }

func (f frameSink) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += wire.ChunkSize {
		end := min(len(p), off+wire.ChunkSize)
		if err := f.w.Frame(wire.KindData, p[off:end]); err != nil {
			return off, errSinkGone
		}
	}
	return len(p), nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
