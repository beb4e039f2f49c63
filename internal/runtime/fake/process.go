package fake

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// inbuf is a command's standard input: written by the host, read by the
// command, ended by the host (closeWrite) or by a kill.
type inbuf struct {
	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	max    int
	block  bool  // a full buffer blocks the writer (else it refuses)
	eof    error // set once the writer is done
	killed error
}

func newInbuf(max int, block bool) *inbuf {
	b := &inbuf{max: max, block: block}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *inbuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.buf)+len(p) > b.max && b.killed == nil && b.eof == nil {
		if !b.block {
			return 0, fmt.Errorf("%w: the process's input buffer is full", runtime.ErrBusy)
		}
		if len(b.buf) == 0 {
			break // one oversized write goes in whole
		}
		b.cond.Wait()
	}
	if b.killed != nil {
		return 0, b.killed
	}
	if b.eof != nil {
		return 0, errors.New("input closed")
	}
	b.buf = append(b.buf, p...)
	b.cond.Broadcast()
	return len(p), nil
}

func (b *inbuf) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.buf) == 0 && b.eof == nil && b.killed == nil {
		b.cond.Wait()
	}
	if b.killed != nil {
		return 0, b.killed
	}
	if len(b.buf) == 0 {
		return 0, b.eof
	}
	n := copy(p, b.buf)
	b.buf = b.buf[n:]
	b.cond.Broadcast()
	return n, nil
}

func (b *inbuf) closeWrite(err error) {
	b.mu.Lock()
	if b.eof == nil {
		b.eof = err
	}
	b.cond.Broadcast()
	b.mu.Unlock()
}

func (b *inbuf) kill(err error) {
	b.mu.Lock()
	if b.killed == nil {
		b.killed = err
	}
	b.cond.Broadcast()
	b.mu.Unlock()
}

// pending returns what was written and not yet read, and whether the input
// was closed.
func (b *inbuf) pending() ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf...), b.eof != nil
}

// chunk is a piece of a process's output: stream 1 stdout, 2 stderr.
type chunk struct {
	Stream int
	Data   []byte
}

// maxOutput bounds a process's kept output.
const maxOutput = 1 << 20

// procState is a background process as a checkpoint keeps it.
type procState struct {
	Info        runtime.ProcessInfo
	Command     string
	Env         map[string]string
	Step        int // the command of the script it was running
	Output      []chunk
	First       int64 // sequence number of Output[0]
	Dropped     int64 // output bytes dropped from the front
	Stdin       []byte
	StdinClosed bool
}

// process is a background process: a script run by the interpreter in a
// goroutine of its own.
type process struct {
	mu      sync.Mutex
	st      procState
	changed chan struct{} // closed and replaced on every change
	in      *inbuf
	k       *killer
}

func (p *process) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// output is one stream of a process, kept in its bounded buffer.
type output struct {
	p      *process
	stream int
}

func (o output) Write(b []byte) (int, error) {
	p := o.p
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st.Output = append(p.st.Output, chunk{Stream: o.stream, Data: append([]byte(nil), b...)})
	size := 0
	for _, c := range p.st.Output {
		size += len(c.Data)
	}
	for size > maxOutput && len(p.st.Output) > 1 {
		size -= len(p.st.Output[0].Data)
		p.st.Dropped += int64(len(p.st.Output[0].Data))
		p.st.Output = p.st.Output[1:]
		p.st.First++
	}
	p.notifyLocked()
	return len(b), nil
}

// StartProcess implements runtime.Processes.
func (sb *Sandbox) StartProcess(ctx context.Context, r runtime.ProcessRequest) (runtime.ProcessInfo, error) {
	if err := ctx.Err(); err != nil {
		return runtime.ProcessInfo{}, err
	}
	if err := sb.begin(); err != nil {
		return runtime.ProcessInfo{}, err
	}
	if _, _, err := sb.prepare(r.Command, r.Env, r.Cwd, r.User); err != nil {
		return runtime.ProcessInfo{}, err
	}
	cwd, user := r.Cwd, r.User
	if cwd == "" {
		cwd = "/workspace"
	}
	if user == "" {
		user = runtime.UserRoot
	}
	sb.mu.Lock()
	sb.st.NextPID++
	pid := sb.st.NextPID
	sb.mu.Unlock()
	st := procState{
		Info:    runtime.ProcessInfo{PID: pid, Command: r.Command, Cwd: cwd, User: user, StartedAt: time.Now().UTC(), Running: true},
		Command: r.Command, Env: copyMap(r.Env),
	}
	p, err := sb.launch(st, nil, false)
	if err != nil {
		return runtime.ProcessInfo{}, err
	}
	return p.info(), nil
}

// launch runs a process from its state (from its step, with stdin already
// given) and registers it.
func (sb *Sandbox) launch(st procState, stdin []byte, stdinClosed bool) (*process, error) {
	sh, cmds, err := sb.prepare(st.Command, st.Env, st.Info.Cwd, st.Info.User)
	if err != nil {
		return nil, err
	}
	p := &process{st: st, changed: make(chan struct{}), in: newInbuf(4<<20, false)}
	if len(stdin) > 0 {
		_, _ = p.in.Write(stdin)
	}
	if stdinClosed {
		p.in.closeWrite(io.EOF)
	}
	p.k = newKiller(p.in)
	sh.stdin, sh.stdout, sh.stderr = p.in, output{p, 1}, output{p, 2}
	sh.killed, sh.sig = p.k.ch, p.k.signal
	id := sb.track(p.k.kill)
	sb.mu.Lock()
	sb.procs[st.Info.PID] = p
	if !slices.Contains(sb.procOrder, st.Info.PID) {
		sb.procOrder = append(sb.procOrder, st.Info.PID)
	}
	sb.mu.Unlock()
	if !st.Info.Running {
		sb.untrack(id)
		return p, nil
	}
	go func() {
		defer sb.untrack(id)
		res := sh.run(cmds, st.Step, func(i int) {
			p.mu.Lock()
			p.st.Step = i
			p.mu.Unlock()
		})
		p.in.kill(errKilled)
		sb.mu.Lock()
		stopped := sb.stopErr != nil
		sb.mu.Unlock()
		if stopped {
			return // a stop (checkpoint, destroy, crash) is not an exit
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		now := time.Now().UTC()
		code := res.Code
		p.st.Info.Running, p.st.Info.ExitCode, p.st.Info.Signal, p.st.Info.EndedAt = false, &code, res.Signal, &now
		p.notifyLocked()
	}()
	return p, nil
}

func (p *process) info() runtime.ProcessInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st.Info
}

func (sb *Sandbox) proc(pid int) (*process, error) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopErr != nil {
		return nil, sb.stopErr
	}
	p, ok := sb.procs[pid]
	if !ok {
		return nil, fmt.Errorf("%w: %s", runtime.ErrNoProcess, procLabel(pid))
	}
	return p, nil
}

// ListProcesses implements runtime.Processes.
func (sb *Sandbox) ListProcesses(ctx context.Context) ([]runtime.ProcessInfo, error) {
	sb.mu.Lock()
	if sb.stopErr != nil {
		defer sb.mu.Unlock()
		return nil, sb.stopErr
	}
	ps := make([]*process, 0, len(sb.procOrder))
	for _, pid := range sb.procOrder {
		ps = append(ps, sb.procs[pid])
	}
	sb.mu.Unlock()
	out := make([]runtime.ProcessInfo, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.info())
	}
	return out, nil
}

// AttachProcess implements runtime.Processes.
func (sb *Sandbox) AttachProcess(ctx context.Context, pid int, replay bool, out runtime.ProcessOutput) (runtime.ProcessInfo, error) {
	p, err := sb.proc(pid)
	if err != nil {
		return runtime.ProcessInfo{}, err
	}
	p.mu.Lock()
	next := p.st.First + int64(len(p.st.Output))
	if replay {
		next = p.st.First
		if p.st.Dropped > 0 && out.Dropped != nil {
			defer out.Dropped(p.st.Dropped)
		}
	}
	p.mu.Unlock()
	if out.Attached != nil {
		out.Attached()
	}
	for {
		p.mu.Lock()
		var pending []chunk
		if next < p.st.First {
			next = p.st.First
		}
		if i := int(next - p.st.First); i < len(p.st.Output) {
			pending = p.st.Output[i:]
		}
		next += int64(len(pending))
		info, changed := p.st.Info, p.changed
		p.mu.Unlock()
		for _, c := range pending {
			w := out.Stdout
			if c.Stream == 2 {
				w = out.Stderr
			}
			if w != nil {
				if _, err := w.Write(c.Data); err != nil {
					return runtime.ProcessInfo{}, err
				}
			}
		}
		if !info.Running && len(pending) == 0 {
			return info, nil
		}
		if len(pending) > 0 {
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return runtime.ProcessInfo{}, ctx.Err()
		case <-sb.long.Done():
			return runtime.ProcessInfo{}, runtime.ErrDetached
		}
	}
}

// ProcessInput implements runtime.Processes.
func (sb *Sandbox) ProcessInput(ctx context.Context, pid int, data []byte, closeStdin bool) error {
	p, err := sb.proc(pid)
	if err != nil {
		return err
	}
	if len(data) > 0 {
		if _, err := p.in.Write(data); err != nil {
			if errors.Is(err, runtime.ErrBusy) {
				return err
			}
			return fmt.Errorf("%w: %s no longer reads its input", runtime.ErrNoProcess, procLabel(pid))
		}
	}
	if closeStdin {
		p.in.closeWrite(io.EOF)
	}
	return nil
}

// SignalProcess implements runtime.Processes.
func (sb *Sandbox) SignalProcess(ctx context.Context, pid, signal int) error {
	p, err := sb.proc(pid)
	if err != nil {
		return err
	}
	if signal <= 0 || signal > 64 {
		return fmt.Errorf("%w: signal %d", runtime.ErrInvalidRequest, signal)
	}
	if signal == int(syscall.SIGCHLD) || signal == int(syscall.SIGWINCH) || signal == int(syscall.SIGURG) {
		return nil // ignored by default
	}
	p.k.kill(signal)
	return nil
}

// resumeProcesses starts a restored sandbox's processes again.
func (sb *Sandbox) resumeProcesses() {
	sb.mu.Lock()
	saved := sb.st.Procs
	sb.st.Procs = nil
	sb.mu.Unlock()
	for _, ps := range saved {
		stdin, closed := ps.Stdin, ps.StdinClosed
		ps.Stdin, ps.StdinClosed = nil, false
		if _, err := sb.launch(ps, stdin, closed); err != nil {
			// Cannot happen for a state this package wrote: its command was
			// accepted once. Keep it listed as ended.
			code := 128 + int(syscall.SIGKILL)
			ps.Info.Running, ps.Info.ExitCode = false, &code
			sb.mu.Lock()
			sb.procs[ps.Info.PID] = &process{st: ps, changed: make(chan struct{}), in: newInbuf(0, false), k: newKiller(nil)}
			sb.procOrder = append(sb.procOrder, ps.Info.PID)
			sb.mu.Unlock()
		}
	}
}

// saveProcesses is the processes' state for a checkpoint.
func (sb *Sandbox) saveProcesses() []procState {
	sb.mu.Lock()
	ps := make([]*process, 0, len(sb.procOrder))
	for _, pid := range sb.procOrder {
		ps = append(ps, sb.procs[pid])
	}
	sb.mu.Unlock()
	out := make([]procState, 0, len(ps))
	for _, p := range ps {
		p.mu.Lock()
		st := p.st
		st.Output = slices.Clone(p.st.Output)
		p.mu.Unlock()
		st.Stdin, st.StdinClosed = p.in.pending()
		out = append(out, st)
	}
	return out
}
