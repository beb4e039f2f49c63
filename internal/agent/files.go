package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// MaxPathLen bounds every path the agent accepts.
const MaxPathLen = wire.MaxPathLen

// CheckPath enforces the files API's path rules (see wire.CheckPath). The
// host checks the same rules before a request ever reaches a sandbox; the
// agent checks again because it must not trust its peer's validation.
func CheckPath(p string) error { return wire.CheckPath(p) }

func sendErr(w *wire.Writer, err error) {
	_ = w.Err(errCode(err), err.Error())
}

func errCode(err error) string {
	var errno syscall.Errno
	var fe *fileErr
	switch {
	case errors.As(err, &fe):
		return fe.code
	case errors.As(err, &errno) && errno == syscall.EROFS:
		return wire.CodeReadOnly
	case errors.As(err, &errno) && (errno == syscall.EBUSY || errno == syscall.ETXTBSY):
		return wire.CodeBusy
	case errors.As(err, &errno) && (errno == syscall.EIO || errno == syscall.ENXIO):
		return wire.CodeIO
	case errors.As(err, &errno) && (errno == syscall.ELOOP || errno == syscall.EINVAL || errno == syscall.EXDEV):
		return wire.CodeInvalidPath
	case errors.As(err, &errno) && errno == syscall.EDQUOT, errors.As(err, &errno) && errno == syscall.EFBIG:
		return wire.CodeNoSpace
	case errors.Is(err, fs.ErrNotExist):
		return wire.CodeNotFound
	case errors.As(err, &errno) && errno == syscall.ENOTDIR:
		return wire.CodeNotDir
	case errors.As(err, &errno) && errno == syscall.EISDIR:
		return wire.CodeIsDir
	case errors.As(err, &errno) && errno == syscall.ENOTEMPTY:
		return wire.CodeNotEmpty
	case errors.As(err, &errno) && errno == syscall.ENOSPC:
		return wire.CodeNoSpace
	case errors.As(err, &errno) && errno == syscall.ENAMETOOLONG:
		return wire.CodeInvalidPath
	case errors.Is(err, fs.ErrExist):
		return wire.CodeExists
	case errors.Is(err, fs.ErrPermission):
		return wire.CodePermission
	}
	return wire.CodeInternal
}

func info(path string, fi fs.FileInfo) wire.FileInfo {
	return wire.FileInfo{
		Name:       fi.Name(),
		Path:       path,
		IsDir:      fi.IsDir(),
		Size:       fi.Size(),
		Mode:       uint32(fi.Mode().Perm()),
		ModifiedNS: fi.ModTime().UnixNano(),
		Symlink:    fi.Mode()&fs.ModeSymlink != 0,
	}
}

func readFile(path string, w *wire.Writer) {
	f, fi, ok := openForRead(path, w)
	if !ok {
		return
	}
	defer f.Close()
	sendFrames(path, f, fi, w)
}

// sendFrames answers a download with the file's info and its content in
// data frames up to its end.
func sendFrames(path string, f *os.File, fi fs.FileInfo, w *wire.Writer) {
	if err := w.JSON(wire.KindJSON, info(path, fi)); err != nil {
		return
	}
	buf := make([]byte, wire.ChunkSize)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if w.Frame(wire.KindData, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				sendErr(w, err)
				return
			}
			break
		}
	}
	_ = w.Frame(wire.KindEOF, nil)
}

// openForRead opens the regular file path for a download; on failure it
// has answered w and ok is false.
func openForRead(path string, w *wire.Writer) (f *os.File, fi fs.FileInfo, ok bool) {
	if err := CheckPath(path); err != nil {
		_ = w.Err(wire.CodeInvalidPath, err.Error())
		return nil, nil, false
	}
	if err := guardRead(path); err != nil {
		sendErr(w, err)
		return nil, nil, false
	}
	f, err := os.Open(path)
	if err != nil {
		sendErr(w, err)
		return nil, nil, false
	}
	fi, err = f.Stat()
	switch {
	case err != nil:
		sendErr(w, err)
	case fi.IsDir():
		_ = w.Err(wire.CodeIsDir, path+" is a directory")
	case !fi.Mode().IsRegular():
		_ = w.Err(wire.CodeBadRequest, path+" is not a regular file")
	default:
		return f, fi, true
	}
	f.Close()
	return nil, nil, false
}

// writeFile streams the host's data into a temporary file beside path and
// renames it into place, so a reader never sees a half-written file and a
// broken upload leaves the old contents untouched.
func writeFile(path string, mode uint32, r *wire.Reader, w *wire.Writer) {
	tmp, perm, ok := createForWrite(path, mode, w)
	if !ok {
		return
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := w.JSON(wire.KindJSON, struct{}{}); err != nil {
		return
	}
	var size int64
	for {
		k, b, err := r.Next()
		if err != nil {
			return // the host went away: nothing is replaced
		}
		if k == wire.KindEOF {
			break
		}
		if k != wire.KindData {
			_ = w.Err(wire.CodeBadRequest, fmt.Sprintf("unexpected frame %q in upload", k))
			return
		}
		if _, err := tmp.Write(b); err != nil {
			sendErr(w, err)
			drainUpload(r)
			return
		}
		size += int64(len(b))
	}
	committed = commitWrite(tmp, filepath.Clean(path), perm, size, w)
}

// createForWrite checks an upload's target and creates the temporary file
// beside it that the upload goes to; on failure it has answered w and ok is
// false.
func createForWrite(path string, mode uint32, w *wire.Writer) (tmp *os.File, perm fs.FileMode, ok bool) {
	if err := CheckPath(path); err != nil {
		_ = w.Err(wire.CodeInvalidPath, err.Error())
		return nil, 0, false
	}
	path = filepath.Clean(path)
	if path == "/" {
		_ = w.Err(wire.CodeIsDir, "/ is a directory")
		return nil, 0, false
	}
	if err := guardWrite(path); err != nil {
		sendErr(w, err)
		return nil, 0, false
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		_ = w.Err(wire.CodeIsDir, path+" is a directory")
		return nil, 0, false
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		sendErr(w, err)
		return nil, 0, false
	}
	perm = fs.FileMode(mode).Perm()
	if perm == 0 {
		perm = 0o644
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".orkestr-*")
	if err != nil {
		sendErr(w, err)
		return nil, 0, false
	}
	return tmp, perm, true
}

// commitWrite gives a complete upload its mode and renames it over path,
// then answers w; it reports whether the file is in place (otherwise the
// caller removes the temporary file).
func commitWrite(tmp *os.File, path string, perm fs.FileMode, size int64, w *wire.Writer) bool {
	if err := tmp.Chmod(perm); err != nil {
		sendErr(w, err)
		return false
	}
	if err := tmp.Close(); err != nil {
		sendErr(w, err)
		return false
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		sendErr(w, err)
		return false
	}
	_ = w.JSON(wire.KindJSON, wire.Written{Size: size})
	return true
}

// drainUpload reads and drops the rest of an upload the agent has given up
// on (a full disk, an archive over its limit) after saying why: a host
// still sending would otherwise block on the stream's full window and never
// read the answer. It ends at the upload's end frame or when the host hangs
// up.
func drainUpload(r *wire.Reader) {
	for {
		k, _, err := r.Next()
		if err != nil || k == wire.KindEOF {
			return
		}
	}
}

func listDir(path string, w *wire.Writer) {
	if err := listSafely(path, w); err != nil {
		sendErr(w, err)
	}
}

func statPath(path string, w *wire.Writer) {
	if err := CheckPath(path); err != nil {
		_ = w.Err(wire.CodeInvalidPath, err.Error())
		return
	}
	path = filepath.Clean(path)
	if err := guardRead(path); err != nil {
		sendErr(w, err)
		return
	}
	fi, err := os.Lstat(path)
	if err != nil {
		sendErr(w, err)
		return
	}
	_ = w.JSON(wire.KindJSON, info(path, fi))
}

// removePath deletes path, a whole tree when recursive, within the bounds
// of safefs.go; ctx ends when the host gives up on the request.
func removePath(ctx context.Context, path string, recursive bool, w *wire.Writer) {
	if err := removeSafely(ctx, path, recursive); err != nil {
		sendErr(w, err)
		return
	}
	_ = w.JSON(wire.KindJSON, struct{}{})
}

func mkdirPath(path string, mode uint32, w *wire.Writer) {
	if err := CheckPath(path); err != nil {
		_ = w.Err(wire.CodeInvalidPath, err.Error())
		return
	}
	if err := guardWrite(path); err != nil {
		sendErr(w, err)
		return
	}
	perm := fs.FileMode(mode).Perm()
	if perm == 0 {
		perm = 0o755
	}
	if err := os.MkdirAll(filepath.Clean(path), perm); err != nil {
		sendErr(w, err)
		return
	}
	_ = w.JSON(wire.KindJSON, struct{}{})
}
