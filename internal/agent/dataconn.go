package agent

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// dialData opens the data connection the host asked for with ticket (see
// wire.Request.DataConn): a second connection to the host's socket that
// carries one transfer's bytes raw.
func (a *Agent) dialData(ticket string) (*net.UnixConn, error) {
	token, err := os.ReadFile(filepath.Join(a.Dir, wire.TokenName))
	if err != nil {
		return nil, fmt.Errorf("read token: %w", err)
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: filepath.Join(a.Dir, wire.SocketName), Net: "unix"})
	if err != nil {
		return nil, err
	}
	hello, _ := json.Marshal(wire.Hello{Version: wire.Version, Token: strings.TrimSpace(string(token)), PID: os.Getpid(), DataConn: ticket})
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(append(hello, '\n')); err != nil {
		conn.Close()
		return nil, err
	}
	// The host answers one line and sends nothing else before it: a
	// byte-wise read leaves nothing buffered that the transfer needs.
	line, err := bufio.NewReaderSize(io.LimitReader(conn, 3), 16).ReadString('\n')
	if err != nil || line != "ok\n" {
		conn.Close()
		return nil, fmt.Errorf("data connection refused by the host: %q %v", strings.TrimSpace(line), err)
	}
	_ = conn.SetDeadline(time.Time{})
	_ = conn.SetWriteBuffer(wire.SocketBuffer)
	_ = conn.SetReadBuffer(wire.SocketBuffer)
	return conn, nil
}

// readFileData is readFile over a data connection: FileInfo on the
// stream, exactly FileInfo.Size bytes on the connection (sendfile: the
// bytes never pass through the agent), then KindEOF with the count.
func (a *Agent) readFileData(path, ticket string, w *wire.Writer) {
	f, fi, ok := openForRead(path, w)
	if !ok {
		return
	}
	defer f.Close()
	if !sizeIsContent(f, fi) {
		// The host reads data frames when FileInfo.DataConn is unset.
		sendFrames(path, f, fi, w)
		return
	}
	fwi := info(path, fi)
	fwi.DataConn = true
	if err := w.JSON(wire.KindJSON, fwi); err != nil {
		return
	}
	conn, err := a.dialData(ticket)
	if err != nil {
		_ = w.Err(wire.CodeInternal, err.Error())
		return
	}
	n, err := sendFile(conn, f, fi.Size())
	conn.Close()
	if err != nil {
		sendErr(w, err)
		return
	}
	_ = w.JSON(wire.KindEOF, wire.Written{Size: n})
}

// sizeIsContent says whether f's size is the length of its content: not
// for an empty file (on /proc every file looks empty) nor on a kernel
// filesystem (a sysfs attribute says 4096 whatever it holds).
func sizeIsContent(f *os.File, fi os.FileInfo) bool {
	if fi.Size() == 0 {
		return false
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil {
		return false
	}
	_, kernel := kernelFS[int64(sfs.Type)]
	return !kernel
}

// writeFileData is writeFile over a data connection: the bytes arrive on
// the connection (spliced into the temporary file) until the host
// half-closes it, and count only when the host's KindEOF on the stream
// confirms them; a connection that merely ends is a cut upload and
// replaces nothing.
func (a *Agent) writeFileData(path string, mode uint32, ticket string, r *wire.Reader, w *wire.Writer) {
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
	conn, err := a.dialData(ticket)
	if err != nil {
		_ = w.Err(wire.CodeInternal, err.Error())
		return
	}
	defer conn.Close()
	if err := w.JSON(wire.KindJSON, struct{}{}); err != nil {
		return
	}
	size, err := receiveFile(conn, tmp)
	if err != nil {
		sendErr(w, err)
		conn.Close() // the host's writes fail at once
		return
	}
	k, b, err := r.Next()
	if err != nil || k != wire.KindEOF {
		return // the host gave up: nothing is replaced
	}
	var sent wire.Written
	if json.Unmarshal(b, &sent) != nil || sent.Size != size {
		_ = w.Err(wire.CodeBadRequest, fmt.Sprintf("upload incomplete: %d bytes arrived of %d sent", size, sent.Size))
		return
	}
	committed = commitWrite(tmp, filepath.Clean(path), perm, size, w)
}

// receiveFile copies what arrives on conn into f until the host half-closes
// it, in blocking reads of up to 1 MiB (see onBlocking). io.Copy spliced it
// through a pipe with a non-blocking socket, so every time the socket ran
// dry the agent went through Go's netpoller and a trapped epoll_wait:
// 2.8-3.2 s of sandbox CPU per GB uploaded.
func receiveFile(conn *net.UnixConn, f *os.File) (int64, error) {
	var n int64
	buf := make([]byte, 1<<20)
	err := onBlocking(conn, func(fd int) error {
		for {
			m, err := unix.Read(fd, buf)
			switch {
			case err == unix.EINTR || err == unix.EAGAIN:
				continue
			case err != nil:
				return err
			case m == 0:
				return nil
			}
			if _, err := f.Write(buf[:m]); err != nil {
				return err
			}
			n += int64(m)
		}
	})
	return n, err
}

// onBlocking runs f on conn's descriptor in blocking mode. A data
// connection carries one transfer and is closed after it, so nothing else
// waits on it in Go's netpoller: a blocking call waits inside the Sentry,
// where a non-blocking one came back with EAGAIN each time the host's
// socket was full or empty and went through the netpoller and a trapped
// epoll_wait before the next call.
func onBlocking(conn *net.UnixConn, f func(fd int) error) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		if ferr = unix.SetNonblock(int(fd), false); ferr == nil {
			ferr = f(int(fd))
		}
	}); err != nil {
		return err
	}
	return ferr
}

// sendFile sends the next n bytes of f on conn (fewer if f ends first) with
// sendfile(2), so the bytes go from the file to the socket inside the
// sandbox's kernel: a few trapped syscalls per transfer instead of a read
// and a write per chunk, in blocking mode (see onBlocking: 2.4 s of
// sandbox CPU per GB downloaded before, most of it in context switches).
// Where sendfile is refused it copies.
func sendFile(conn *net.UnixConn, f *os.File, n int64) (int64, error) {
	src := int(f.Fd())
	var sent int64
	unsupported := false
	err := onBlocking(conn, func(dst int) error {
		for sent < n {
			m, err := unix.Sendfile(dst, src, nil, int(min(n-sent, 1<<30)))
			if m > 0 {
				sent += int64(m)
			}
			switch {
			case err == unix.EINTR || err == unix.EAGAIN:
				continue
			case err == unix.ENOSYS || err == unix.EINVAL || err == unix.EOPNOTSUPP:
				unsupported = sent == 0
				return err
			case err != nil:
				return err
			case m == 0:
				return nil // the file ended early
			}
		}
		return nil
	})
	if unsupported {
		buf := make([]byte, wire.ChunkSize)
		return io.CopyBuffer(conn, io.LimitReader(f, n), buf)
	}
	return sent, err
}
