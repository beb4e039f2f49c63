package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// StartProcess starts e in the background and returns at once with its
// info (the pid is the command's own whenever it is one program).
func (c *Channel) StartProcess(ctx context.Context, e wire.Exec) (wire.ProcInfo, error) {
	var out wire.ProcInfo
	err := c.call(ctx, &wire.Request{Op: wire.OpProcStart, Exec: &e}, &out)
	return out, err
}

// Processes lists the processes started with StartProcess.
func (c *Channel) Processes(ctx context.Context) ([]wire.ProcInfo, error) {
	var out wire.ProcList
	err := c.call(ctx, &wire.Request{Op: wire.OpProcList}, &out)
	return out.Processes, err
}

// ProcessInput writes data to a process's stdin, then closes it if
// closeStdin.
func (c *Channel) ProcessInput(ctx context.Context, pid int, data []byte, closeStdin bool) error {
	var out struct{}
	return c.call(ctx, &wire.Request{Op: wire.OpProcInput, Proc: &wire.Proc{PID: pid, Data: data, CloseStdin: closeStdin}}, &out)
}

// SignalProcess sends sig to a process's group.
func (c *Channel) SignalProcess(ctx context.Context, pid, sig int) error {
	var out struct{}
	return c.call(ctx, &wire.Request{Op: wire.OpProcSignal, Proc: &wire.Proc{PID: pid, Signal: sig}}, &out)
}

// AttachIO receives a process's output as it is produced. Dropped, if set,
// is told how many bytes a slow reader missed (overwritten in the
// process's buffer before they were read). Attached, if set, is called
// once the agent has taken the attach's place in the output, before any of
// it: everything the process writes from then on reaches Stdout and
// Stderr. An agent older than the acknowledgment never calls it.
type AttachIO struct {
	Stdout   io.Writer
	Stderr   io.Writer
	Dropped  func(n int64)
	Attached func()
}

// AttachProcess streams a process's output (from the oldest byte still
// buffered with replay, else from now) until it ends, and returns its
// final info. Without output (both writers nil) it only waits. Ending ctx
// detaches; the process goes on.
func (c *Channel) AttachProcess(ctx context.Context, pid int, replay bool, aio AttachIO) (wire.ProcInfo, error) {
	noOutput := aio.Stdout == nil && aio.Stderr == nil && aio.Dropped == nil
	r, _, end, err := c.stream(ctx, &wire.Request{Op: wire.OpProcAttach, Proc: &wire.Proc{PID: pid, Replay: replay, NoOutput: noOutput}})
	if err != nil {
		return wire.ProcInfo{}, err
	}
	defer end(false)
	for {
		k, b, err := next(ctx, r)
		if err != nil {
			return wire.ProcInfo{}, c.wrap(ctx, err)
		}
		switch k {
		case wire.KindStdout, wire.KindStderr:
			w := aio.Stdout
			if k == wire.KindStderr {
				w = aio.Stderr
			}
			if w != nil {
				if _, err := w.Write(b); err != nil {
					return wire.ProcInfo{}, err
				}
			}
		case wire.KindJSON:
			var d wire.ProcNotice
			if json.Unmarshal(b, &d) != nil {
				break
			}
			if d.Attached && aio.Attached != nil {
				aio.Attached()
			}
			if aio.Dropped != nil && d.Dropped > 0 {
				aio.Dropped(d.Dropped)
			}
		case wire.KindExit:
			var info wire.ProcInfo
			if err := json.Unmarshal(b, &info); err != nil {
				return info, err
			}
			return info, nil
		case wire.KindError:
			return wire.ProcInfo{}, wire.DecodeError(b)
		default:
			return wire.ProcInfo{}, fmt.Errorf("agent sent unexpected frame %q", k)
		}
	}
}
