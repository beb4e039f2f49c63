package gvisor

import (
	"context"
	"errors"
	"time"

	"github.com/orkestr-eu/orkestr/internal/agent/client"
	"github.com/orkestr-eu/orkestr/internal/agent/wire"
	"github.com/orkestr-eu/orkestr/internal/runtime"
)

var _ runtime.Processes = (*sandbox)(nil)

func procInfo(p wire.ProcInfo) runtime.ProcessInfo {
	out := runtime.ProcessInfo{
		PID: p.PID, Command: p.Command, Cwd: p.Cwd, User: p.User,
		StartedAt: time.Unix(0, p.StartedNS).UTC(), Running: p.Running, ExitCode: p.ExitCode, Signal: p.Signal,
	}
	if p.EndedNS != 0 {
		t := time.Unix(0, p.EndedNS).UTC()
		out.EndedAt = &t
	}
	return out
}

func (sb *sandbox) StartProcess(ctx context.Context, r runtime.ProcessRequest) (runtime.ProcessInfo, error) {
	if err := sb.begin(); err != nil {
		return runtime.ProcessInfo{}, err
	}
	defer sb.end()
	p, err := sb.ch.StartProcess(ctx, wire.Exec{Command: r.Command, Env: r.Env, Cwd: r.Cwd, User: r.User})
	if err != nil {
		return runtime.ProcessInfo{}, sb.mapErr(err)
	}
	return procInfo(p), nil
}

func (sb *sandbox) ListProcesses(ctx context.Context) ([]runtime.ProcessInfo, error) {
	if err := sb.begin(); err != nil {
		return nil, err
	}
	defer sb.end()
	ps, err := sb.ch.Processes(ctx)
	if err != nil {
		return nil, sb.mapErr(err)
	}
	out := make([]runtime.ProcessInfo, len(ps))
	for i, p := range ps {
		out[i] = procInfo(p)
	}
	return out, nil
}

func (sb *sandbox) ProcessInput(ctx context.Context, pid int, data []byte, closeStdin bool) error {
	if err := sb.begin(); err != nil {
		return err
	}
	defer sb.end()
	return sb.mapErr(sb.ch.ProcessInput(ctx, pid, data, closeStdin))
}

func (sb *sandbox) SignalProcess(ctx context.Context, pid, signal int) error {
	if err := sb.begin(); err != nil {
		return err
	}
	defer sb.end()
	return sb.mapErr(sb.ch.SignalProcess(ctx, pid, signal))
}

// AttachProcess is not a call in flight for a pause (it would hold the
// pause for as long as the process runs): a pause or a stop ends it with
// runtime.ErrDetached instead.
func (sb *sandbox) AttachProcess(ctx context.Context, pid int, replay bool, out runtime.ProcessOutput) (runtime.ProcessInfo, error) {
	long, err := sb.longCall()
	if err != nil {
		return runtime.ProcessInfo{}, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(long, func() { cancel(runtime.ErrDetached) })
	defer stop()
	p, err := sb.ch.AttachProcess(ctx, pid, replay, client.AttachIO{Stdout: out.Stdout, Stderr: out.Stderr, Dropped: out.Dropped, Attached: out.Attached})
	if err != nil {
		if errors.Is(context.Cause(ctx), runtime.ErrDetached) {
			return runtime.ProcessInfo{}, runtime.ErrDetached
		}
		return runtime.ProcessInfo{}, sb.mapErr(err)
	}
	return procInfo(p), nil
}

// longCall admits a call that may run for ever and returns the context
// that ends it at a pause or a stop.
func (sb *sandbox) longCall() (context.Context, error) {
	if err := sb.begin(); err != nil {
		return nil, err
	}
	sb.mu.Lock()
	long := sb.long
	sb.mu.Unlock()
	sb.end()
	return long, nil
}
