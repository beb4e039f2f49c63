package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// fsReply is what a file operation answers: a frame kind and its JSON.
type fsReply struct {
	kind wire.Kind
	v    any
}

func fsErr(err error) fsReply {
	var we *wire.Error
	if errors.As(err, &we) {
		return fsReply{wire.KindError, we}
	}
	code := errCode(err)
	var errno syscall.Errno
	if errors.As(err, &errno) && errno == syscall.EXDEV {
		code = wire.CodeCrossDevice
	}
	return fsReply{wire.KindError, &wire.Error{Code: code, Message: err.Error()}}
}

// fsOp serves OpStatX, OpExists, OpMkdirX and OpRename, as root or, through
// a helper process of the agent's own binary, as FS.User.
func (a *Agent) fsOp(req *wire.Request, w *wire.Writer) {
	rep := a.fsOpReply(req)
	_ = w.JSON(rep.kind, rep.v)
}

func (a *Agent) fsOpReply(req *wire.Request) fsReply {
	if req.FS == nil {
		return fsReply{wire.KindError, &wire.Error{Code: wire.CodeBadRequest, Message: req.Op + " request without fs"}}
	}
	paths := []string{req.FS.Path}
	if req.Op == wire.OpRename {
		paths = append(paths, req.FS.Dest)
	}
	for _, p := range paths {
		if err := CheckPath(p); err != nil {
			return fsReply{wire.KindError, &wire.Error{Code: wire.CodeInvalidPath, Message: err.Error()}}
		}
	}
	u, err := lookupUser(req.FS.User)
	if err != nil {
		return fsErr(err)
	}
	if u.isRoot() {
		return doFSOp(req)
	}
	return a.fsOpAs(u, req)
}

// doFSOp does a file operation as the calling process's user.
func doFSOp(req *wire.Request) fsReply {
	f := req.FS
	switch req.Op {
	case wire.OpStatX:
		st, err := statX(f.Path)
		if err != nil {
			return fsErr(err)
		}
		return fsReply{wire.KindJSON, st}
	case wire.OpExists:
		st, err := statX(f.Path)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return fsReply{wire.KindJSON, wire.Stat{Path: f.Path}}
		}
		if err != nil {
			return fsErr(err)
		}
		return fsReply{wire.KindJSON, st}
	case wire.OpMkdirX:
		if err := guardEntry(f.Path); err != nil {
			return fsErr(err)
		}
		perm := os.FileMode(f.Mode & 0o7777)
		if perm == 0 {
			perm = 0o755
		}
		var err error
		if f.Parents {
			err = os.MkdirAll(filepath.Clean(f.Path), perm)
		} else {
			err = os.Mkdir(filepath.Clean(f.Path), perm)
		}
		if err != nil {
			return fsErr(err)
		}
		st, err := statX(f.Path)
		if err != nil {
			return fsErr(err)
		}
		if st.Type != "dir" {
			return fsReply{wire.KindError, &wire.Error{Code: wire.CodeExists, Message: f.Path + " exists and is not a directory"}}
		}
		return fsReply{wire.KindJSON, st}
	case wire.OpRename:
		if filepath.Clean(f.Path) == "/" || filepath.Clean(f.Dest) == "/" {
			return fsReply{wire.KindError, &wire.Error{Code: wire.CodeInvalidPath, Message: "cannot rename / or onto /"}}
		}
		if err := guardEntry(f.Path); err != nil {
			return fsErr(err)
		}
		if err := guardEntry(f.Dest); err != nil {
			return fsErr(err)
		}
		if err := rename(f.Path, f.Dest, f.Overwrite); err != nil {
			return fsErr(err)
		}
		st, err := statX(f.Dest)
		if err != nil {
			return fsErr(err)
		}
		return fsReply{wire.KindJSON, st}
	}
	return fsReply{wire.KindError, &wire.Error{Code: wire.CodeBadRequest, Message: fmt.Sprintf("unknown op %q", req.Op)}}
}

// rename moves from to to; without overwrite an existing to is an error
// (checked atomically where the kernel can).
func rename(from, to string, overwrite bool) error {
	if overwrite {
		return os.Rename(from, to)
	}
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		if err != nil {
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
		}
		return nil
	}
	if _, err := os.Lstat(to); err == nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: fs.ErrExist}
	}
	return os.Rename(from, to)
}

func fileType(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "dir"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "char_device"
	case m&fs.ModeDevice != 0:
		return "block_device"
	}
	return "file"
}

// statX describes path without following a final symlink.
func statX(path string) (wire.Stat, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return wire.Stat{}, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return wire.Stat{}, err
	}
	out := wire.Stat{
		Exists: true, Name: fi.Name(), Path: path, Type: fileType(fi.Mode()), Size: st.Size,
		Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid,
		Owner: idName("/etc/passwd", st.Uid), Group: idName("/etc/group", st.Gid),
		AccessNS: st.Atim.Nano(), ModifyNS: st.Mtim.Nano(), ChangeNS: st.Ctim.Nano(),
	}
	if out.Type == "symlink" {
		out.Target, _ = os.Readlink(path)
	}
	return out, nil
}

// idName finds the name of id in a passwd or group file ("" if none).
func idName(file string, id uint32) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	want := strconv.FormatUint(uint64(id), 10)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.SplitN(sc.Text(), ":", 4); len(fields) >= 3 && fields[2] == want {
			return fields[0]
		}
	}
	return ""
}

// FSHelperArg is the argument that makes orkestr-agent a one-shot helper
// doing one file operation as the user it was started as (see fsOpAs).
const FSHelperArg = "fsop"

// fsOpAs does a file operation as user u: in a process of the agent's own
// binary started with u's credentials, so the kernel checks u's
// permissions and what is created belongs to u. The helper reads the
// request on stdin and answers one frame on stdout.
func (a *Agent) fsOpAs(u account, req *wire.Request) fsReply {
	self, err := os.Executable()
	if err != nil {
		return fsErr(err)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return fsErr(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return fsErr(err)
	}
	_, exited, err := a.reaper.start(self, []string{"orkestr-agent", FSHelperArg}, &os.ProcAttr{
		Dir: "/", Env: []string{"PATH=/usr/bin:/bin"}, Files: []*os.File{inR, outW, nil},
		Sys: &syscall.SysProcAttr{Credential: u.credential()},
	})
	inR.Close()
	outW.Close()
	defer outR.Close()
	if err != nil {
		inW.Close()
		return fsErr(fmt.Errorf("starting the file helper: %w", err))
	}
	_ = json.NewEncoder(inW).Encode(req)
	inW.Close()
	k, b, rerr := wire.NewReader(outR).Next()
	<-exited
	if rerr != nil {
		return fsReply{wire.KindError, &wire.Error{Code: wire.CodeInternal, Message: "the file helper gave no answer: " + rerr.Error()}}
	}
	return fsReply{k, json.RawMessage(append([]byte(nil), b...))}
}

// FSHelperMain is the helper's body: one request from r, one frame to w.
func FSHelperMain(r io.Reader, w io.Writer) int {
	var req wire.Request
	ww := wire.NewWriter(w)
	if err := json.NewDecoder(io.LimitReader(r, wire.MaxFrame)).Decode(&req); err != nil || req.FS == nil {
		_ = ww.Err(wire.CodeBadRequest, "file helper: malformed request")
		return 2
	}
	rep := doFSOp(&req)
	if err := ww.JSON(rep.kind, rep.v); err != nil {
		return 1
	}
	return 0
}
