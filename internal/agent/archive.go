package agent

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
	"github.com/orkestr-eu/orkestr/internal/tarx"
)

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
			return 0, &tarx.Error{Code: tarx.CodeInvalid, Msg: fmt.Sprintf("unexpected frame %q in an archive upload", k)}
		}
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	return n, nil
}

// untar extracts a tar stream (plain, gzip or zstd) from the host into dir,
// creating dir. Every entry is created through an os.Root of dir, so no
// entry, and no symlink an entry made, can reach outside it; names that are
// absolute or climb out with ".." are refused outright, and so are device
// nodes, fifos and sockets. Symlinks are created as links, never followed
// out. limit bounds the bytes of file content written (0: no bound).
// Extraction stops at the first refused entry; the entries before it stay.
func untar(req *wire.Request, r *wire.Reader, w *wire.Writer, dial func(ticket string) (*net.UnixConn, error)) {
	dir := req.Path
	if err := CheckPath(dir); err != nil {
		_ = w.Err(wire.CodeInvalidPath, err.Error())
		return
	}
	dir = filepath.Clean(dir)
	// Not into the agent's own files nor onto a kernel filesystem, as for
	// a file write; entries below dir that would land in the agent's
	// files (an archive extracted at /) are refused one by one.
	if err := guardWrite(dir); err != nil {
		sendErr(w, err)
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		sendErr(w, err)
		return
	}
	_, resolved, err := resolveExisting(dir)
	if err != nil {
		sendErr(w, err)
		return
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		sendErr(w, err)
		return
	}
	defer root.Close()
	fsrc := &frameSource{r: r}
	var src io.Reader = fsrc
	var conn *net.UnixConn
	if req.DataConn != "" {
		if conn, err = dial(req.DataConn); err != nil {
			_ = w.Err(wire.CodeInternal, err.Error())
			return
		}
		defer conn.Close()
		src = &connSource{conn: conn, r: r}
	}
	if err := w.JSON(wire.KindJSON, struct{}{}); err != nil {
		return
	}
	res, err := tarx.ExtractGuarded(root, src, req.Limit, func(name string) error {
		if own := ownDir(filepath.Join(resolved, name)); own != "" {
			return &tarx.Error{Code: wire.CodePermission, Msg: fmt.Sprintf("the archive's entry %s would land in %s, which belongs to the sandbox's agent; the files API does not touch it", name, own)}
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, errHostGone) {
			return
		}
		var ae *tarx.Error
		if errors.As(err, &ae) {
			_ = w.Err(ae.Code, ae.Msg)
		} else {
			sendErr(w, err)
		}
		switch {
		case conn != nil:
			conn.Close() // the host's writes fail at once
		case !fsrc.eof:
			drainUpload(r)
		}
		return
	}
	// Drain what follows the archive's end (tar pads with zero blocks).
	if _, err := io.Copy(io.Discard, src); err != nil {
		return
	}
	_ = w.JSON(wire.KindJSON, wire.Extracted{Entries: res.Entries, Bytes: res.Bytes})
}

// tarDir streams dir as a tar (compression "", "gzip" or "zstd") in data
// frames, or on the data connection the request names. Symlinks are archived as links and never followed; device nodes,
// fifos and sockets are skipped.
func tarDir(req *wire.Request, w *wire.Writer, dial func(ticket string) (*net.UnixConn, error)) {
	dir := req.Path
	if err := CheckPath(dir); err != nil {
		_ = w.Err(wire.CodeInvalidPath, err.Error())
		return
	}
	dir = filepath.Clean(dir)
	// Never the agent's own files, never across into another filesystem
	// (tar --one-file-system: /proc, /sys, /dev and mounts below dir are
	// archived as empty directories), and not from a kernel filesystem,
	// whose files change while read and whose sizes are not their content.
	if err := guardRead(dir); err != nil {
		sendErr(w, err)
		return
	}
	fi, err := os.Stat(dir)
	if err != nil {
		sendErr(w, err)
		return
	}
	if !fi.IsDir() {
		_ = w.Err(wire.CodeNotDir, dir+" is not a directory")
		return
	}
	fd, resolved, err := resolveExisting(dir)
	if err != nil {
		sendErr(w, err)
		return
	}
	var sfs unix.Statfs_t
	err = unix.Fstatfs(fd, &sfs)
	unix.Close(fd)
	if err != nil {
		sendErr(w, err)
		return
	}
	if name, ok := kernelFS[int64(sfs.Type)]; ok {
		_ = w.Err(wire.CodeInvalidPath, fmt.Sprintf("%s is on the kernel's %s filesystem, which is not archived", resolved, name))
		return
	}
	dev := fi.Sys().(*syscall.Stat_t).Dev
	root, err := os.OpenRoot(dir)
	if err != nil {
		sendErr(w, err)
		return
	}
	defer root.Close()
	var sink io.Writer = frameSink{w}
	var conn *net.UnixConn
	cs := &connSink{}
	if req.DataConn != "" {
		if conn, err = dial(req.DataConn); err != nil {
			_ = w.Err(wire.CodeInternal, err.Error())
			return
		}
		defer conn.Close()
		cs.conn = conn
		sink = cs
	}
	if err := w.JSON(wire.KindJSON, struct{}{}); err != nil {
		return
	}
	fw := bufio.NewWriterSize(sink, wire.ChunkSize)
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
		if own := ownDir(filepath.Join(resolved, name)); own != "" {
			return skipEntry(d)
		}
		fi, err := d.Info()
		if err != nil {
			return nil // removed while walking
		}
		// Another filesystem: the mount point is kept, empty.
		crossing := fi.IsDir() && fi.Sys().(*syscall.Stat_t).Dev != dev
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
		if crossing {
			return fs.SkipDir
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
	if conn != nil {
		// The host reads the connection to its end, then the stream.
		conn.Close()
	}
	if err != nil {
		if errors.Is(err, errSinkGone) {
			return
		}
		sendErr(w, err)
		return
	}
	if conn != nil {
		_ = w.JSON(wire.KindEOF, wire.Written{Size: cs.n})
		return
	}
	_ = w.Frame(wire.KindEOF, nil)
}

// connSink writes an archive to a data connection and counts it.
type connSink struct {
	conn *net.UnixConn
	n    int64
}

func (c *connSink) Write(p []byte) (int, error) {
	n, err := c.conn.Write(p)
	c.n += int64(n)
	if err != nil {
		return n, errSinkGone
	}
	return n, nil
}

// connSource reads an upload from its data connection: the connection's
// end is the upload's only if the host's KindEOF on the stream follows
// with the same count; anything else is the host going away.
type connSource struct {
	conn *net.UnixConn
	r    *wire.Reader
	n    int64
	done bool
}

func (c *connSource) Read(p []byte) (int, error) {
	if c.done {
		return 0, io.EOF
	}
	n, err := c.conn.Read(p)
	c.n += int64(n)
	switch {
	case errors.Is(err, io.EOF):
		k, b, rerr := c.r.Next()
		var sent wire.Written
		if rerr != nil || k != wire.KindEOF || json.Unmarshal(b, &sent) != nil || sent.Size != c.n {
			return n, errHostGone
		}
		c.done = true
		return n, io.EOF
	case err != nil:
		return n, errHostGone
	}
	return n, nil
}

var errSinkGone = errors.New("the host went away")

// ownDir is the directory of the agent's own files that resolved lies in,
// or "".
func ownDir(resolved string) string {
	for _, d := range protectedDirs {
		if within(resolved, d) {
			return d
		}
	}
	return ""
}

// skipEntry leaves d out of a walk (and, for a directory, what it holds).
func skipEntry(d fs.DirEntry) error {
	if d.IsDir() {
		return fs.SkipDir
	}
	return nil
}

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
