// Package agent is orkestr-agent, PID 1 of every sandbox: it dials the host
// over the per-sandbox socket and serves exec and file requests on it.
package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// Agent serves the host. One Agent lives for the life of the sandbox; its
// connection to the host is re-established whenever it breaks (host restart,
// checkpoint/restore).
type Agent struct {
	Dir string // the per-sandbox directory holding the socket and token
	Log *slog.Logger

	mu      sync.RWMutex
	baseEnv map[string]string

	// ExecCgroups, when set before Run, is a directory in a pids cgroupfs
	// where each command gets a cgroup of its own (DefaultExecCgroups
	// inside a sandbox); empty: commands are found by walking the process
	// tree only.
	ExecCgroups string

	// TasksMax caps the tasks (processes and threads) of all commands
	// together, in a pids cgroup of the sandbox kernel they all join: a
	// fork bomb's forks fail inside the sandbox before the host's larger
	// limit, which would end the sandbox, is reached. 0: no cap.
	TasksMax int64

	reaper  *reaper
	zygotes zygotes
	procs   procTable // background processes (process.go)
	groups  *execGroups
	// oomGroups holds the cgroups of commands a process of which was
	// killed by oomKill (cgroup dir -> true), for their exit status.
	oomGroups sync.Map

	// redial receives RedialSignal: the host asks for a fresh connection
	// because the current one is dead without an error (after a live
	// checkpoint, runsc checkpoint --leave-running).
	redial chan os.Signal
}

// RedialSignal makes a running agent drop its connection and dial the
// host again. The host sends it to PID 1 after a live checkpoint.
const RedialSignal = syscall.SIGUSR1

// New returns an agent that talks to the host through dir.
func New(dir string, log *slog.Logger) *Agent {
	return &Agent{Dir: dir, Log: log, reaper: processReaper(), groups: newExecGroups("", 0)}
}

// Run dials the host and serves until ctx ends, redialing after every
// disconnect.
func (a *Agent) Run(ctx context.Context) error {
	a.groups = newExecGroups(a.ExecCgroups, a.TasksMax)
	a.refillZygote()
	defer a.stopZygotes()
	a.redial = make(chan os.Signal, 1)
	signal.Notify(a.redial, RedialSignal)
	defer signal.Stop(a.redial)
	const first = 2 * time.Millisecond
	backoff := first
	for ctx.Err() == nil {
		connected, err := a.serveOnce(ctx)
		if err != nil && ctx.Err() == nil {
			a.Log.Debug("host connection ended", "err", err)
		}
		// After a session that was up (a host restart, a restore), redial
		// at once; back off only while the host is not there. The backoff
		// lives in memory that a checkpoint saves, so it must not grow
		// across restores.
		if connected {
			backoff = first
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 100*time.Millisecond)
	}
	return ctx.Err()
}

// serveOnce dials the host and serves one session; connected says whether
// the handshake succeeded.
func (a *Agent) serveOnce(ctx context.Context) (connected bool, err error) {
	// The token is read afresh on every dial and never held open: after a
	// restore the directory behind the mount may be a different one.
	select {
	case <-a.redial: // asked for before this dial: nothing to drop
	default:
	}
	token, err := os.ReadFile(filepath.Join(a.Dir, wire.TokenName))
	if err != nil {
		return false, fmt.Errorf("read token: %w", err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", filepath.Join(a.Dir, wire.SocketName))
	if err != nil {
		return false, err
	}
	defer conn.Close()
	gen := wire.ReadRedial(a.Dir)
	hello, _ := json.Marshal(wire.Hello{Version: wire.Version, Token: strings.TrimSpace(string(token)), PID: os.Getpid(), DataConns: true, Redials: true, Redial: gen})
	if _, err := conn.Write(append(hello, '\n')); err != nil {
		return false, err
	}
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil {
		return false, fmt.Errorf("handshake: %w", err)
	}
	if line != "ok\n" {
		return false, fmt.Errorf("handshake refused: %q", strings.TrimSpace(line))
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	// A rare keepalive only: it finds a connection that died without an
	// error (after a restore the old host socket is gone), and each ping
	// wakes the sandbox's kernel, which is what an idle sandbox costs.
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = 30 * time.Second
	cfg.ConnectionWriteTimeout = 5 * time.Second
	cfg.StreamOpenTimeout = 0
	cfg.MaxStreamWindowSize = wire.StreamWindow
	if uc, ok := conn.(*net.UnixConn); ok {
		_ = uc.SetWriteBuffer(wire.SocketBuffer)
		_ = uc.SetReadBuffer(wire.SocketBuffer)
	}
	sess, err := yamux.Server(&wire.CoalescingConn{Conn: conn, Reader: br}, cfg)
	if err != nil {
		return false, err
	}
	defer sess.Close()
	go func() {
		for {
			select {
			case <-ctx.Done():
				sess.Close()
				return
			case <-a.redial:
				// A request this session already answers (the agent
				// redialed on its own since) is not one to act on.
				if wire.ReadRedial(a.Dir) <= gen {
					continue
				}
				a.Log.Debug("redialing the host on its request")
				sess.Close()
				return
			case <-sess.CloseChan():
				return
			}
		}
	}()
	for {
		st, err := sess.Accept()
		if err != nil {
			return true, err
		}
		go a.serveStream(st)
	}
}

// serveStream serves the requests of one stream, one after another, until
// the host closes it or a request leaves it unfit for another.
func (a *Agent) serveStream(st net.Conn) {
	defer st.Close()
	r := wire.NewReader(st)
	w := wire.NewWriter(st)
	for a.serveRequest(st, r, w) {
	}
}

// serveRequest serves one request and says whether the stream can carry the
// next one.
func (a *Agent) serveRequest(st net.Conn, r *wire.Reader, w *wire.Writer) (reusable bool) {
	var req wire.Request
	if err := r.ExpectJSON(&req); err != nil {
		if !errors.Is(err, io.EOF) {
			_ = w.Err(wire.CodeBadRequest, "malformed request: "+err.Error())
		}
		return false
	}
	// A file call as a user other than root is done by a helper process
	// with that user's credentials; root's stay here, at full speed.
	if u := fileCallUser(&req); u != "" {
		return a.fileOpAs(u, &req, r, w)
	}
	switch req.Op {
	case wire.OpPing:
		_ = w.JSON(wire.KindJSON, map[string]int{"pid": os.Getpid()})
	case wire.OpConfigure:
		a.configure(req.Configure, w)
	case wire.OpExec:
		if req.Exec == nil {
			_ = w.Err(wire.CodeBadRequest, "exec request without exec")
			return true
		}
		return a.exec(req.Exec, r, w)
	case wire.OpRead:
		if req.DataConn != "" {
			a.readFileData(req.Path, req.DataConn, w)
			return false
		}
		readFile(req.Path, w)
		return false
	case wire.OpWrite:
		if req.DataConn != "" {
			a.writeFileData(req.Path, req.Mode, req.DataConn, r, w)
			return false
		}
		writeFile(req.Path, req.Mode, r, w)
		return false
	case wire.OpUntar:
		untar(&req, r, w, a.dialData)
		return false
	case wire.OpTar:
		tarDir(&req, w, a.dialData)
		return false
	case wire.OpList:
		listDir(req.Path, w)
	case wire.OpStat:
		statPath(req.Path, w)
	case wire.OpRemove:
		// The host closes the stream if it gives up; the watcher reads it,
		// so the stream cannot carry another request.
		ctx, cancel := watchCancel(r)
		defer cancel()
		removePath(ctx, req.Path, req.Recursive, w)
		return false
	case wire.OpMkdir:
		mkdirPath(req.Path, req.Mode, w)
	case wire.OpPty:
		a.pty(st, r, w)
		return false
	case wire.OpOOMKill:
		_ = w.JSON(wire.KindJSON, a.oomKill())
	case wire.OpProcStart:
		a.procStart(req.Exec, w)
	case wire.OpProcList:
		_ = w.JSON(wire.KindJSON, wire.ProcList{Processes: a.procs.list()})
	case wire.OpProcAttach:
		a.procAttach(&req, r, w)
		return false
	case wire.OpProcInput:
		a.procInput(&req, w)
	case wire.OpProcSignal:
		a.procSignal(&req, w)
	case wire.OpStatX, wire.OpExists, wire.OpMkdirX, wire.OpRename:
		a.fsOp(&req, w)
	case wire.OpWatch:
		a.watch(&req, r, w)
		return false
	default:
		_ = w.Err(wire.CodeBadRequest, fmt.Sprintf("unknown op %q", req.Op))
	}
	return true
}

func (a *Agent) configure(c *wire.Configure, w *wire.Writer) {
	if c == nil {
		_ = w.Err(wire.CodeBadRequest, "configure request without configure")
		return
	}
	for k := range c.Env {
		if err := validEnvKey(k); err != nil {
			_ = w.Err(wire.CodeBadRequest, err.Error())
			return
		}
	}
	a.mu.Lock()
	a.baseEnv = c.Env
	a.mu.Unlock()
	if c.Hostname != "" {
		_ = os.WriteFile("/etc/hostname", []byte(c.Hostname+"\n"), 0o644)
	}
	_ = w.JSON(wire.KindJSON, struct{}{})
}

// defaultEnv is what every command starts with before the sandbox's and the
// call's own variables.
var defaultEnv = map[string]string{
	"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME": "/root",
	"LANG": "C.UTF-8",
	"TERM": "xterm",
}

// envMap is a command's environment: defaults, then the sandbox's, then the
// call's own variables.
func (a *Agent) envMap(call map[string]string) map[string]string {
	return a.envMapFor(call, root)
}

// envMapFor is envMap for a command run as u: its HOME, USER and LOGNAME
// come after the defaults, before the sandbox's and the call's variables.
func (a *Agent) envMapFor(call map[string]string, u account) map[string]string {
	merged := make(map[string]string, len(defaultEnv)+len(call))
	for k, v := range defaultEnv {
		merged[k] = v
	}
	a.mu.RLock()
	u.env(merged, func(k string) bool {
		_, inBase := a.baseEnv[k]
		_, inCall := call[k]
		return inBase || inCall
	})
	for k, v := range a.baseEnv {
		merged[k] = v
	}
	a.mu.RUnlock()
	for k, v := range call {
		merged[k] = v
	}
	return merged
}

func environ(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

func validEnvKey(k string) error { return wire.CheckEnvName(k) }
