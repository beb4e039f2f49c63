package agent

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// Starting /bin/sh inside gVisor costs several milliseconds of CPU (a new
// address space, ELF loading, the dynamic linker), which would dominate the
// round trip of a short command. So the agent keeps one shell started ahead
// of time — a zygote — blocked reading its script from fd 3. An exec hands
// it the command and closes the pipe; the shell runs it as `sh -c` would,
// in its own process group, and a new zygote is started once the command
// has ended. Env changes (a claim, per-call env) are applied by the script,
// so a zygote started before a claim still serves the first exec after it.

// proc is a started command's process and pipes.
type proc struct {
	pid    int
	exited <-chan unix.WaitStatus
	stdinW *os.File
	outR   *os.File
	errR   *os.File
	script *os.File          // zygotes only: where the command is written
	env    map[string]string // the environment it was started with
	cgroup string            // the command's cgroup; "" without one
	// Zygotes only: the pipe the shell reports the command's exit status
	// on, before it exits (see zygoteArgv). Both ends stay with the agent
	// until the shell has exited.
	statusR, statusW *os.File
}

func (p *proc) closeAll() {
	for _, f := range []*os.File{p.stdinW, p.outR, p.errR, p.script, p.statusR, p.statusW} {
		if f != nil {
			f.Close()
		}
	}
}

type zygotes struct {
	mu      sync.Mutex
	ready   *proc
	filling bool
	filled  chan struct{} // closed when the fill in progress ends
	stopped bool          // Run has returned: start no more
}

// fillWait bounds how long an exec waits for a zygote that is being
// started: starting a second shell beside it would only compete for the
// same CPU (and, in a small sandbox, its quota).
const fillWait = 100 * time.Millisecond

// spawn starts /bin/sh with fresh pipes. With zygote set it waits for its
// script on fd 3 instead of running command.
func (a *Agent) spawn(command, cwd string, env map[string]string, zygote bool) (*proc, error) {
	return a.spawnAs(command, cwd, env, zygote, root)
}

// spawnAs is spawn for a command run as user u.
func (a *Agent) spawnAs(command, cwd string, env map[string]string, zygote bool, u account) (*proc, error) {
	var files []*os.File
	var closeAfter []*os.File
	fail := func(err error) (*proc, error) {
		for _, f := range files {
			f.Close()
		}
		for _, f := range closeAfter {
			f.Close()
		}
		return nil, err
	}
	// Each pipe is recorded as soon as it exists, so a failure further on
	// (EMFILE) closes the ones made before it.
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return fail(fmt.Errorf("stdin pipe: %w", err))
	}
	files, closeAfter = append(files, stdinR), append(closeAfter, stdinW)
	outR, outW, err := os.Pipe()
	if err != nil {
		return fail(fmt.Errorf("stdout pipe: %w", err))
	}
	files, closeAfter = append(files, outW), append(closeAfter, outR)
	errR, errW, err := os.Pipe()
	if err != nil {
		return fail(fmt.Errorf("stderr pipe: %w", err))
	}
	files, closeAfter = append(files, errW), append(closeAfter, errR)
	growPipe(outR)
	growPipe(errR)
	p := &proc{stdinW: stdinW, outR: outR, errR: errR, env: env}
	argv := []string{"/bin/sh", "-c", command}
	if zygote {
		scriptR, scriptW, err := os.Pipe()
		if err != nil {
			return fail(fmt.Errorf("script pipe: %w", err))
		}
		files = append(files, scriptR)
		closeAfter = append(closeAfter, scriptW)
		p.script = scriptW
		statusR, statusW, err := os.Pipe()
		if err != nil {
			return fail(fmt.Errorf("status pipe: %w", err))
		}
		closeAfter = append(closeAfter, statusR, statusW)
		p.statusR, p.statusW = statusR, statusW
		argv = zygoteArgv(os.Getpid(), statusW.Fd())
	} else if !u.isRoot() {
		// A user's shell cannot reopen a pipe of root's (a zygote's
		// `. /proc/self/fd/3`), so it waits at a gate instead: it reads a
		// line from fd 3 (no reopening) and then evaluates the command,
		// which cannot start before the shell is in its cgroup.
		gateR, gateW, err := os.Pipe()
		if err != nil {
			return fail(fmt.Errorf("gate pipe: %w", err))
		}
		files = append(files, gateR)
		closeAfter = append(closeAfter, gateW)
		p.script = gateW
		argv = []string{"/bin/sh", "-c", a.groups.tasksUlimit() + `read -r __ork_gate <&3; exec 3<&-; unset __ork_gate; eval "$1"`, "sh", command}
	}
	pid, exited, err := a.reaper.start("/bin/sh", argv, &os.ProcAttr{
		Dir: cwd, Env: environ(env), Files: files,
		Sys: &syscall.SysProcAttr{Setpgid: true, Credential: u.credential()},
	})
	for _, f := range files {
		f.Close()
	}
	files = nil
	if err != nil {
		return fail(fmt.Errorf("start /bin/sh: %w", err))
	}
	p.pid, p.exited = pid, exited
	// A zygote waits for its script, so it is in its cgroup before the
	// command can fork. A command started directly may fork first; those
	// are only for env names a script cannot set (see startCommand).
	p.cgroup = a.groups.join(pid)
	return p, nil
}

// startCommand starts e's command, from the zygote when one is ready and
// fits, and returns when the command was handed over.
func (a *Agent) startCommand(e *wire.Exec, cwd string) (*proc, time.Time, error) {
	u, err := lookupUser(e.User)
	if err != nil {
		return nil, time.Time{}, err
	}
	if !u.isRoot() {
		return a.startAs(e, cwd, u)
	}
	want := a.envMap(e.Env)
	if p := a.takeZygote(); p != nil {
		if start, ok := handOver(p, e.Command, cwd, want); ok {
			return p, start, nil
		}
		// The zygote died (e.g. a command ran `kill -9 -1`) or the env
		// cannot be set by a script: start the command the slow way.
		a.discard(p)
	}
	// No zygote: start one for this command alone and hand it the script
	// at once, so it is in its cgroup before the command runs.
	if p, err := a.spawn("", "/", want, true); err == nil {
		if start, ok := handOver(p, e.Command, cwd, want); ok {
			return p, start, nil
		}
		a.discard(p)
	}
	start := time.Now()
	p, err := a.spawn(e.Command, cwd, want, false)
	return p, start, err
}

// startAs starts e's command as user u. The ready zygote is root's, so a
// shell is started for u alone, put in its cgroup, and then let through
// its gate to run the command.
func (a *Agent) startAs(e *wire.Exec, cwd string, u account) (*proc, time.Time, error) {
	want := a.envMapFor(e.Env, u)
	p, err := a.spawnAs(e.Command, cwd, want, false, u)
	if err != nil {
		return nil, time.Time{}, err
	}
	start := time.Now()
	_, werr := p.script.WriteString("go\n")
	cerr := p.script.Close()
	p.script = nil
	if werr != nil || cerr != nil {
		a.discard(p)
		return nil, time.Time{}, fmt.Errorf("starting the command as %s: the shell did not take it", u.name)
	}
	return p, start, nil
}

// Exiting costs a gVisor process most of a millisecond (its address space
// is torn down before the parent hears of it), so a zygote reports its
// command's exit status before it exits: it closes its stdout and stderr,
// which ends the output, and writes the status to the agent's status pipe,
// which it opens through /proc so the command never inherits it. Only a
// script the agent wrote turns the report on (__ork_report): a zygote
// whose script pipe closed without one must not write to an fd number the
// agent may have reused. A command whose own code may still run at the
// shell's exit (an EXIT trap) or that may redefine the builtins the report
// uses leaves it off (see lateReport) and is only done when the shell has
// exited, as are commands that end the shell themselves (exit, exec, a
// fatal signal).
func zygoteArgv(agentPID int, statusFD uintptr) []string {
	return []string{"/bin/sh", "-c", fmt.Sprintf("__ork_report=; . /proc/self/fd/3; "+
		"{ __ork_s=$?; set +x; } 2>/dev/null; "+
		"[ -z \"${__ork_report-}\" ] || { exec >&- 2>&-; echo \"$__ork_s\" >/proc/%d/fd/%d; } 2>/dev/null || :; "+
		"exit \"$__ork_s\"", agentPID, statusFD)}
}

// lateReport matches commands that might run code of theirs after the
// report, or change what it runs: traps, eval, sourced files, function
// definitions. False matches only cost the early report.
var lateReport = regexp.MustCompile(`\btrap\b|\beval\b|\bsource\b|(^|[\s;&|(){}` + "`" + `])\.[\s]|\(\s*\)`)

// handOver writes the command's script to zygote p and reports when the
// command started; false if it could not.
func handOver(p *proc, command, cwd string, want map[string]string) (time.Time, bool) {
	script, ok := zygoteScript(command, cwd, p.env, want)
	if !ok {
		return time.Time{}, false
	}
	start := time.Now()
	_, werr := p.script.WriteString(script)
	cerr := p.script.Close()
	p.script = nil
	return start, werr == nil && cerr == nil
}

// zygoteScript is the script a zygote runs: close the script pipe, bring
// the environment it started with to the one wanted (unset and export the
// differences), enter cwd, run the command. Names that are not shell
// identifiers cannot be set this way and take the slow path.
func zygoteScript(command, cwd string, have, want map[string]string) (string, bool) {
	var b strings.Builder
	b.WriteString("exec 3<&-;")
	for k := range have {
		if _, ok := want[k]; !ok {
			if !isShellName(k) {
				return "", false
			}
			b.WriteString(" unset " + k + ";")
		}
	}
	for k, v := range want {
		if old, ok := have[k]; ok && old == v {
			continue
		}
		if !isShellName(k) {
			return "", false
		}
		b.WriteString(" export " + k + "=" + shellQuote(v) + ";")
	}
	// After the exports: a sandbox env var of that name must not decide.
	if lateReport.MatchString(command) {
		b.WriteString(" __ork_report=;")
	} else {
		b.WriteString(" __ork_report=1;")
	}
	b.WriteString(" cd -- " + shellQuote(cwd) + " || exit 1\n")
	b.WriteString(command)
	b.WriteString("\n")
	return b.String(), true
}

func isShellName(k string) bool {
	for i, c := range k {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return k != ""
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// takeZygote returns the ready zygote if it is still alive. The next one is
// started after the command ends, so it does not compete with it for CPU.
func (a *Agent) takeZygote() *proc {
	z := &a.zygotes
	z.mu.Lock()
	if z.ready == nil && z.filling {
		filled := z.filled
		z.mu.Unlock()
		select {
		case <-filled:
		case <-time.After(fillWait):
		}
		z.mu.Lock()
	}
	p := z.ready
	z.ready = nil
	z.mu.Unlock()
	if p == nil {
		return nil
	}
	select {
	case <-p.exited:
		p.closeAll()
		return nil
	default:
	}
	return p
}

func (a *Agent) discard(p *proc) {
	a.reaper.killGroupOf(p.pid)
	killGroup(p.cgroup)
	p.closeAll()
}

// refillZygote starts a zygote in the background if none is ready.
func (a *Agent) refillZygote() {
	z := &a.zygotes
	z.mu.Lock()
	if z.ready != nil || z.filling || z.stopped {
		z.mu.Unlock()
		return
	}
	z.filling = true
	filled := make(chan struct{})
	z.filled = filled
	z.mu.Unlock()
	go func() {
		p, err := a.spawn("", "/", a.envMap(nil), true)
		z.mu.Lock()
		defer z.mu.Unlock()
		defer close(filled)
		z.filling = false
		if err != nil {
			a.Log.Debug("zygote start failed", "err", err)
			return
		}
		if z.ready != nil || z.stopped {
			go a.discard(p)
			return
		}
		z.ready = p
	}()
}

// stopZygotes kills the ready zygote and starts no more. One left behind
// when its Agent is gone (tests run several in one process) would have its
// pipes closed by the garbage collector while it still runs.
func (a *Agent) stopZygotes() {
	z := &a.zygotes
	z.mu.Lock()
	z.stopped = true
	p := z.ready
	z.ready = nil
	z.mu.Unlock()
	if p != nil {
		a.discard(p)
	}
}

// watchStatus returns a channel that receives the exit status the zygote
// reports, and nothing if it reports none (or garbage: anything in the
// sandbox can write to the pipe, and then the exit decides).
func (p *proc) watchStatus() <-chan int {
	if p.statusR == nil {
		return nil
	}
	ch := make(chan int, 1)
	go func(f *os.File) {
		var line []byte
		buf := make([]byte, 16)
		for len(line) < 16 {
			n, err := f.Read(buf)
			line = append(line, buf[:n]...)
			if i := bytes.IndexByte(line, '\n'); i >= 0 {
				if code, err := strconv.Atoi(string(line[:i])); err == nil && code >= 0 && code <= 255 {
					ch <- code
				}
				return
			}
			if err != nil {
				return
			}
		}
	}(p.statusR)
	return ch
}

// closeStatus closes the status pipe once the shell has exited.
func (p *proc) closeStatus() {
	for _, f := range []*os.File{p.statusR, p.statusW} {
		if f != nil {
			f.Close()
		}
	}
}
