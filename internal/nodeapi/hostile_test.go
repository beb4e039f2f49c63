package nodeapi_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	goruntime "runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// rawStream opens a stream call by hand and returns the connection after
// the node's answer to the upgrade.
func rawStream(t *testing.T, srv *httptest.Server, sandbox, op string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	return rawUpgrade(t, srv.Listener.Addr().String(), "/node/v1/sandboxes/"+sandbox+"/stream/"+op, "orkestr-node-stream", testToken)
}

// rawUpgrade asks the node at addr by hand to upgrade a connection to
// protocol for path, with token, and returns the connection after the
// node's answer.
func rawUpgrade(t *testing.T, addr, path, protocol, token string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer %s\r\n%s: %d\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n",
		path, token, nodeapi.HeaderVersion, nodeapi.APIVersion, protocol)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	return conn, br, resp
}

func writeFrame(w io.Writer, typ byte, length uint32, payload []byte) {
	var hdr [5]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], length)
	_, _ = w.Write(hdr[:])
	_, _ = w.Write(payload)
}

// lastFrame reads frames until the call's last one and returns its code
// ("" for a result).
func lastFrame(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			t.Fatalf("no last frame: %v", err)
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
		if _, err := io.ReadFull(br, b); err != nil {
			t.Fatalf("short frame: %v", err)
		}
		switch hdr[0] {
		case 'R':
			return ""
		case 'E':
			var we struct{ Code, Message string }
			if err := json.Unmarshal(b, &we); err != nil {
				t.Fatal(err)
			}
			return we.Code
		}
	}
}

func TestHostileStreams(t *testing.T) {
	s := serve(t)
	sb := s.create(t, runtime.Claim{})
	direct, _ := s.node.env.Driver.Get(sb.ID())
	params := func(v any) []byte { b, _ := json.Marshal(v); return b }

	cases := []struct {
		name string
		op   string
		send func(net.Conn)
	}{
		{"first frame is not the parameters", "exec", func(c net.Conn) { writeFrame(c, 'i', 3, []byte("abc")) }},
		{"oversized frame", "exec", func(c net.Conn) { writeFrame(c, 'P', 0xffffffff, []byte("{}")) }},
		{"garbage parameters", "exec", func(c net.Conn) { writeFrame(c, 'P', 4, []byte("\x00\xff{[")) }},
		{"unknown frame type mid-call", "exec", func(c net.Conn) {
			p := params(map[string]any{"Command": "sleep 30", "Stdin": true})
			writeFrame(c, 'P', uint32(len(p)), p)
			writeFrame(c, 'Q', 1, []byte("x"))
		}},
		{"oversized frame mid-call", "write_file", func(c net.Conn) {
			p := params(map[string]any{"Path": "/workspace/hostile"})
			writeFrame(c, 'P', uint32(len(p)), p)
			writeFrame(c, 'i', nodeapi.MaxFrame+1, nil)
		}},
		{"input past the window", "exec", func(c net.Conn) {
			// Not sleep 30: the agent kills a cancelled command only once
			// the stdin it is writing to it is read (in process too).
			p := params(map[string]any{"Command": "sleep 2", "Stdin": true})
			writeFrame(c, 'P', uint32(len(p)), p)
			// 32 MiB with no credit asked for: past what the agent and the
			// command's pipe take, the node's window overflows.
			go func() {
				chunk := bytes.Repeat([]byte("x"), nodeapi.MaxFrame)
				for range 128 {
					writeFrame(c, 'i', uint32(len(chunk)), chunk)
				}
			}()
		}},
		{"bad signal", "exec", func(c net.Conn) {
			p := params(map[string]any{"Command": "sleep 30", "Signals": true})
			writeFrame(c, 'P', uint32(len(p)), p)
			writeFrame(c, 's', 16, []byte(`{"signal": 9999}`))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			conn, br, resp := rawStream(t, s.srv, sb.ID(), tc.op)
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %d", resp.StatusCode)
			}
			tc.send(conn)
			if code := lastFrame(t, br); code != "protocol" {
				t.Fatalf("last frame code %q, want protocol", code)
			}
			if time.Since(start) > 20*time.Second {
				t.Fatalf("the node took %v to refuse", time.Since(start))
			}
		})
	}
	// Refusals before the upgrade.
	for name, path := range map[string][2]string{
		"unknown sandbox": {"no-such-sandbox", "exec"},
		"unknown call":    {sb.ID(), "format_disk"},
	} {
		_, _, resp := rawStream(t, s.srv, path[0], path[1])
		if resp.StatusCode/100 != 4 || !resp.Close {
			t.Errorf("%s: %d (close %v)", name, resp.StatusCode, resp.Close)
		}
	}
	// A stream call without input as a plain POST with garbage parameters:
	// the call's error frame says so.
	for _, body := range []string{"\x00\xff{[", `{"Command": 7}`, `[1,2]`} {
		req, _ := http.NewRequest(http.MethodPost, s.srv.URL+"/node/v1/sandboxes/"+sb.ID()+"/stream/exec", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testToken)
		req.Header.Set(nodeapi.HeaderVersion, strconv.Itoa(nodeapi.APIVersion))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		code := lastFrame(t, bufio.NewReader(resp.Body))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || code != "protocol" {
			t.Errorf("POST %q: %d, last frame %q", body, resp.StatusCode, code)
		}
	}
	// Garbage instead of HTTP.
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Write(bytes.Repeat([]byte{0, 0xff, '\r', '\n'}, 10000))
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(conn)
	conn.Close()
	if !bytes.HasPrefix(b, []byte("HTTP/1.1 400")) {
		t.Errorf("garbage: %.100q", b)
	}
	// The node and the sandbox are unaffected; nothing was written.
	if o := sh(t, sb, "echo fine; ls /workspace"); o != "fine\n" {
		t.Fatalf("after hostile streams: %q", o)
	}
	waitFor(t, 30*time.Second, "the commands of refused streams to end", func() bool {
		return sh(t, direct, `for p in /proc/[0-9]*; do cat $p/comm; done 2>/dev/null | grep -c '^sleep$' || true`) == "0\n"
	})
}

// nodeGoroutines lists the goroutines running this package's code (the
// tests' own are nodeapi_test).
func nodeGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:goruntime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "internal/nodeapi.") {
			out = append(out, g)
		}
	}
	return out
}

// A client that goes mid-stream cancels the call on the node: the command
// is killed, a half-written file never appears, and no goroutine stays.
func TestClientDisconnectsMidStream(t *testing.T) {
	s := serve(t)
	sb := s.create(t, runtime.Claim{})
	direct, _ := s.node.env.Driver.Get(sb.ID())

	// Exec.
	ctx, cancel := context.WithCancel(context.Background())
	out := &waitWriter{}
	done := make(chan error, 1)
	go func() {
		_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "echo $$; exec sleep 1000", Stdout: out})
		done <- err
	}()
	out.waitFor(t, "\n", 30*time.Second)
	pid, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	if o := sh(t, direct, fmt.Sprintf("kill -0 %d && echo alive", pid)); o != "alive\n" {
		t.Fatalf("command not running: %q", o)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("exec after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("exec did not return after its context ended")
	}
	waitFor(t, 30*time.Second, "the node to kill the command", func() bool {
		return sh(t, direct, fmt.Sprintf("kill -0 %d 2>/dev/null && echo alive || true", pid)) == ""
	})

	// A file upload that stops half way.
	ctx, cancel = context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	go func() { _, _ = pw.Write(bytes.Repeat([]byte("y"), 3<<20)) }()
	wdone := make(chan error, 1)
	go func() {
		_, err := sb.WriteFile(ctx, "/workspace/half", 0o644, pr)
		wdone <- err
	}()
	time.Sleep(500 * time.Millisecond)
	cancel()
	if err := <-wdone; !errors.Is(err, context.Canceled) {
		t.Fatalf("write after cancel: %v", err)
	}
	pw.Close()
	waitFor(t, 30*time.Second, "no half-written file", func() bool {
		return sh(t, direct, "ls -A /workspace") == ""
	})

	// A watch and an attach that are left.
	ctx, cancel = context.WithCancel(context.Background())
	p, err := sb.(runtime.Processes).StartProcess(ctx, runtime.ProcessRequest{Command: "sleep 1000"})
	if err != nil {
		t.Fatal(err)
	}
	adone := make(chan error, 2)
	go func() {
		_, err := sb.(runtime.Processes).AttachProcess(ctx, p.PID, true, runtime.ProcessOutput{Stdout: io.Discard})
		adone <- err
	}()
	go func() {
		adone <- sb.(runtime.FileOps).Watch(ctx, runtime.FSRequest{Path: "/workspace"}, nil, func(runtime.WatchEvent) error { return nil })
	}()
	time.Sleep(time.Second)
	cancel()
	for range 2 {
		if err := <-adone; !errors.Is(err, context.Canceled) {
			t.Fatalf("after cancel: %v", err)
		}
	}
	// The background process is not the stream's: it runs on.
	ps, err := sb.(runtime.Processes).ListProcesses(context.Background())
	if err != nil || len(ps) != 1 || !ps[0].Running {
		t.Fatalf("processes after the attach went: %+v %v", ps, err)
	}

	s.client.Close()
	waitFor(t, 30*time.Second, "the node's stream goroutines to end", func() bool { return len(nodeGoroutines()) == 0 })
	if left := nodeGoroutines(); len(left) > 0 {
		t.Fatalf("goroutines left:\n%s", strings.Join(left, "\n\n"))
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			if left := nodeGoroutines(); len(left) > 0 && strings.Contains(what, "goroutines") {
				t.Fatalf("waiting for %s:\n%s", what, strings.Join(left, "\n\n"))
			}
			t.Fatalf("waited %v for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The node's own calls through the client: create (and its errors), find,
// checkpoint, restore, reconcile, destroy; Done and Err of a remote sandbox
// once the node says it is gone; the same over TLS.
func TestRemoteLifecycle(t *testing.T) {
	s := serve(t)
	ctx := ctxT(t, 3*time.Minute)
	if _, err := s.client.Create(ctx, nodeapi.CreateRequest{Template: "windows-95"}); !errors.Is(err, nodeapi.ErrTemplateNotBuilt) || !strings.Contains(err.Error(), "windows-95") {
		t.Fatalf("unknown template: %v", err)
	}
	if _, err := s.client.Create(ctx, nodeapi.CreateRequest{Template: "debian-12", Size: "huge"}); !errors.Is(err, nodeapi.ErrUnknownSize) {
		t.Fatalf("unknown size: %v", err)
	}
	if _, err := s.client.Sandbox(ctx, "not-a-sandbox"); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("unknown runtime id: %v", err)
	}
	if _, err := s.client.Restore(ctx, nodeapi.RestoreRequest{Snapshot: "nope", Template: "debian-12"}); !errors.Is(err, nodeapi.ErrSnapshotNotFound) {
		t.Fatalf("unknown snapshot: %v", err)
	}

	sb := s.create(t, runtime.Claim{})
	sh(t, sb, "echo kept > /workspace/state")
	snap, err := s.client.Checkpoint(ctx, sb.ID(), "")
	if err != nil || snap.ID == "" || snap.Bytes == 0 {
		t.Fatalf("checkpoint: %+v %v", snap, err)
	}
	// The old handle learns the sandbox is gone on its next call.
	if _, err := sb.Stat(ctx, "/workspace"); !errors.Is(err, runtime.ErrNotFound) && !errors.Is(err, runtime.ErrStopped) {
		t.Fatalf("call on a checkpointed sandbox: %v", err)
	}
	select {
	case <-sb.Done():
	default:
		t.Fatal("Done not closed after a call found the sandbox gone")
	}
	if sb.Err() == nil || sb.Info().State != runtime.StateStopped {
		t.Fatalf("err %v, state %s", sb.Err(), sb.Info().State)
	}
	restored, err := s.client.Restore(ctx, nodeapi.RestoreRequest{SandboxID: "sbx_test", Snapshot: snap.ID, Template: "debian-12"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = restored.Destroy(context.Background()) })
	if o := sh(t, restored, "cat /workspace/state"); o != "kept\n" {
		t.Fatalf("restored: %q", o)
	}
	if err := s.client.RemoveSnapshot(ctx, snap.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.client.RemoveSnapshot(ctx, snap.ID); err != nil {
		t.Fatalf("removing a removed snapshot: %v", err)
	}
	rep, err := s.client.Reconcile(ctx, nodeapi.Keep{Sandboxes: map[string]string{restored.ID(): "sbx_test"}})
	if err != nil {
		t.Fatal(err)
	}
	_ = rep

	// Over TLS: unary and stream calls.
	tsrv := httptest.NewTLSServer(nodeapi.NewHandler(s.node, nodeapi.HandlerOptions{Token: testToken, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	defer tsrv.Close()
	tc, err := nodeapi.Dial(tsrv.URL, testToken, &tls.Config{RootCAs: tsrv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tsb, err := tc.Sandbox(ctx, restored.ID())
	if err != nil {
		t.Fatal(err)
	}
	if o := sh(t, tsb, "head -c 5000000 /dev/zero | wc -c"); o != "5000000\n" {
		t.Fatalf("over TLS: %q", o)
	}
	// An upgraded stream over TLS (its connection is closed by halves).
	if n, err := tsb.WriteFile(ctx, "/workspace/tls.bin", 0o600, newPRNG(9, 3<<20)); err != nil || n != 3<<20 {
		t.Fatalf("write over TLS: %d %v", n, err)
	}
	var back bytes.Buffer
	if _, err := tsb.ReadFile(ctx, "/workspace/tls.bin", &back); err != nil || back.Len() != 3<<20 {
		t.Fatalf("read over TLS: %d %v", back.Len(), err)
	}
	want, _ := io.ReadAll(newPRNG(9, 3<<20))
	if !bytes.Equal(back.Bytes(), want) {
		t.Fatal("read over TLS differs from what was written")
	}
	untrusted, _ := nodeapi.Dial(tsrv.URL, testToken, nil)
	defer untrusted.Close()
	if _, err := untrusted.Info(ctx); !errors.Is(err, nodeapi.ErrUnreachable) {
		t.Fatalf("untrusted certificate: %v", err)
	}

	// A sandbox that stops under a running command: the call says so and
	// the handle's Done closes.
	victim := s.create(t, runtime.Claim{})
	out := &waitWriter{}
	execDone := make(chan error, 1)
	go func() {
		_, err := victim.Exec(ctx, runtime.ExecRequest{Command: "echo up; sleep 600", Stdout: out})
		execDone <- err
	}()
	out.waitFor(t, "up", 30*time.Second)
	if vd, ok := s.node.env.Driver.Get(victim.ID()); !ok || vd.Destroy(ctx) != nil {
		t.Fatal("cannot destroy the victim on the node")
	}
	select {
	case err := <-execDone:
		if !errors.Is(err, runtime.ErrStopped) {
			t.Fatalf("exec under a stopped sandbox: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("exec did not end with its sandbox")
	}
	select {
	case <-victim.Done():
	default:
		t.Fatal("Done not closed after an exec found the sandbox stopped")
	}
	if !errors.Is(victim.Err(), runtime.ErrStopped) {
		t.Fatalf("Err: %v", victim.Err())
	}

	// Destroy through the handle: Done closes; the node no longer has it.
	if err := restored.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-restored.Done():
	default:
		t.Fatal("Done not closed after Destroy")
	}
	if _, err := s.client.Sandbox(ctx, restored.ID()); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("after destroy: %v", err)
	}
	if _, err := tsb.Exec(ctx, runtime.ExecRequest{Command: "true"}); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("stream on a destroyed sandbox: %v", err)
	}
	if tsb.Err() == nil {
		t.Fatal("Err not set after a stream found the sandbox gone")
	}
	if err := s.client.Destroy(ctx, restored.ID()); err != nil {
		t.Fatalf("destroying a destroyed sandbox: %v", err)
	}
}
