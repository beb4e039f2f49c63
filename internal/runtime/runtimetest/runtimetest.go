// Package runtimetest is the conformance suite of runtime drivers: what any
// runtime.Driver and its runtime.Sandbox must do, as the interfaces in
// package runtime document it, checked through those interfaces only. The
// gVisor driver runs it (internal/runtime/gvisor/conformance_test.go), so
// does the in-memory fake (internal/runtime/fake); a new driver (a micro-VM
// one, say) passes it before anything else is built on it.
//
// A driver declares what it can do in Capabilities; a subtest of something a
// driver cannot do is skipped with a message that names the capability, so
// the run shows what a driver leaves out.
//
// Commands. Every driver runs ExecRequest.Command as `/bin/sh -c`; the
// tests that need no more than the basic vocabulary below run against every
// driver (the fake interprets exactly this): simple commands separated by
// `;` or newlines, words in single or double quotes, `$NAME` and `${NAME}`
// expansion, a trailing `>&2` or `> FILE`, and the commands echo, printf
// (%s, %d, %%, \n, \t, \\), cat (stdin or files), exit N, sleep SECONDS, pwd,
// true, false and ln -s. Tests that need a real shell and userland (pipes,
// background jobs, /proc) run only with Capabilities.RealCommands.
package runtimetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// Capabilities says what a driver under test can do beyond the core
// runtime.Driver and runtime.Sandbox contract.
type Capabilities struct {
	// RealCommands: commands run in a real POSIX shell with a Linux
	// userland (coreutils, /proc, background jobs, setsid).
	RealCommands bool
	// Checkpoint: Sandbox.Checkpoint and Driver.Restore work.
	Checkpoint bool
	// CheckpointMemory: a restored sandbox's processes continue from the
	// memory they had (not only their files and output). Implies a real
	// shell is needed to check it, so it also needs RealCommands.
	CheckpointMemory bool
	// Network: Spec.Networked sandboxes can be created (the host has a
	// network configuration).
	Network bool
	// Processes: sandboxes implement runtime.Processes.
	Processes bool
	// Terminal: sandboxes implement runtime.TerminalOpener.
	Terminal bool
	// FileOps: sandboxes implement runtime.FileOps (Watch included).
	FileOps bool
	// Archiver: sandboxes implement runtime.Archiver.
	Archiver bool
	// UserFiles: sandboxes implement runtime.UserFiles, and the template
	// has the user (runtime.UserUser) owning /workspace and no write access
	// to /etc or read access to root's 0600 files.
	UserFiles bool
	// Disk: sandboxes implement runtime.DiskReader and enforce
	// Resources.DiskBytes (writes past it fail with ErrNoSpace).
	Disk bool
	// Usage: sandboxes implement runtime.UsageReader.
	Usage bool
	// Reconcile: Harness.Reopen is set and Close(ctx, false) leaves
	// sandboxes running for the next driver on the same state to adopt.
	Reconcile bool
}

// Harness is how the suite reaches a driver under test.
type Harness struct {
	// NewDriver returns a fresh, reconciled driver with no sandbox, whose
	// resources are released (and checked for leaks, if the driver can)
	// when t ends. The suite destroys what it creates.
	NewDriver func(t *testing.T) runtime.Driver
	// Reopen returns a second driver over the same host state as d, not
	// yet reconciled, as a restarted server would make. Used with
	// Capabilities.Reconcile; the suite closes it.
	Reopen func(t *testing.T, d runtime.Driver) runtime.Driver
	// Spec is what every sandbox of the suite starts from: a template,
	// its rootfs and resources (MemoryBytes, PIDs and CPU set).
	Spec runtime.Spec
	// Timeout bounds each driver call the suite makes that may take a
	// while (create, restore, checkpoint); default one minute.
	Timeout time.Duration
	Caps    Capabilities
	// Only, if set, names the groups of subtests to run (Lifecycle, Exec,
	// Files, Limits, Hostile, Checkpoint, Reconcile, Processes, FileOps,
	// Archiver, UserFiles, Terminal, Network): for a second harness that
	// adds one capability to a driver the whole suite already ran on.
	Only []string
}

// Run runs the conformance suite against h's driver as subtests of t.
func Run(t *testing.T, h Harness) {
	if h.Timeout == 0 {
		h.Timeout = time.Minute
	}
	s := &suite{h: h}
	for _, g := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"Lifecycle", s.lifecycle}, {"Exec", s.exec}, {"Files", s.files}, {"Limits", s.limits},
		{"Hostile", s.hostile}, {"Checkpoint", s.checkpoint}, {"Reconcile", s.reconcile},
		{"Processes", s.processes}, {"FileOps", s.fileOps}, {"Archiver", s.archiver},
		{"UserFiles", s.userFiles}, {"Terminal", s.terminal}, {"Network", s.network},
	} {
		if len(h.Only) == 0 || slices.Contains(h.Only, g.name) {
			t.Run(g.name, g.run)
		}
	}
}

type suite struct{ h Harness }

func (s *suite) need(t *testing.T, ok bool, capability string) {
	t.Helper()
	if !ok {
		t.Skipf("the driver does not declare Capabilities.%s", capability)
	}
}

// ctx is a context that ends after the harness's timeout or with t.
func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), s.h.Timeout)
	t.Cleanup(cancel)
	return ctx
}

// driver is a fresh driver for one subtest.
func (s *suite) driver(t *testing.T) runtime.Driver {
	t.Helper()
	return s.h.NewDriver(t)
}

// spec is a copy of the harness's spec with labels.
func (s *suite) spec(labels map[string]string) runtime.Spec {
	sp := s.h.Spec
	sp.Labels = labels
	return sp
}

// create starts a sandbox of the harness's spec on d, destroyed when t ends.
func (s *suite) create(t *testing.T, d runtime.Driver, labels map[string]string) runtime.Sandbox {
	t.Helper()
	return s.createSpec(t, d, s.spec(labels))
}

func (s *suite) createSpec(t *testing.T, d runtime.Driver, sp runtime.Spec) runtime.Sandbox {
	t.Helper()
	sb, err := d.Create(s.ctx(t), sp)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() { destroy(t, sb) })
	return sb
}

// sandbox is a fresh driver with one sandbox on it.
func (s *suite) sandbox(t *testing.T) (runtime.Driver, runtime.Sandbox) {
	t.Helper()
	d := s.driver(t)
	return d, s.create(t, d, nil)
}

func destroy(t *testing.T, sb runtime.Sandbox) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := sb.Destroy(ctx); err != nil {
		t.Errorf("destroy %s: %v", sb.ID(), err)
	}
}

// execOut is an ExecResult with the output collected.
type execOut struct {
	runtime.ExecResult
	Stdout, Stderr string
}

// run executes r on sb and fails t on a driver error.
func (s *suite) run(t *testing.T, sb runtime.Sandbox, r runtime.ExecRequest) execOut {
	t.Helper()
	out, err := s.tryRun(t, sb, r)
	if err != nil {
		t.Fatalf("exec %q: %v", short(r.Command), err)
	}
	return out
}

func (s *suite) tryRun(t *testing.T, sb runtime.Sandbox, r runtime.ExecRequest) (execOut, error) {
	t.Helper()
	var o, e bytes.Buffer
	if r.Stdout == nil {
		r.Stdout = &o
	}
	if r.Stderr == nil {
		r.Stderr = &e
	}
	res, err := sb.Exec(s.ctx(t), r)
	return execOut{res, o.String(), e.String()}, err
}

// sh runs cmd, requires exit 0 and returns its stdout.
func (s *suite) sh(t *testing.T, sb runtime.Sandbox, cmd string) string {
	t.Helper()
	out := s.run(t, sb, runtime.ExecRequest{Command: cmd})
	if out.ExitCode != 0 || out.TimedOut {
		t.Fatalf("%q: exit %d (timed out %v), stdout %q, stderr %q", short(cmd), out.ExitCode, out.TimedOut, short(out.Stdout), short(out.Stderr))
	}
	return out.Stdout
}

func (s *suite) write(t *testing.T, sb runtime.Sandbox, path, data string) {
	t.Helper()
	n, err := sb.WriteFile(s.ctx(t), path, 0o644, strings.NewReader(data))
	if err != nil || n != int64(len(data)) {
		t.Fatalf("write %s: %d bytes, %v", path, n, err)
	}
}

func (s *suite) read(t *testing.T, sb runtime.Sandbox, path string) string {
	t.Helper()
	var b bytes.Buffer
	if _, err := sb.ReadFile(s.ctx(t), path, &b); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b.String()
}

// wantErr fails t unless err is target.
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: got %v, want %v", what, err, target)
	}
}

func short(s string) string {
	if len(s) > 120 {
		return s[:120] + fmt.Sprintf("…(%d bytes)", len(s))
	}
	return s
}

// eventually polls cond until it holds or d passes.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitDone waits for sb's Done channel.
func waitDone(t *testing.T, sb runtime.Sandbox, d time.Duration) {
	t.Helper()
	select {
	case <-sb.Done():
	case <-time.After(d):
		t.Fatalf("sandbox %s: Done not closed within %v", sb.ID(), d)
	}
}

// streamWriter collects output and tells when some text has arrived.
type streamWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
	ch  chan struct{}
}

func newStreamWriter() *streamWriter { return &streamWriter{ch: make(chan struct{}, 1)} }

func (w *streamWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	n, err := w.buf.Write(p)
	w.mu.Unlock()
	select {
	case w.ch <- struct{}{}:
	default:
	}
	return n, err
}

func (w *streamWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitFor waits until the output contains s.
func (w *streamWriter) waitFor(s string, d time.Duration) bool {
	deadline := time.After(d)
	for {
		if strings.Contains(w.String(), s) {
			return true
		}
		select {
		case <-w.ch:
		case <-deadline:
			return strings.Contains(w.String(), s)
		}
	}
}

var _ io.Writer = (*streamWriter)(nil)
