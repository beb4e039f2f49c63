package agent

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// outputGrace is how long output is still collected after the command's own
// process exits, for children that inherited its pipes. Background processes
// that keep the pipes open longer do not hold the exec open; a pipe nothing
// holds any more is read to its end (see outputPipe.Read).
const outputGrace = 50 * time.Millisecond

// exec runs one command and says whether the stream can carry the next
// request: the host answered the exit with KindDone, or the command was
// refused before it started and the host sends nothing after a request
// without stdin. (The host streams stdin without waiting for a start
// acknowledgement, so after a refused exec with stdin the stream may hold
// stdin frames and is not reused.)
func (a *Agent) exec(e *wire.Exec, r *wire.Reader, w *wire.Writer) (reusable bool) {
	reusableIfRefused := !e.Stdin
	for k, v := range e.Env {
		if err := validEnvKey(k); err != nil {
			_ = w.Err(wire.CodeBadRequest, err.Error())
			return reusableIfRefused
		}
		if strings.ContainsRune(v, 0) {
			_ = w.Err(wire.CodeBadRequest, fmt.Sprintf("environment variable %s contains NUL", k))
			return reusableIfRefused
		}
	}
	if strings.ContainsRune(e.Command, 0) {
		_ = w.Err(wire.CodeBadRequest, "command contains NUL")
		return reusableIfRefused
	}
	cwd := e.Cwd
	if cwd == "" {
		cwd = "/workspace"
	}
	if fi, err := os.Stat(cwd); err != nil || !fi.IsDir() {
		_ = w.Err(wire.CodeNotFound, fmt.Sprintf("working directory %s does not exist or is not a directory", cwd))
		return reusableIfRefused
	}

	stop, err := newPipeStop()
	if err != nil {
		_ = w.Err(wire.CodeInternal, fmt.Sprintf("cannot set up the command's output: %v", err))
		return reusableIfRefused
	}
	defer stop.close()
	p, start, err := a.startCommand(e, cwd)
	if err != nil {
		sendStartErr(w, err)
		return reusableIfRefused
	}
	pid, exited, stdinW := p.pid, p.exited, p.stdinW
	outR, oerr := newOutputPipe(p.outR, stop)
	errR, eerr := newOutputPipe(p.errR, stop)
	if err := errors.Join(oerr, eerr); err != nil {
		// Out of descriptors: the command cannot run without its output.
		killTree(pid)
		killGroup(p.cgroup)
		<-exited
		p.closeStatus()
		for _, o := range []*outputPipe{outR, errR} {
			if o != nil {
				o.Close()
			}
		}
		if stdinW != nil {
			stdinW.Close()
		}
		sendStartErr(w, fmt.Errorf("cannot set up the command's output: %w", err))
		a.refillZygote()
		return false
	}
	if !e.Stdin && stdinW != nil {
		stdinW.Close()
		stdinW = nil
	}

	var wmu sync.Mutex // frames from several goroutines share one stream
	send := func(k wire.Kind, b []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		return w.Frame(k, b)
	}
	var pumps sync.WaitGroup
	pump := func(out *outputPipe, k wire.Kind) {
		defer pumps.Done()
		defer out.Close()
		pumpOutput(out, func(b []byte) error { return send(k, b) })
	}
	pumps.Add(2)
	go pump(outR, wire.KindStdout)
	go pump(errR, wire.KindStderr)

	// Frames from the host: stdin, signals, KindDone after the exit, or the
	// stream breaking because the caller went away, which kills the command.
	hostGone := make(chan struct{})
	hostDone := false
	go func() {
		defer close(hostGone)
		defer func() {
			if stdinW != nil {
				stdinW.Close()
			}
		}()
		for {
			k, b, err := r.Next()
			if err != nil {
				return
			}
			switch k {
			case wire.KindStdin:
				if stdinW != nil {
					if _, err := stdinW.Write(b); err != nil {
						stdinW.Close()
						stdinW = nil
					}
				}
			case wire.KindEOF:
				if stdinW != nil {
					stdinW.Close()
					stdinW = nil
				}
			case wire.KindSignal:
				if len(b) == 1 {
					_ = unix.Kill(-pid, unix.Signal(b[0]))
				}
			case wire.KindDone:
				hostDone = true
				return
			}
		}
	}()

	var timeout <-chan time.Time
	if e.TimeoutMS > 0 {
		t := time.NewTimer(time.Duration(e.TimeoutMS) * time.Millisecond)
		defer t.Stop()
		timeout = t.C
	}
	var ws unix.WaitStatus
	timedOut, reported := false, false
	var reportedCode int
	select {
	case code := <-p.watchStatus():
		reported, reportedCode = true, code
		go func() { <-exited; p.closeStatus() }()
	case ws = <-exited:
	case <-timeout:
		timedOut = true
		killTree(pid)
		killGroup(p.cgroup)
		ws = <-exited
	case <-hostGone:
		killTree(pid)
		killGroup(p.cgroup)
		ws = <-exited
	}
	if !reported {
		p.closeStatus()
	}
	dur := time.Since(start)
	// Children that inherited the pipes may keep them open: what they
	// write within the grace is collected, then what the pipes hold.
	grace := time.AfterFunc(outputGrace, stop.give)
	pumps.Wait()
	grace.Stop()

	st := wire.ExitStatus{DurationMS: dur.Milliseconds(), TimedOut: timedOut}
	switch {
	case reported:
		st.ExitCode = reportedCode
	case ws.Exited():
		st.ExitCode = ws.ExitStatus()
	case ws.Signaled():
		st.Signal = int(ws.Signal())
		st.ExitCode = 128 + int(ws.Signal())
	default:
		st.ExitCode = -1
	}
	if p.cgroup != "" {
		_, st.OOMKilled = a.oomGroups.LoadAndDelete(p.cgroup)
	}
	wmu.Lock()
	err = w.JSON(wire.KindExit, st)
	wmu.Unlock()
	// Start the next shell now that the command no longer needs the CPU.
	a.refillZygote()
	if err != nil {
		return false
	}
	<-hostGone
	return hostDone
}

// outputChunk is the most of a command's output one read takes and one
// frame carries: a command that writes fast fills the (grown) pipe, and
// each read and each frame is a trapped syscall in the sandbox.
const outputChunk = 1 << 20

// A bulk writer's output is gathered into frames of about gatherFor
// bytes (see outputPipe.gather). Each read costs the agent a trapped syscall and
// each frame a few more, a wakeup of the host and one of every client: a
// command writing 8 KiB at a time would otherwise cost a frame per write.
// A read of at least bulkRead bytes starts a gather: the pump looks again
// after gatherPoll, and sends once gatherFor bytes are in or gatherMax
// passed since the gather began. A look that finds nothing doubles the
// wait before the next, so a writer that paused costs a few wakeups, not
// one per gatherPoll. Output is thus delayed by at most gatherMax, and
// only while it arrives in bulk; a gatherPoll of a fast writer's output
// stays well under the pipe's size, so the writer is never held up by a
// full pipe (a pump that slept for a pace guessed from its last read,
// which the time it spent sending skewed, often was).
const (
	bulkRead   = 4 << 10
	gatherFor  = 256 << 10
	gatherPoll = time.Millisecond
	gatherMax  = 8 * time.Millisecond
)

// pumpOutput sends what out carries until it ends, was stopped and
// drained, or a send fails. (Gathering the next frame while one is sent,
// into a second buffer, was measured and made no difference: the sandbox's
// CPU is the limit, not the wait for the host.)
func pumpOutput(out *outputPipe, send func([]byte) error) {
	buf := make([]byte, outputChunk)
	for {
		chunk, err := out.gather(buf)
		if len(chunk) > 0 && send(chunk) != nil {
			return
		}
		if err != nil || out.full() {
			return
		}
	}
}

// pipeSize is asked for on the command's stdout and stderr pipes (64 KiB
// by default), so a fast writer blocks less often and the agent reads more
// per syscall. The pipe bounds what a stalled reader leaves in the sandbox.
const pipeSize = 1 << 20

// killTree kills pid, its process group and every descendant, including ones
// that moved to a group or session of their own. The tree is stopped first so
// nothing forks or reparents while it is collected.
func killTree(pid int) {
	_ = unix.Kill(-pid, unix.SIGSTOP)
	seen := map[int]bool{}
	for round := 0; round < 5; round++ {
		found := false
		for _, p := range descendants(pid) {
			if !seen[p] {
				seen[p] = true
				found = true
				_ = unix.Kill(p, unix.SIGSTOP)
			}
		}
		if !found {
			break
		}
	}
	_ = unix.Kill(-pid, unix.SIGKILL)
	_ = unix.Kill(pid, unix.SIGKILL)
	for p := range seen {
		_ = unix.Kill(p, unix.SIGKILL)
	}
}

// descendants lists every process below root according to /proc.
func descendants(root int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp := parentOf(p); pp > 0 {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	queue := []int{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

func parentOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name may contain spaces and parentheses; fields resume
	// after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	pp, _ := strconv.Atoi(f[1])
	return pp
}

// reaper collects every child of PID 1: the commands it starts, whose status
// it hands back, and orphans that reparent to it, which it only reaps.
//
// Starting a process must not hold a lock that delivering another command's
// exit needs, and a command that exits at once must not be reaped as an
// orphan before its pid is known. So registered pids are reaped by pid, and
// any-pid reaping (orphans) runs only while no start is in progress.
type reaper struct {
	mu       sync.Mutex
	waiters  map[int]chan unix.WaitStatus
	starting int
	sweep    chan struct{}
}

var (
	reaperOnce sync.Once
	theReaper  *reaper
)

// processReaper returns the process's one reaper: waiting for any child is
// process-wide, so two reapers would steal each other's exits.
func processReaper() *reaper {
	reaperOnce.Do(func() { theReaper = startReaper() })
	return theReaper
}

func startReaper() *reaper {
	rp := &reaper{waiters: map[int]chan unix.WaitStatus{}, sweep: make(chan struct{}, 1)}
	sig := make(chan os.Signal, 16)
	signal.Notify(sig, unix.SIGCHLD)
	go func() {
		for {
			select {
			case <-sig:
			case <-rp.sweep:
			}
			rp.reap()
		}
	}()
	return rp
}

func (rp *reaper) reap() {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	for pid, ch := range rp.waiters {
		var ws unix.WaitStatus
		if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); got == pid && err == nil {
			delete(rp.waiters, pid)
			ch <- ws
		}
	}
	if rp.starting > 0 {
		return // the start that finishes last sweeps
	}
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		if ch, ok := rp.waiters[pid]; ok {
			delete(rp.waiters, pid)
			ch <- ws
		}
	}
}

// start starts a process and returns a channel that receives its exit
// status.
func (rp *reaper) start(path string, argv []string, attr *os.ProcAttr) (int, <-chan unix.WaitStatus, error) {
	rp.mu.Lock()
	rp.starting++
	rp.mu.Unlock()
	p, err := os.StartProcess(path, argv, attr)
	if attr.Sys != nil && attr.Sys.Credential != nil && attr.Sys.Credential.Uid != 0 {
		restoreDumpable()
	}
	rp.mu.Lock()
	defer rp.mu.Unlock()
	rp.starting--
	if rp.starting == 0 {
		// Orphans may have exited while sweeping was held off.
		select {
		case rp.sweep <- struct{}{}:
		default:
		}
	}
	if err != nil {
		return 0, nil, err
	}
	pid := p.Pid
	_ = p.Release()
	ch := make(chan unix.WaitStatus, 1)
	var ws unix.WaitStatus
	if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); got == pid && err == nil {
		ch <- ws // it already ended
		return pid, ch, nil
	}
	rp.waiters[pid] = ch
	return pid, ch, nil
}

// killGroupOf sends SIGKILL to the process group pid leads, unless pid has
// been reaped: its number may belong to another process by then. Holding
// the lock keeps the reaper from collecting it in between.
func (rp *reaper) killGroupOf(pid int) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if _, waiting := rp.waiters[pid]; waiting {
		_ = unix.Kill(-pid, unix.SIGKILL)
	}
}
