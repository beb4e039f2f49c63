package gvisor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
	"github.com/orkestr-eu/orkestr/internal/runtime"
)

var _ runtime.FileOps = (*sandbox)(nil)

func wireFS(r runtime.FSRequest) wire.FS {
	return wire.FS{Path: r.Path, Dest: r.Dest, Parents: r.Parents, Overwrite: r.Overwrite, Recursive: r.Recursive, Mode: r.Mode, User: r.User}
}

func statOf(s wire.Stat) runtime.Stat {
	ts := func(ns int64) time.Time {
		if ns == 0 {
			return time.Time{}
		}
		return time.Unix(0, ns).UTC()
	}
	return runtime.Stat{
		Exists: s.Exists, Name: s.Name, Path: s.Path, Type: s.Type, Size: s.Size, Mode: s.Mode, UID: s.UID, GID: s.GID,
		Owner: s.Owner, Group: s.Group, Accessed: ts(s.AccessNS), Modified: ts(s.ModifyNS), Changed: ts(s.ChangeNS), Target: s.Target,
	}
}

// fsErr maps the codes of the extended file calls, then as mapErr does.
func (sb *sandbox) fsErr(err error) error {
	var we *wire.Error
	if errors.As(err, &we) {
		switch we.Code {
		case wire.CodeExists:
			return fmt.Errorf("%w: %s", runtime.ErrExists, we.Message)
		case wire.CodeCrossDevice:
			return fmt.Errorf("%w: %s", runtime.ErrCrossDevice, we.Message)
		}
	}
	return sb.mapErr(err)
}

func (sb *sandbox) fsCall(ctx context.Context, r runtime.FSRequest, call func(context.Context, wire.FS) (wire.Stat, error)) (runtime.Stat, error) {
	if err := checkPath(r.Path); err != nil {
		return runtime.Stat{}, err
	}
	if r.Dest != "" {
		if err := checkPath(r.Dest); err != nil {
			return runtime.Stat{}, err
		}
	}
	if err := sb.begin(); err != nil {
		return runtime.Stat{}, err
	}
	defer sb.end()
	st, err := call(ctx, wireFS(r))
	if err != nil {
		return runtime.Stat{}, sb.fsErr(err)
	}
	return statOf(st), nil
}

func (sb *sandbox) StatPath(ctx context.Context, r runtime.FSRequest) (runtime.Stat, error) {
	return sb.fsCall(ctx, r, sb.ch.StatX)
}

func (sb *sandbox) Exists(ctx context.Context, r runtime.FSRequest) (runtime.Stat, error) {
	return sb.fsCall(ctx, r, sb.ch.Exists)
}

func (sb *sandbox) Mkdir(ctx context.Context, r runtime.FSRequest) (runtime.Stat, error) {
	return sb.fsCall(ctx, r, sb.ch.Mkdir)
}

func (sb *sandbox) Rename(ctx context.Context, r runtime.FSRequest) (runtime.Stat, error) {
	if err := checkPath(r.Dest); err != nil {
		return runtime.Stat{}, err
	}
	return sb.fsCall(ctx, r, sb.ch.Rename)
}

// Watch is, like AttachProcess, not a call a pause waits for: a pause or a
// stop ends it with runtime.ErrDetached.
func (sb *sandbox) Watch(ctx context.Context, r runtime.FSRequest, started func(int), onEvent func(runtime.WatchEvent) error) error {
	if err := checkPath(r.Path); err != nil {
		return err
	}
	long, err := sb.longCall()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(long, func() { cancel(runtime.ErrDetached) })
	defer stop()
	err = sb.ch.Watch(ctx, wireFS(r), func(s wire.WatchStarted) {
		if started != nil {
			started(s.Dirs)
		}
	}, func(ev wire.WatchEvent) error {
		return onEvent(runtime.WatchEvent{Type: ev.Type, Path: ev.Path, From: ev.From, IsDir: ev.IsDir})
	})
	if err != nil && errors.Is(context.Cause(ctx), runtime.ErrDetached) {
		return runtime.ErrDetached
	}
	if err != nil && ctx.Err() == nil {
		return sb.fsErr(err)
	}
	return err
}
