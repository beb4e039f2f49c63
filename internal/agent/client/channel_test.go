package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/agent"
	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// The channel and the agent run in this process here, over a real unix
// socket; the commands are harmless ones run on the host. What the tests
// look at is the stream bookkeeping: which requests leave a stream fit for
// the next one, and that a request never inherits another's leftovers.

func startPair(t *testing.T) *Channel {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := Listen(dir, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = agent.New(dir, log).Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		c.Close()
		<-done
	})
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := c.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// run runs cmd and returns its stdout, then its stderr.
func run(t *testing.T, c *Channel, ctx context.Context, cmd string, stdin io.Reader) (string, wire.ExitStatus, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	st, err := c.Exec(ctx, wire.Exec{Command: cmd, Cwd: "/tmp"}, ExecIO{Stdin: stdin, Stdout: &out, Stderr: &errOut})
	return out.String() + errOut.String(), st, err
}

func idleStreams(c *Channel) []idleStream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]idleStream(nil), c.idle...)
}

func TestSequentialRequestsShareOneStream(t *testing.T) {
	c := startPair(t)
	ctx := context.Background()
	var first *idleStream
	for i := range 10 {
		out, st, err := run(t, c, ctx, fmt.Sprintf("echo out %d; echo err %d >&2; exit %d", i, i, i), nil)
		if err != nil || st.ExitCode != i || out != fmt.Sprintf("out %d\nerr %d\n", i, i) {
			t.Fatalf("exec %d: %q %+v %v", i, out, st, err)
		}
		if _, err := c.Stat(ctx, "/tmp"); err != nil {
			t.Fatal(err)
		}
		idle := idleStreams(c)
		if len(idle) != 1 {
			t.Fatalf("after request %d: %d idle streams, want 1", i, len(idle))
		}
		if first == nil {
			first = &idle[0]
		} else if idle[0].st != first.st {
			t.Fatalf("request %d ran on a new stream", i)
		}
	}
}

func TestStdinAndAgentErrorsLeaveTheStreamUsable(t *testing.T) {
	c := startPair(t)
	ctx := context.Background()
	out, st, err := run(t, c, ctx, "cat", strings.NewReader("from stdin"))
	if err != nil || st.ExitCode != 0 || out != "from stdin" {
		t.Fatalf("cat: %q %+v %v", out, st, err)
	}
	// Refused by the agent before starting, and a files error: both are
	// whole replies.
	if _, _, err := run(t, c, ctx, "true\x00", nil); !IsWireError(err) {
		t.Fatalf("NUL in command: %v, want an agent error", err)
	}
	if _, err := c.Stat(ctx, "/does/not/exist"); !IsWireError(err) {
		t.Fatalf("stat of a missing path: %v, want an agent error", err)
	}
	if n := len(idleStreams(c)); n != 1 {
		t.Fatalf("%d idle streams, want 1", n)
	}
	out, _, err = run(t, c, ctx, "echo still fine", nil)
	if err != nil || out != "still fine\n" {
		t.Fatalf("%q %v", out, err)
	}
}

// Stdin is streamed right behind the request, without waiting for the
// command to start; if the agent refuses the command, those frames must not
// be read as the next request on a reused stream.
func TestRefusedExecWithStdinIsNotReused(t *testing.T) {
	c := startPair(t)
	ctx := context.Background()
	big := strings.Repeat("x", 200<<10) // several frames
	var out bytes.Buffer
	_, err := c.Exec(ctx, wire.Exec{Command: "cat", Cwd: "/does/not/exist"}, ExecIO{Stdin: strings.NewReader(big), Stdout: &out})
	if !IsWireError(err) {
		t.Fatalf("exec in a missing cwd: %v, want an agent error", err)
	}
	if n := len(idleStreams(c)); n != 0 {
		t.Fatalf("%d idle streams after a refused exec with stdin, want 0", n)
	}
	for i := range 3 {
		got, st, err := run(t, c, ctx, "echo next", nil)
		if err != nil || st.ExitCode != 0 || got != "next\n" {
			t.Fatalf("exec %d after the refusal: %q %+v %v", i, got, st, err)
		}
	}
	// Without stdin, a refusal leaves the stream reusable.
	if _, _, err := run(t, c, ctx, "true", nil); err != nil {
		t.Fatal(err)
	}
	before := idleStreams(c)
	if _, err := c.Exec(ctx, wire.Exec{Command: "true", Cwd: "/does/not/exist"}, ExecIO{}); !IsWireError(err) {
		t.Fatalf("exec in a missing cwd: %v, want an agent error", err)
	}
	after := idleStreams(c)
	if len(before) != 1 || len(after) != 1 || before[0].st != after[0].st {
		t.Fatalf("idle streams before %d, after %d; want the same one stream", len(before), len(after))
	}
}

func TestCancelledExecIsNotReused(t *testing.T) {
	c := startPair(t)
	if _, _, err := run(t, c, context.Background(), "true", nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	// The caller goes away while the command still writes: the stream is in
	// the middle of a reply and must not carry the next request.
	_, _, err := run(t, c, ctx, "while :; do echo spam; done", nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the deadline", err)
	}
	if n := len(idleStreams(c)); n != 0 {
		t.Fatalf("%d idle streams after a cancelled exec, want 0", n)
	}
	for i := range 3 {
		out, st, err := run(t, c, context.Background(), "echo next", nil)
		if err != nil || st.ExitCode != 0 || out != "next\n" {
			t.Fatalf("exec %d after the cancelled one: %q %+v %v", i, out, st, err)
		}
	}
}

func TestFileTransfersCloseTheirStream(t *testing.T) {
	c := startPair(t)
	ctx := context.Background()
	path := t.TempDir() + "/f"
	if _, err := c.WriteFile(ctx, path, 0o600, strings.NewReader("payload")); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if _, err := c.ReadFile(ctx, path, &got); err != nil || got.String() != "payload" {
		t.Fatalf("%q %v", got.String(), err)
	}
	if n := len(idleStreams(c)); n != 0 {
		t.Fatalf("%d idle streams after file transfers, want 0", n)
	}
	out, _, err := run(t, c, ctx, "cat "+path, nil)
	if err != nil || out != "payload" {
		t.Fatalf("%q %v", out, err)
	}
}

func TestConcurrentExecsKeepTheirOwnOutput(t *testing.T) {
	c := startPair(t)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for g := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 8 {
				want := fmt.Sprintf("g%d-%d", g, i)
				out, st, err := run(t, c, context.Background(), "echo "+want, nil)
				if err != nil || st.ExitCode != 0 || out != want+"\n" {
					errs <- fmt.Errorf("%s: %q %+v %v", want, out, st, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(idleStreams(c)); n > maxIdleStreams {
		t.Fatalf("%d idle streams, at most %d allowed", n, maxIdleStreams)
	}
}

func TestIdleStreamsDieWithTheirSession(t *testing.T) {
	c := startPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := run(t, c, ctx, "true", nil); err != nil {
		t.Fatal(err)
	}
	old := idleStreams(c)
	c.Disconnect() // the agent redials, as after a host restart
	out, _, err := run(t, c, ctx, "echo again", nil)
	if err != nil || out != "again\n" {
		t.Fatalf("%q %v", out, err)
	}
	for _, is := range idleStreams(c) {
		for _, o := range old {
			if is.st == o.st {
				t.Fatal("a stream of the dropped session was reused")
			}
		}
	}
}

// blockUntil is a Writer whose first write waits for release: the caller
// stops reading the stream while frames pile up behind the one it holds.
type blockUntil struct {
	release <-chan struct{}
	bytes.Buffer
}

func (b *blockUntil) Write(p []byte) (int, error) {
	<-b.release
	return b.Buffer.Write(p)
}

// A cancelled exec reports the cancellation, even when the exit the agent
// sent after killing the command is already buffered behind its output.
func TestCancelledExecDoesNotReadOnToTheExit(t *testing.T) {
	c := startPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	release := make(chan struct{})
	out := &blockUntil{release: release}
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, wire.Exec{Command: "echo hi; exec sleep 100", Cwd: "/tmp"}, ExecIO{Stdout: out})
		done <- err
	}()
	time.Sleep(200 * time.Millisecond) // "hi" is in the writer, which holds it
	cancel()
	// The agent sees the stream close, kills the command and sends its exit.
	time.Sleep(500 * time.Millisecond)
	close(release)
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the cancelled exec did not return")
	}
}
