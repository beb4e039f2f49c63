package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// sizedBuffer records what ExpectSize announced: it is called only on the
// data connection path.
type sizedBuffer struct {
	bytes.Buffer
	expected int64
}

func (s *sizedBuffer) ExpectSize(n int64) { s.expected = n }

// TestDataConnRoundTrip: files as root move over a data connection, byte
// for byte, an empty one included; the size is announced before the bytes.
func TestDataConnRoundTrip(t *testing.T) {
	c := startPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	data := make([]byte, 9<<20+123)
	_, _ = rand.Read(data)
	for _, content := range [][]byte{data, nil} {
		path := filepath.Join(dir, "f.bin")
		n, err := c.WriteFile(ctx, path, 0o640, bytes.NewReader(content))
		if err != nil || n != int64(len(content)) {
			t.Fatalf("upload of %d bytes: %d, %v", len(content), n, err)
		}
		if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, content) {
			t.Fatalf("on disk: %d bytes, %v", len(b), err)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
			t.Fatalf("mode %v, want 0640", fi.Mode())
		}
		got := &sizedBuffer{expected: -1}
		fi, err := c.ReadFile(ctx, path, got)
		if err != nil || fi.Size != int64(len(content)) || !bytes.Equal(got.Bytes(), content) {
			t.Fatalf("download: %d bytes of %d, %v", got.Len(), len(content), err)
		}
		// An empty file comes in frames: its size may say nothing.
		want := int64(len(content))
		if want == 0 {
			want = -1
		}
		if got.expected != want {
			t.Fatalf("ExpectSize(%d), want %d (-1: not called)", got.expected, want)
		}
	}
	// A file whose size is not its content (everything on /proc looks
	// empty) arrives whole, in frames.
	got := &sizedBuffer{expected: -1}
	if _, err := c.ReadFile(ctx, "/proc/meminfo", got); err != nil || !strings.Contains(got.String(), "MemTotal:") || got.expected != -1 {
		t.Fatalf("/proc/meminfo: %q (ExpectSize %d), %v", got.String(), got.expected, err)
	}
	c.mu.Lock()
	pending := len(c.pending)
	c.mu.Unlock()
	if pending != 0 {
		t.Fatalf("%d data connection tickets left after the transfers", pending)
	}
}

// failingReader gives n bytes, then fails like a client that went away.
type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("client went away")
	}
	p = p[:min(len(p), f.n)]
	for i := range p {
		p[i] = 'x'
	}
	f.n -= len(p)
	return len(p), nil
}

// blockingReader gives n bytes, then blocks until ctx ends.
type blockingReader struct {
	n   int
	ctx context.Context
}

func (b *blockingReader) Read(p []byte) (int, error) {
	if b.n <= 0 {
		<-b.ctx.Done()
		return 0, b.ctx.Err()
	}
	p = p[:min(len(p), b.n)]
	b.n -= len(p)
	return len(p), nil
}

// TestCutUploadLeavesNothing: an upload whose source fails, or whose
// caller gives up, halfway replaces nothing and leaves no temporary file,
// although the agent already has megabytes of it on its data connection.
func TestCutUploadLeavesNothing(t *testing.T) {
	c := startPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	old := filepath.Join(dir, "old")
	if err := os.WriteFile(old, []byte("old contents"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteFile(ctx, old, 0, &failingReader{n: 5 << 20}); err == nil || !strings.Contains(err.Error(), "client went away") {
		t.Fatalf("cut upload: %v", err)
	}
	cctx, ccancel := context.WithCancel(ctx)
	time.AfterFunc(300*time.Millisecond, ccancel)
	if _, err := c.WriteFile(cctx, filepath.Join(dir, "new"), 0, &blockingReader{n: 5 << 20, ctx: cctx}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled upload: %v", err)
	}
	// The agent cleans up when it notices; give it a moment.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ents, _ := os.ReadDir(dir)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if len(names) == 1 && names[0] == "old" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after cut uploads the directory holds %q, want only old", names)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if b, _ := os.ReadFile(old); string(b) != "old contents" {
		t.Fatalf("a cut upload replaced the file: %q", b)
	}
	// The channel still serves.
	if _, err := c.WriteFile(ctx, old, 0, strings.NewReader("new")); err != nil {
		t.Fatal(err)
	}
}

// TestDownloadOfAShrinkingFile: a file truncated while it is sent is an
// error, never a short download reported as complete.
func TestDownloadOfAShrinkingFile(t *testing.T) {
	c := startPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, make([]byte, 64<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	truncated := false
	w := writerFunc(func(p []byte) (int, error) {
		if !truncated {
			truncated = true
			if err := os.Truncate(path, 0); err != nil {
				return 0, err
			}
		}
		return len(p), nil
	})
	_, err := c.ReadFile(ctx, path, w)
	if err == nil || !strings.Contains(err.Error(), "changed size") {
		t.Fatalf("download of a file truncated under it: %v", err)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestDataConnHostileHellos: a data connection with a ticket nobody asked
// for, or one used twice, or without the token, is refused; the session
// goes on.
func TestDataConnHostileHellos(t *testing.T) {
	c := startPair(t)
	token, err := os.ReadFile(filepath.Join(c.dir, wire.TokenName))
	if err != nil {
		t.Fatal(err)
	}
	hello := func(tok, ticket string) string {
		t.Helper()
		conn, err := net.Dial("unix", filepath.Join(c.dir, wire.SocketName))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		b, _ := json.Marshal(wire.Hello{Version: wire.Version, Token: tok, DataConn: ticket})
		if _, err := conn.Write(append(b, '\n')); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(conn).ReadString('\n')
		return line
	}
	if got := hello(string(token), "00112233445566778899aabbccddeeff"); got != "bad ticket\n" {
		t.Fatalf("unknown ticket: %q", got)
	}
	ticket, _, drop, ok := c.expectData()
	if !ok {
		t.Fatal("the agent did not offer data connections")
	}
	defer drop()
	if got := hello("wrong", ticket); got != "bad token\n" {
		t.Fatalf("wrong token: %q", got)
	}
	if got := hello(string(token), ticket); got != "ok\n" {
		t.Fatalf("the ticket asked for: %q", got)
	}
	if got := hello(string(token), ticket); got != "bad ticket\n" {
		t.Fatalf("a ticket used twice: %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("the session after hostile data connections: %v", err)
	}
	var got bytes.Buffer
	path := filepath.Join(t.TempDir(), "f")
	if _, err := c.WriteFile(ctx, path, 0, strings.NewReader("still works")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadFile(ctx, path, &got); err != nil || got.String() != "still works" {
		t.Fatalf("%q %v", got.String(), err)
	}

}
