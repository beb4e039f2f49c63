package agent

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// Background processes are started by one request and then live on their
// own: their output goes into a bounded buffer that any number of later
// requests can attach to (from now, or replayed from the oldest byte kept),
// their stdin stays open for later writes, and neither a stream that breaks
// nor the host going away (a restart, a checkpoint) touches them. The table
// is agent memory, so a checkpoint saves it with the processes.

// procOutputBuffer bounds the output kept per process. A process that
// writes faster than anyone reads overwrites its oldest output; it is never
// slowed down and the agent's memory does not grow.
const procOutputBuffer = 1 << 20

// maxEndedProcs bounds how many ended processes stay listed.
const maxEndedProcs = 64

// maxRunningProcs bounds the running background processes, and with them
// the memory their output buffers can take (the sandbox's own memory).
const maxRunningProcs = 256

// stdinWriteTimeout bounds a write to a process that does not read its
// stdin (its pipe is full).
const stdinWriteTimeout = 10 * time.Second

type procTable struct {
	mu    sync.Mutex
	procs map[int]*bgProc
}

// bgProc is one background process.
type bgProc struct {
	info wire.ProcInfo // guarded by mu

	mu      sync.Mutex
	out     outputRing
	changed chan struct{} // closed and replaced whenever output or state changes
	done    bool          // exited and its output fully read
	stdin   *os.File      // nil once closed
	stdinMu sync.Mutex    // serialises writes to stdin
	cgroup  string
}

// outputRing keeps the newest procOutputBuffer bytes of a process's
// output as chunks, each with its absolute offset in the output.
type outputRing struct {
	chunks []outChunk
	size   int   // bytes held
	end    int64 // offset just past the newest byte
}

type outChunk struct {
	kind wire.Kind
	off  int64
	data []byte
}

func (r *outputRing) add(k wire.Kind, b []byte) {
	r.chunks = append(r.chunks, outChunk{kind: k, off: r.end, data: append([]byte(nil), b...)})
	r.size += len(b)
	r.end += int64(len(b))
	for r.size-len(r.chunks[0].data) >= procOutputBuffer {
		r.size -= len(r.chunks[0].data)
		r.chunks[0] = outChunk{}
		r.chunks = r.chunks[1:]
	}
	if cut := r.size - procOutputBuffer; cut > 0 { // keep exactly the newest bytes
		c := &r.chunks[0]
		c.data = append([]byte(nil), c.data[cut:]...)
		c.off += int64(cut)
		r.size = procOutputBuffer
	}
}

// start is the offset of the oldest byte held.
func (r *outputRing) start() int64 { return r.end - int64(r.size) }

// since returns the chunks at or after offset from (trimmed), the offset
// after them, and how many bytes between from and the oldest byte held
// were overwritten.
func (r *outputRing) since(from int64) (out []outChunk, next int64, dropped int64) {
	if s := r.start(); from < s {
		dropped, from = s-from, s
	}
	for _, c := range r.chunks {
		cend := c.off + int64(len(c.data))
		if cend <= from {
			continue
		}
		if c.off < from {
			c = outChunk{kind: c.kind, off: from, data: c.data[from-c.off:]}
		}
		out = append(out, c)
	}
	return out, r.end, dropped
}

func (p *bgProc) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *bgProc) snapshot() wire.ProcInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.info
}

func sendStartErr(w *wire.Writer, err error) {
	var we *wire.Error
	if errors.As(err, &we) {
		_ = w.JSON(wire.KindError, we)
		return
	}
	if errors.Is(err, os.ErrPermission) {
		_ = w.Err(wire.CodePermission, "the user cannot enter the working directory: "+err.Error())
		return
	}
	_ = w.Err(wire.CodeInternal, err.Error())
}

// procStart starts e in the background and replies with its ProcInfo.
func (a *Agent) procStart(e *wire.Exec, w *wire.Writer) {
	if e == nil {
		_ = w.Err(wire.CodeBadRequest, "proc_start request without exec")
		return
	}
	for k, v := range e.Env {
		if err := validEnvKey(k); err != nil {
			_ = w.Err(wire.CodeBadRequest, err.Error())
			return
		}
		if strings.ContainsRune(v, 0) {
			_ = w.Err(wire.CodeBadRequest, fmt.Sprintf("environment variable %s contains NUL", k))
			return
		}
	}
	if e.Command == "" || strings.ContainsRune(e.Command, 0) {
		_ = w.Err(wire.CodeBadRequest, "command is empty or contains NUL")
		return
	}
	cwd := e.Cwd
	if cwd == "" {
		cwd = "/workspace"
	}
	if fi, err := os.Stat(cwd); err != nil || !fi.IsDir() {
		_ = w.Err(wire.CodeNotFound, fmt.Sprintf("working directory %s does not exist or is not a directory", cwd))
		return
	}
	if n := a.procs.running(); n >= maxRunningProcs {
		_ = w.Err(wire.CodeBadRequest, fmt.Sprintf("%d background processes are running, the most a sandbox may have; end some first", n))
		return
	}
	user := e.User
	if user == "" {
		user = "root"
	}
	// A command that is one program replaces the shell started for it (and
	// already put in its cgroup), so the pid reported is the program's own
	// (python3, not a shell around it). Anything else keeps its shell, the
	// leader of the process group that signals go to.
	run := *e
	if program := execableCommand(e.Command); program != "" && a.inPath(program, cwd, e.Env) {
		run.Command = "exec " + e.Command
	}
	p, start, err := a.startCommand(&run, cwd)
	if err != nil {
		sendStartErr(w, err)
		return
	}
	bp := &bgProc{
		info: wire.ProcInfo{PID: p.pid, Command: e.Command, Cwd: cwd, User: user,
			StartedNS: start.UnixNano(), Running: true},
		changed: make(chan struct{}),
		stdin:   p.stdinW,
		cgroup:  p.cgroup,
	}
	a.procs.add(bp)
	go a.runBackground(bp, p)
	_ = w.JSON(wire.KindJSON, bp.info)
}

// runBackground collects a background process's output and exit.
func (a *Agent) runBackground(bp *bgProc, p *proc) {
	var pumps sync.WaitGroup
	pump := func(f *os.File, k wire.Kind) {
		defer pumps.Done()
		defer f.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := f.Read(buf)
			if n > 0 {
				bp.mu.Lock()
				bp.out.add(k, buf[:n])
				bp.notifyLocked()
				bp.mu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}
	pumps.Add(2)
	go pump(p.outR, wire.KindStdout)
	go pump(p.errR, wire.KindStderr)
	ws := <-p.exited
	ended := time.Now()
	// A zygote's shell may report its status on the status pipe, opened
	// by number: the pipe stays open until the shell has exited.
	p.closeStatus()
	code := -1
	sig := 0
	switch {
	case ws.Exited():
		code = ws.ExitStatus()
	case ws.Signaled():
		sig = int(ws.Signal())
		code = 128 + sig
	}
	// Ended from now on (no signal goes to its pid, which may be reused);
	// attached readers get the exit once the output is collected.
	bp.mu.Lock()
	bp.info.Running = false
	bp.info.ExitCode = &code
	bp.info.Signal = sig
	bp.info.EndedNS = ended.UnixNano()
	bp.mu.Unlock()
	// Children that inherited the pipes may keep them open: collect what
	// comes within the grace period, as an exec does.
	deadline := time.Now().Add(outputGrace)
	_ = p.outR.SetReadDeadline(deadline)
	_ = p.errR.SetReadDeadline(deadline)
	pumps.Wait()
	bp.stdinMu.Lock()
	bp.mu.Lock()
	if bp.stdin != nil {
		bp.stdin.Close()
		bp.stdin = nil
	}
	bp.done = true
	bp.notifyLocked()
	bp.mu.Unlock()
	bp.stdinMu.Unlock()
	a.procs.trimEnded()
	a.refillZygote()
}

func (t *procTable) add(bp *bgProc) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.procs == nil {
		t.procs = map[int]*bgProc{}
	}
	t.procs[bp.info.PID] = bp // an ended process whose pid was reused is forgotten
}

func (t *procTable) running() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, p := range t.procs {
		p.mu.Lock()
		if !p.done {
			n++
		}
		p.mu.Unlock()
	}
	return n
}

func (t *procTable) get(pid int) *bgProc {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.procs[pid]
}

func (t *procTable) list() []wire.ProcInfo {
	t.mu.Lock()
	ps := make([]*bgProc, 0, len(t.procs))
	for _, p := range t.procs {
		ps = append(ps, p)
	}
	t.mu.Unlock()
	out := make([]wire.ProcInfo, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.snapshot())
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].StartedNS != out[j].StartedNS {
			return out[i].StartedNS < out[j].StartedNS
		}
		return out[i].PID < out[j].PID
	})
	return out
}

// trimEnded forgets the oldest ended processes beyond maxEndedProcs.
func (t *procTable) trimEnded() {
	t.mu.Lock()
	defer t.mu.Unlock()
	var ended []*bgProc
	for _, p := range t.procs {
		p.mu.Lock()
		if p.done {
			ended = append(ended, p)
		}
		p.mu.Unlock()
	}
	if len(ended) <= maxEndedProcs {
		return
	}
	sort.Slice(ended, func(i, j int) bool { return ended[i].info.EndedNS < ended[j].info.EndedNS })
	for _, p := range ended[:len(ended)-maxEndedProcs] {
		delete(t.procs, p.info.PID)
	}
}

func (a *Agent) lookupProc(req *wire.Request, w *wire.Writer) *bgProc {
	if req.Proc == nil {
		_ = w.Err(wire.CodeBadRequest, req.Op+" request without proc")
		return nil
	}
	p := a.procs.get(req.Proc.PID)
	if p == nil {
		_ = w.Err(wire.CodeNoProcess, fmt.Sprintf("no process with pid %d was started through the API in this sandbox", req.Proc.PID))
	}
	return p
}

// procAttach streams a process's output until it ends or the host closes
// the stream.
func (a *Agent) procAttach(req *wire.Request, r *wire.Reader, w *wire.Writer) {
	p := a.lookupProc(req, w)
	if p == nil {
		return
	}
	hostGone := make(chan struct{})
	go func() {
		defer close(hostGone)
		for {
			if _, _, err := r.Next(); err != nil {
				return
			}
		}
	}()
	p.mu.Lock()
	cursor := p.out.end
	if req.Proc.Replay {
		cursor = 0
	}
	p.mu.Unlock()
	if !req.Proc.NoOutput && w.JSON(wire.KindJSON, wire.ProcNotice{Attached: true}) != nil {
		return
	}
	for {
		p.mu.Lock()
		var chunks []outChunk
		var dropped int64
		if !req.Proc.NoOutput {
			chunks, cursor, dropped = p.out.since(cursor)
		}
		done, changed, info := p.done, p.changed, p.info
		p.mu.Unlock()
		if dropped > 0 && !req.Proc.Replay {
			if w.JSON(wire.KindJSON, wire.ProcNotice{Dropped: dropped}) != nil {
				return
			}
		}
		req.Proc.Replay = false // only the first read may start before the buffer
		for _, c := range chunks {
			for b := c.data; len(b) > 0; {
				n := min(len(b), wire.ChunkSize)
				if w.Frame(c.kind, b[:n]) != nil {
					return
				}
				b = b[n:]
			}
		}
		if done {
			_ = w.JSON(wire.KindExit, info)
			return
		}
		select {
		case <-changed:
		case <-hostGone:
			return
		}
	}
}

// procInput writes to a process's stdin.
func (a *Agent) procInput(req *wire.Request, w *wire.Writer) {
	p := a.lookupProc(req, w)
	if p == nil {
		return
	}
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	p.mu.Lock()
	f := p.stdin
	p.mu.Unlock()
	if f == nil {
		if len(req.Proc.Data) == 0 && req.Proc.CloseStdin {
			_ = w.JSON(wire.KindJSON, struct{}{}) // closing twice is fine
			return
		}
		_ = w.Err(wire.CodeBadRequest, fmt.Sprintf("the stdin of process %d is closed", req.Proc.PID))
		return
	}
	if len(req.Proc.Data) > 0 {
		_ = f.SetWriteDeadline(time.Now().Add(stdinWriteTimeout))
		if _, err := f.Write(req.Proc.Data); err != nil {
			msg := fmt.Sprintf("writing to the stdin of process %d: %v", req.Proc.PID, err)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				msg = fmt.Sprintf("process %d did not read its stdin for %s (its pipe is full); nothing more was written", req.Proc.PID, stdinWriteTimeout)
			}
			_ = w.Err(wire.CodeBadRequest, msg)
			return
		}
	}
	if req.Proc.CloseStdin {
		f.Close()
		p.mu.Lock()
		p.stdin = nil
		p.mu.Unlock()
	}
	_ = w.JSON(wire.KindJSON, struct{}{})
}

// procSignal sends a signal to a process's group (the command and what it
// started in its group), unless it has ended: its pid may be reused.
func (a *Agent) procSignal(req *wire.Request, w *wire.Writer) {
	p := a.lookupProc(req, w)
	if p == nil {
		return
	}
	sig := req.Proc.Signal
	if sig < 1 || sig > 64 {
		_ = w.Err(wire.CodeBadRequest, fmt.Sprintf("signal %d is not between 1 and 64", sig))
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done || !p.info.Running {
		_ = w.JSON(wire.KindJSON, struct{}{}) // it has ended: nothing to signal
		return
	}
	if err := unix.Kill(-p.info.PID, unix.Signal(sig)); err != nil {
		_ = unix.Kill(p.info.PID, unix.Signal(sig))
	}
	_ = w.JSON(wire.KindJSON, struct{}{})
}

// shellBuiltinsOnly are dash builtins with no program of the same name:
// `exec cd` would fail where `cd` works.
var shellBuiltinsOnly = map[string]bool{
	"cd": true, "read": true, "export": true, "set": true, "unset": true, "wait": true, "ulimit": true,
	"umask": true, "trap": true, "eval": true, "exit": true, ".": true, "source": true, "alias": true,
	"unalias": true, "shift": true, "getopts": true, "type": true, "hash": true, "command": true,
	"jobs": true, "fg": true, "bg": true, "local": true, "return": true, "readonly": true, "break": true,
	"continue": true, "times": true, "exec": true,
}

// execableCommand returns the program a command line runs when it is one
// simple command (words, quotes and redirections, but no list, pipe,
// subshell, compound command or leading assignment) whose first word is a
// plain name; "" otherwise.
func execableCommand(cmd string) string {
	var quote byte
	first, inFirst, started := "", true, false
	for i := 0; i < len(cmd); i++ {
		c := cmd[i]
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			}
			continue
		case quote == '"':
			if c == '\\' {
				i++
			} else if c == '"' {
				quote = 0
			}
			continue
		}
		switch c {
		case '\'', '"', '\\', '$', '`', '=', '*', '?', '[', '~', '{', '}', '!', '#':
			if inFirst {
				return "" // the program's name must be a plain word
			}
			if c == '\\' {
				i++
			} else if c == '\'' || c == '"' {
				quote = c
			}
		case ';', '&', '|', '(', ')', '\n':
			return ""
		case ' ', '\t':
			if started {
				inFirst = false
			}
		default:
			if inFirst {
				first += string(c)
				started = true
			}
		}
	}
	if quote != 0 || first == "" || shellBuiltinsOnly[first] {
		return ""
	}
	switch first {
	case "if", "then", "else", "elif", "fi", "while", "until", "for", "do", "done", "case", "esac", "in", "function":
		return ""
	}
	return first
}

// inPath reports whether program names an executable file, looked up in
// the PATH the command will have when it has no slash.
func (a *Agent) inPath(program, cwd string, call map[string]string) bool {
	if strings.Contains(program, "/") {
		if !strings.HasPrefix(program, "/") {
			program = cwd + "/" + program
		}
		fi, err := os.Stat(program)
		return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
	}
	for _, dir := range strings.Split(a.envMap(call)["PATH"], ":") {
		if dir == "" {
			continue
		}
		if fi, err := os.Stat(dir + "/" + program); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return true
		}
	}
	return false
}
