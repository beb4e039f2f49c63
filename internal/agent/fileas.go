package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// FileHelperArg is the argument that makes orkestr-agent a helper doing
// one streamed file call (read, write, list, remove, watch) as the user it
// was started as (see fileOpAs).
const FileHelperArg = "fileop"

// fileCallUser is the user a read, write, list, remove or watch names
// other than root, or "" when the agent does it itself as root.
func fileCallUser(req *wire.Request) string {
	name := ""
	switch req.Op {
	case wire.OpRead, wire.OpWrite, wire.OpList, wire.OpRemove:
		name = req.User
	case wire.OpWatch:
		if req.FS != nil {
			name = req.FS.User
		}
	}
	if name == root.name {
		return ""
	}
	return name
}

// fileOpAs does a streamed file call as the named user: in a process of
// the agent's own binary started with the user's credentials, so the
// kernel checks the user's permissions and what it writes belongs to the
// user. The helper speaks the same frames as the agent over a socket; the
// agent relays them to and from the host's stream frame by frame. Root's
// calls never come here, so their data path is unchanged.
func (a *Agent) fileOpAs(name string, req *wire.Request, r *wire.Reader, w *wire.Writer) (reusable bool) {
	// List and remove leave the stream fit for another request, as
	// they do as root: the host sends nothing more for them.
	reusable = req.Op == wire.OpList || req.Op == wire.OpRemove
	fail := func(err error) bool {
		rep := fsErr(err)
		_ = w.JSON(rep.kind, rep.v)
		return reusable
	}
	u, err := lookupUser(name)
	if err != nil {
		return fail(err)
	}
	self, err := os.Executable()
	if err != nil {
		return fail(err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail(fmt.Errorf("socket for the file helper: %w", err))
	}
	for _, fd := range fds {
		// Room for a few chunks in flight, as on the host's stream.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, wire.SocketBuffer)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, wire.SocketBuffer)
	}
	child := os.NewFile(uintptr(fds[1]), "file-helper")
	parentFile := os.NewFile(uintptr(fds[0]), "file-helper")
	conn, err := net.FileConn(parentFile)
	parentFile.Close()
	if err != nil {
		child.Close()
		return fail(fmt.Errorf("socket for the file helper: %w", err))
	}
	helper := conn.(*net.UnixConn)
	defer helper.Close()
	_, exited, err := a.reaper.start(self, []string{"orkestr-agent", FileHelperArg}, &os.ProcAttr{
		Dir: "/", Env: []string{"PATH=/usr/bin:/bin"}, Files: []*os.File{child, child, nil},
		Sys: &syscall.SysProcAttr{Credential: u.credential()},
	})
	child.Close()
	if err != nil {
		return fail(fmt.Errorf("starting the file helper: %w", err))
	}
	defer func() {
		helper.Close()
		<-exited
	}()
	hw := wire.NewWriter(helper)
	if err := hw.JSON(wire.KindJSON, req); err != nil {
		return fail(fmt.Errorf("the file helper took no request: %w", err))
	}
	if req.Op == wire.OpWrite || req.Op == wire.OpWatch {
		// The upload's data, or the watch's end: the host's frames go on
		// to the helper until the stream breaks or the upload ends.
		go func() {
			for {
				k, b, err := r.Next()
				if err != nil {
					_ = helper.CloseWrite()
					return
				}
				if hw.Frame(k, b) != nil || k == wire.KindEOF {
					return
				}
			}
		}()
	} else {
		_ = helper.CloseWrite()
	}
	hr := wire.NewReader(helper)
	frames := 0
	for {
		k, b, err := hr.Next()
		if err != nil {
			break
		}
		frames++
		if w.Frame(k, b) != nil {
			return false
		}
	}
	if frames == 0 {
		_ = w.Err(wire.CodeInternal, "the file helper ended without an answer")
	}
	return reusable
}

// FileHelperMain is the helper's body: one request, then the frames of
// the call, over in and out (its stdin and stdout: one socket).
func FileHelperMain(in *os.File, out *os.File) int {
	r := wire.NewReader(in)
	w := wire.NewWriter(out)
	var req wire.Request
	if err := r.ExpectJSON(&req); err != nil {
		_ = w.Err(wire.CodeBadRequest, "file helper: malformed request")
		return 2
	}
	switch req.Op {
	case wire.OpRead:
		readFile(req.Path, w)
	case wire.OpWrite:
		writeFile(req.Path, req.Mode, r, w)
	case wire.OpList:
		listDir(req.Path, w)
	case wire.OpRemove:
		// The agent relays nothing more to the helper once the request is
		// in (it may close its side at once), so the helper's walk is not
		// tied to the caller: it is bounded by removeSafely's limits (1M
		// entries, 512 levels, 5 minutes) instead.
		removePath(context.Background(), req.Path, req.Recursive, w)
	case wire.OpWatch:
		// inotify does not check that the user may read the directory
		// (gVisor's), so the helper does, as opening it would.
		if req.FS != nil {
			if err := CheckPath(req.FS.Path); err == nil {
				d, err := os.Open(req.FS.Path)
				if err != nil {
					sendErr(w, err)
					return 0
				}
				d.Close()
			}
		}
		(&Agent{}).watch(&req, r, w)
	default:
		_ = w.Err(wire.CodeBadRequest, fmt.Sprintf("file helper: op %q", req.Op))
		return 2
	}
	return 0
}
