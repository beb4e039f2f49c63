package e2b

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path"
	"regexp"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/orkestr-eu/orkestr/internal/e2b/envdpb/filesystem"
)

// filesystemService is envd's filesystem.Filesystem over orkestr's file
// routes.
type filesystemService struct{ s *Server }

// fileStat is the native FileStat.
type fileStat struct {
	Name          string     `json:"name"`
	Path          string     `json:"path"`
	Type          string     `json:"type"`
	Size          int64      `json:"size"`
	Mode          uint32     `json:"mode"`
	Owner         *string    `json:"owner"`
	Group         *string    `json:"group"`
	ModifiedAt    *time.Time `json:"modified_at"`
	SymlinkTarget *string    `json:"symlink_target"`
}

func fileType(t string) pb.FileType {
	switch t {
	case "file":
		return pb.FileType_FILE_TYPE_FILE
	case "dir":
		return pb.FileType_FILE_TYPE_DIRECTORY
	case "symlink":
		return pb.FileType_FILE_TYPE_SYMLINK
	}
	return pb.FileType_FILE_TYPE_UNSPECIFIED
}

// permissions renders mode bits as ls does (-rwxr-xr-x).
func permissions(t string, mode uint32) string {
	m := fs.FileMode(mode & 0o777)
	switch t {
	case "dir":
		m |= fs.ModeDir
	case "symlink":
		m |= fs.ModeSymlink
	}
	if mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m.String()
}

func (st fileStat) entry() *pb.EntryInfo {
	e := &pb.EntryInfo{
		Name: st.Name, Type: fileType(st.Type), Path: st.Path, Size: st.Size,
		Mode: st.Mode & 0o7777, Permissions: permissions(st.Type, st.Mode), SymlinkTarget: st.SymlinkTarget,
	}
	if st.Owner != nil {
		e.Owner = *st.Owner
	}
	if st.Group != nil {
		e.Group = *st.Group
	}
	if st.ModifiedAt != nil {
		e.ModifiedTime = timestamppb.New(*st.ModifiedAt)
	}
	return e
}

func (f *filesystemService) stat(ctx context.Context, e *envdCtx, p string) (fileStat, error) {
	var st fileStat
	err := e.c.json(ctx, "GET", e.sbPath("/files/stat"), url.Values{"path": {p}, "user": {e.user}}, nil, &st)
	return st, err
}

func (f *filesystemService) Stat(ctx context.Context, req *connect.Request[pb.StatRequest]) (*connect.Response[pb.StatResponse], error) {
	e := envdFrom(ctx)
	st, err := f.stat(ctx, e, e.resolve(req.Msg.GetPath()))
	if err != nil {
		return nil, rpcErr("stat the path", err)
	}
	return connect.NewResponse(&pb.StatResponse{Entry: st.entry()}), nil
}

func (f *filesystemService) MakeDir(ctx context.Context, req *connect.Request[pb.MakeDirRequest]) (*connect.Response[pb.MakeDirResponse], error) {
	e := envdFrom(ctx)
	p := e.resolve(req.Msg.GetPath())
	var ex struct {
		Exists bool `json:"exists"`
	}
	if err := e.c.json(ctx, "GET", e.sbPath("/files/exists"), url.Values{"path": {p}, "user": {e.user}}, nil, &ex); err != nil {
		return nil, rpcErr("check the path", err)
	}
	if ex.Exists {
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("%s already exists", p))
	}
	var st fileStat
	if err := e.c.json(ctx, "POST", e.sbPath("/files/mkdir"), nil, map[string]any{"path": p, "parents": true, "user": e.user}, &st); err != nil {
		return nil, rpcErr("make the directory", err)
	}
	return connect.NewResponse(&pb.MakeDirResponse{Entry: st.entry()}), nil
}

func (f *filesystemService) Move(ctx context.Context, req *connect.Request[pb.MoveRequest]) (*connect.Response[pb.MoveResponse], error) {
	e := envdFrom(ctx)
	from, to := e.resolve(req.Msg.GetSource()), e.resolve(req.Msg.GetDestination())
	var st fileStat
	if err := e.c.json(ctx, "POST", e.sbPath("/files/rename"), nil, map[string]any{"from": from, "to": to, "overwrite": true, "user": e.user}, &st); err != nil {
		return nil, rpcErr("move the path", err)
	}
	return connect.NewResponse(&pb.MoveResponse{Entry: st.entry()}), nil
}

func (f *filesystemService) Remove(ctx context.Context, req *connect.Request[pb.RemoveRequest]) (*connect.Response[pb.RemoveResponse], error) {
	e := envdFrom(ctx)
	p := e.resolve(req.Msg.GetPath())
	resp, err := e.c.do(ctx, "DELETE", e.sbPath("/files"), url.Values{"path": {p}, "user": {e.user}}, nil, "")
	if err != nil {
		return nil, rpcErr("remove the path", err)
	}
	defer resp.Body.Close()
	if err := errorOf(resp); err != nil {
		return nil, rpcErr("remove the path", err)
	}
	return connect.NewResponse(&pb.RemoveResponse{}), nil
}

// listEntry is an entry of the native directory listing.
type listEntry struct {
	Name       string    `json:"name"`
	Path       string    `json:"path"`
	IsDir      bool      `json:"is_dir"`
	Size       int64     `json:"size"`
	Mode       uint32    `json:"mode"`
	ModifiedAt time.Time `json:"modified_at"`
}

const maxListEntries = 100000

func (f *filesystemService) ListDir(ctx context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	e := envdFrom(ctx)
	depth := int(req.Msg.GetDepth())
	if depth < 1 {
		depth = 1
	}
	if depth > 64 {
		depth = 64
	}
	root := e.resolve(req.Msg.GetPath())
	out := &pb.ListDirResponse{}
	type dir struct {
		path  string
		level int
	}
	queue := []dir{{root, 1}}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		var res struct {
			Entries []listEntry `json:"entries"`
		}
		if err := e.c.json(ctx, "GET", e.sbPath("/files/list"), url.Values{"path": {d.path}, "user": {e.user}}, nil, &res); err != nil {
			if d.path != root {
				continue // gone or unreadable since its parent was listed
			}
			return nil, rpcErr("list the directory", err)
		}
		for _, en := range res.Entries {
			t := "file"
			if en.IsDir {
				t = "dir"
			}
			p := en.Path
			if p == "" {
				p = path.Join(d.path, en.Name)
			}
			mod := en.ModifiedAt
			out.Entries = append(out.Entries, &pb.EntryInfo{
				Name: en.Name, Type: fileType(t), Path: p, Size: en.Size, Mode: en.Mode & 0o7777,
				Permissions: permissions(t, en.Mode), ModifiedTime: timestamppb.New(mod),
			})
			if len(out.Entries) > maxListEntries {
				return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("more than %d entries: list with a smaller depth", maxListEntries))
			}
			if en.IsDir && d.level < depth {
				queue = append(queue, dir{p, d.level + 1})
			}
		}
	}
	return connect.NewResponse(out), nil
}

// writeTemp matches the temporary files of orkestr's atomic writes.
var writeTemp = regexp.MustCompile(`(^|/)\.[^/]+\.orkestr-[0-9]+$`)

// watchEvent is a line of the native watch stream.
type watchEvent struct {
	Type  string `json:"type"`
	Path  string `json:"path"`
	From  string `json:"from"`
	IsDir bool   `json:"is_dir"`
}

// fsEvents maps a native change to envd's events (a rename is a rename of
// the old name and a create of the new one, as inotify reports it).
func fsEvents(ev watchEvent) []*pb.FilesystemEvent {
	// orkestr writes a file atomically: a temporary file beside it,
	// renamed over it. envd writes in place, so the SDKs expect a create
	// and a write of the file itself and nothing of the temporary file.
	if ev.Type == "rename" && writeTemp.MatchString(ev.From) && ev.Path != "" {
		return []*pb.FilesystemEvent{{Name: ev.Path, Type: pb.EventType_EVENT_TYPE_CREATE}, {Name: ev.Path, Type: pb.EventType_EVENT_TYPE_WRITE}}
	}
	if writeTemp.MatchString(ev.Path) {
		return nil
	}
	switch ev.Type {
	case "create":
		return []*pb.FilesystemEvent{{Name: ev.Path, Type: pb.EventType_EVENT_TYPE_CREATE}}
	case "write":
		return []*pb.FilesystemEvent{{Name: ev.Path, Type: pb.EventType_EVENT_TYPE_WRITE}}
	case "remove":
		return []*pb.FilesystemEvent{{Name: ev.Path, Type: pb.EventType_EVENT_TYPE_REMOVE}}
	case "chmod":
		return []*pb.FilesystemEvent{{Name: ev.Path, Type: pb.EventType_EVENT_TYPE_CHMOD}}
	case "rename":
		out := []*pb.FilesystemEvent{{Name: ev.From, Type: pb.EventType_EVENT_TYPE_RENAME}}
		if ev.Path != "" {
			out = append(out, &pb.FilesystemEvent{Name: ev.Path, Type: pb.EventType_EVENT_TYPE_CREATE})
		}
		return out
	}
	return nil
}

// openWatch starts a native watch and returns its lines once it started.
func openWatch(ctx context.Context, e *envdCtx, p string, recursive bool) (*bufio.Scanner, func(), error) {
	q := url.Values{"path": {p}, "user": {e.user}}
	if recursive {
		q.Set("recursive", "true")
	}
	resp, err := e.c.do(ctx, "GET", e.sbPath("/files/watch"), q, nil, "")
	if err != nil {
		return nil, nil, err
	}
	if err := errorOf(resp); err != nil {
		resp.Body.Close()
		return nil, nil, err
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	// The first line says the watch is in place.
	if !sc.Scan() {
		resp.Body.Close()
		return nil, nil, errors.New("the watch ended before it started")
	}
	var first watchEvent
	if json.Unmarshal(sc.Bytes(), &first); first.Type != "started" {
		resp.Body.Close()
		return nil, nil, fmt.Errorf("the watch did not start (%s)", first.Type)
	}
	return sc, func() { resp.Body.Close() }, nil
}

func (f *filesystemService) WatchDir(ctx context.Context, req *connect.Request[pb.WatchDirRequest], stream *connect.ServerStream[pb.WatchDirResponse]) error {
	e := envdFrom(ctx)
	if req.Msg.GetIncludeEntry() {
		return unimplemented("entry info in watch events (envd 0.6.3)")
	}
	sc, stop, err := openWatch(ctx, e, e.resolve(req.Msg.GetPath()), req.Msg.GetRecursive())
	if err != nil {
		return rpcErr("watch the directory", err)
	}
	defer stop()
	if err := stream.Send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Start{Start: &pb.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	lines := make(chan []byte, 16)
	go func() {
		defer close(lines)
		for sc.Scan() {
			select {
			case lines <- append([]byte(nil), sc.Bytes()...):
			case <-ctx.Done():
				return
			}
		}
	}()
	tick := time.NewTicker(keepalive(req.Header()))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return connect.NewError(connect.CodeDeadlineExceeded, errors.New("the watch's timeout passed"))
			}
			return nil
		case <-tick.C:
			if err := stream.Send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Keepalive{Keepalive: &pb.WatchDirResponse_KeepAlive{}}}); err != nil {
				return err
			}
		case line, ok := <-lines:
			if !ok {
				return nil
			}
			var ev watchEvent
			if json.Unmarshal(line, &ev) != nil {
				continue
			}
			switch ev.Type {
			case "end", "detached":
				return nil
			}
			for _, fe := range fsEvents(ev) {
				if err := stream.Send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Filesystem{Filesystem: fe}}); err != nil {
					return err
				}
			}
		}
	}
}

// The polling watcher: CreateWatcher starts a native watch whose events
// are kept (bounded) until GetWatcherEvents takes them.

const (
	maxPollWatchers      = 256
	maxPollWatcherEvents = 16384
	pollWatcherIdle      = 10 * time.Minute
)

type watcherRegistry struct {
	mu sync.Mutex
	m  map[string]*pollWatcher
}

type pollWatcher struct {
	account, sandbox string
	mu               sync.Mutex
	events           []*pb.FilesystemEvent
	overflow         bool
	ended            bool
	lastPoll         time.Time
	stop             func()
}

func (f *filesystemService) CreateWatcher(ctx context.Context, req *connect.Request[pb.CreateWatcherRequest]) (*connect.Response[pb.CreateWatcherResponse], error) {
	e := envdFrom(ctx)
	if req.Msg.GetIncludeEntry() {
		return nil, unimplemented("entry info in watch events (envd 0.6.3)")
	}
	reg := &f.s.watchers
	reg.mu.Lock()
	n := len(reg.m)
	reg.mu.Unlock()
	if n >= maxPollWatchers {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("at most %d polling watchers at a time: remove some", maxPollWatchers))
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	sc, stop, err := openWatch(wctx, e, e.resolve(req.Msg.GetPath()), req.Msg.GetRecursive())
	if err != nil {
		cancel()
		return nil, rpcErr("watch the directory", err)
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	w := &pollWatcher{account: e.c.account, sandbox: e.sandbox, lastPoll: time.Now(), stop: func() { cancel(); stop() }}
	reg.mu.Lock()
	reg.m[id] = w
	reg.mu.Unlock()
	// A watcher nobody polled for pollWatcherIdle is dropped.
	var idle *time.Timer
	idle = time.AfterFunc(pollWatcherIdle, func() {
		w.mu.Lock()
		left := pollWatcherIdle - time.Since(w.lastPoll)
		w.mu.Unlock()
		if _, ok := f.s.watchers.getID(id); ok && left > 0 {
			idle.Reset(left)
			return
		}
		f.s.watchers.remove(id)
	})
	go func() {
		for sc.Scan() {
			var ev watchEvent
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				continue
			}
			w.mu.Lock()
			if ev.Type == "end" || ev.Type == "detached" {
				w.ended = true
			}
			for _, fe := range fsEvents(ev) {
				if len(w.events) >= maxPollWatcherEvents {
					w.overflow = true
					break
				}
				w.events = append(w.events, fe)
			}
			w.mu.Unlock()
		}
		w.mu.Lock()
		w.ended = true
		w.mu.Unlock()
	}()
	return connect.NewResponse(&pb.CreateWatcherResponse{WatcherId: id}), nil
}

func (r *watcherRegistry) remove(id string) {
	r.mu.Lock()
	w := r.m[id]
	delete(r.m, id)
	r.mu.Unlock()
	if w != nil {
		w.stop()
	}
}

func (r *watcherRegistry) getID(id string) (*pollWatcher, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w, ok := r.m[id]
	return w, ok
}

func (r *watcherRegistry) get(e *envdCtx, id string) (*pollWatcher, error) {
	r.mu.Lock()
	w := r.m[id]
	r.mu.Unlock()
	if w == nil || w.account != e.c.account || w.sandbox != e.sandbox {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no watcher %q in this sandbox", id))
	}
	return w, nil
}

func (f *filesystemService) GetWatcherEvents(ctx context.Context, req *connect.Request[pb.GetWatcherEventsRequest]) (*connect.Response[pb.GetWatcherEventsResponse], error) {
	e := envdFrom(ctx)
	w, err := f.s.watchers.get(e, req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	evs, overflow, ended := w.events, w.overflow, w.ended
	w.events, w.overflow, w.lastPoll = nil, false, time.Now()
	w.mu.Unlock()
	if overflow {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("more than %d events between two polls: some were dropped; poll more often", maxPollWatcherEvents))
	}
	if len(evs) == 0 && ended {
		f.s.watchers.remove(req.Msg.GetWatcherId())
		return nil, connect.NewError(connect.CodeNotFound, errors.New("the watch ended: the directory was removed or the sandbox paused or stopped"))
	}
	return connect.NewResponse(&pb.GetWatcherEventsResponse{Events: evs}), nil
}

func (f *filesystemService) RemoveWatcher(ctx context.Context, req *connect.Request[pb.RemoveWatcherRequest]) (*connect.Response[pb.RemoveWatcherResponse], error) {
	e := envdFrom(ctx)
	if _, err := f.s.watchers.get(e, req.Msg.GetWatcherId()); err != nil {
		return nil, err
	}
	f.s.watchers.remove(req.Msg.GetWatcherId())
	return connect.NewResponse(&pb.RemoveWatcherResponse{}), nil
}
