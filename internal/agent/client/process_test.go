package client

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// syncBuffer is a bytes.Buffer safe for one writer and a polling reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func procComm(t *testing.T, pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if err != nil {
		t.Fatalf("pid %d: %v", pid, err)
	}
	return strings.TrimSpace(string(b))
}

// A background cat: stdin written in two requests, once an attach made
// from now acknowledged its place, comes back on that attach whole;
// closing stdin ends it, and a replaying attach after the end gets all of
// its output and its exit.
func TestBackgroundProcessStdinAttachAndExit(t *testing.T) {
	c := startPair(t)
	ctx := context.Background()
	info, err := c.StartProcess(ctx, wire.Exec{Command: "cat", Cwd: "/tmp"})
	if err != nil {
		t.Fatal(err)
	}
	if info.PID <= 0 || !info.Running || info.Command != "cat" || info.User != "root" || info.Cwd != "/tmp" {
		t.Fatalf("start: %+v", info)
	}
	// The pid is cat's own: sh -c execs a single command.
	waitFor(t, "cat to replace its shell", func() bool { return procComm(t, info.PID) == "cat" })

	var live syncBuffer
	attached := make(chan wire.ProcInfo, 1)
	placed := make(chan struct{})
	go func() {
		fin, err := c.AttachProcess(ctx, info.PID, false, AttachIO{Stdout: &live, Attached: func() { close(placed) }})
		if err != nil {
			t.Errorf("attach: %v", err)
		}
		attached <- fin
	}()
	select {
	case <-placed:
	case <-time.After(20 * time.Second):
		t.Fatal("the attach was not acknowledged")
	}
	if err := c.ProcessInput(ctx, info.PID, []byte("hello "), false); err != nil {
		t.Fatal(err)
	}
	if err := c.ProcessInput(ctx, info.PID, []byte("world\n"), false); err != nil {
		t.Fatal(err)
	}
	var replay syncBuffer
	rctx, detach := context.WithCancel(ctx)
	replayed := make(chan error, 1)
	go func() {
		_, err := c.AttachProcess(rctx, info.PID, true, AttachIO{Stdout: &replay})
		replayed <- err
	}()
	waitFor(t, "the replay", func() bool { return replay.String() == "hello world\n" })
	detach() // a detach does not touch the process
	if err := <-replayed; err == nil {
		t.Error("a detached attach reported no error")
	}
	list, err := c.Processes(ctx)
	if err != nil || len(list) != 1 || list[0].PID != info.PID || !list[0].Running {
		t.Fatalf("list while running: %+v %v", list, err)
	}
	if err := c.ProcessInput(ctx, info.PID, []byte("bye\n"), true); err != nil {
		t.Fatal(err)
	}
	var fin wire.ProcInfo
	select {
	case fin = <-attached:
	case <-time.After(20 * time.Second):
		t.Fatal("the attach did not end with the process")
	}
	if fin.Running || fin.ExitCode == nil || *fin.ExitCode != 0 || fin.EndedNS == 0 {
		t.Fatalf("final info %+v", fin)
	}
	// The live attach sees everything written after its acknowledgment.
	if got := live.String(); got != "hello world\nbye\n" {
		t.Errorf("live attach got %q", got)
	}
	var all syncBuffer
	fin2, err := c.AttachProcess(ctx, info.PID, true, AttachIO{Stdout: &all})
	if err != nil || all.String() != "hello world\nbye\n" || *fin2.ExitCode != 0 {
		t.Fatalf("replay after the end: %q %+v %v", all.String(), fin2, err)
	}
	// Writing to a closed stdin is refused; closing again is fine.
	if err := c.ProcessInput(ctx, info.PID, []byte("x"), false); !IsAgentError(err, wire.CodeBadRequest) {
		t.Errorf("write after close: %v", err)
	}
	if err := c.ProcessInput(ctx, info.PID, nil, true); err != nil {
		t.Errorf("second close: %v", err)
	}
}

func TestBackgroundProcessSignalAndUnknownPid(t *testing.T) {
	c := startPair(t)
	ctx := context.Background()
	info, err := c.StartProcess(ctx, wire.Exec{Command: "echo started; sleep 100", Cwd: "/tmp"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SignalProcess(ctx, info.PID, int(syscall.SIGTERM)); err != nil {
		t.Fatal(err)
	}
	fin, err := c.AttachProcess(ctx, info.PID, false, AttachIO{})
	if err != nil || fin.Running || fin.Signal != int(syscall.SIGTERM) || *fin.ExitCode != 128+15 {
		t.Fatalf("after SIGTERM: %+v %v", fin, err)
	}
	for _, pid := range []int{0, -1, 1, os.Getpid(), 1 << 30} {
		if err := c.SignalProcess(ctx, pid, 9); !IsAgentError(err, wire.CodeNoProcess) {
			t.Errorf("signal pid %d: %v", pid, err)
		}
		if _, err := c.AttachProcess(ctx, pid, true, AttachIO{}); !IsAgentError(err, wire.CodeNoProcess) {
			t.Errorf("attach pid %d: %v", pid, err)
		}
		if err := c.ProcessInput(ctx, pid, []byte("x"), true); !IsAgentError(err, wire.CodeNoProcess) {
			t.Errorf("input pid %d: %v", pid, err)
		}
	}
	if err := c.SignalProcess(ctx, info.PID, 0); !IsAgentError(err, wire.CodeBadRequest) {
		t.Errorf("signal 0: %v", err)
	}
	if err := c.SignalProcess(ctx, info.PID, 65); !IsAgentError(err, wire.CodeBadRequest) {
		t.Errorf("signal 65: %v", err)
	}
	if _, err := c.StartProcess(ctx, wire.Exec{Command: "true", Cwd: "/nonexistent"}); !IsAgentError(err, wire.CodeNotFound) {
		t.Errorf("missing cwd: %v", err)
	}
	if _, err := c.StartProcess(ctx, wire.Exec{Command: "true", Cwd: "/tmp", User: "nosuchuser"}); !IsAgentError(err, wire.CodeNoUser) {
		t.Errorf("missing user: %v", err)
	}
}

// A process that floods its output while nobody reads keeps at most its
// buffer: a replay gets the newest bytes only, and a late reader is told
// how much it missed.
func TestBackgroundProcessFloodStaysBounded(t *testing.T) {
	c := startPair(t)
	ctx := context.Background()
	// 8 MiB of output, then a marker.
	info, err := c.StartProcess(ctx, wire.Exec{Command: "head -c 8388608 /dev/zero; echo END", Cwd: "/tmp"})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	fin, err := c.AttachProcess(ctx, info.PID, true, AttachIO{Stdout: &out})
	_ = fin
	if err != nil {
		t.Fatal(err)
	}
	// The replaying reader started at the oldest byte kept; whatever came
	// after streamed live, so nothing beyond 8 MiB + END arrives, and the
	// end is there.
	if !strings.HasSuffix(out.String(), "END\n") || out.Len() > 8<<20+4 {
		t.Fatalf("got %d bytes ending %q", out.Len(), out.String()[max(0, out.Len()-8):])
	}
	var again bytes.Buffer
	if _, err := c.AttachProcess(ctx, info.PID, true, AttachIO{Stdout: &again}); err != nil {
		t.Fatal(err)
	}
	if again.Len() != 1<<20 || !strings.HasSuffix(again.String(), "END\n") {
		t.Fatalf("replay after the end: %d bytes, want the buffer's %d", again.Len(), 1<<20)
	}
}
