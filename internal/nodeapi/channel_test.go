package nodeapi_test

import (
	"bufio"
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
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// countingServer serves h and counts the HTTP requests that reach it (a
// call on a call channel is not one); refuse, if set, answers 404 to the
// channel's upgrade, as a node from before channels does.
type countingServer struct {
	*httptest.Server
	h        atomic.Pointer[nodeapi.Handler]
	requests atomic.Int64
}

func serveCounting(t *testing.T, n nodeapi.Node, refuseChannels bool) (*countingServer, *nodeapi.Client) {
	return serveCountingTLS(t, n, refuseChannels, false)
}

func serveCountingTLS(t *testing.T, n nodeapi.Node, refuseChannels, overTLS bool) (*countingServer, *nodeapi.Client) {
	t.Helper()
	s := &countingServer{}
	s.h.Store(nodeapi.NewHandler(n, nodeapi.HandlerOptions{Token: testToken, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		if refuseChannels && strings.HasSuffix(r.URL.Path, "/channel") {
			http.NotFound(w, r)
			return
		}
		s.h.Load().ServeHTTP(w, r)
	}))
	var cfg *tls.Config
	if overTLS {
		s.StartTLS()
		cfg = &tls.Config{RootCAs: s.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	} else {
		s.Start()
	}
	t.Cleanup(s.Close)
	c, err := nodeapi.Dial(s.URL, testToken, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return s, c
}

// Calls one after the other go on one call channel: one HTTP request (the
// upgrade) for all of them. A node without channels gets each call as an
// HTTP request, and answers it the same.
func TestCallChannel(t *testing.T) {
	for _, tc := range []struct{ refuse, tls bool }{{false, false}, {true, false}, {false, true}} {
		refuse := tc.refuse
		s, c := serveCountingTLS(t, &instantNode{}, refuse, tc.tls)
		ctx := context.Background()
		sb, err := c.Sandbox(ctx, "instant")
		if err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			if fi, err := sb.Stat(ctx, "/x"); err != nil || fi.Name != "x" {
				t.Fatalf("refuse %v: stat %d: %+v %v", refuse, i, fi, err)
			}
			if res, err := sb.Exec(ctx, runtime.ExecRequest{Command: "true", Buffered: i%2 == 0}); err != nil || res.ExitCode != 0 {
				t.Fatalf("refuse %v: exec %d: %+v %v", refuse, i, res, err)
			}
		}
		want := int64(1)
		if refuse {
			want = 1 + 1 + 40 // the refused upgrade, then every call
		}
		if got := s.requests.Load(); got != want {
			t.Errorf("refuse %v: %d HTTP requests reached the node, want %d", refuse, got, want)
		}
	}
}

// blockingSandbox's Exec waits for its context and says so on cancelled.
type blockingSandbox struct {
	instantSandbox
	started, cancelled chan struct{}
}

func (blockingSandbox) ID() string { return "blocking" }
func (blockingSandbox) Info() runtime.Info {
	return runtime.Info{ID: "blocking", State: runtime.StateRunning}
}

func (s blockingSandbox) Exec(ctx context.Context, _ runtime.ExecRequest) (runtime.ExecResult, error) {
	close(s.started)
	select {
	case <-ctx.Done():
		close(s.cancelled)
		return runtime.ExecResult{}, ctx.Err()
	case <-time.After(30 * time.Second):
		return runtime.ExecResult{ExitCode: 1}, nil
	}
}

type blockingNode struct {
	failingNode
	sb atomic.Pointer[blockingSandbox]
}

func (n *blockingNode) Sandbox(_ context.Context, id string) (runtime.Sandbox, error) {
	if id == "instant" {
		return instantSandbox{}, nil
	}
	return *n.sb.Load(), nil
}

// A caller that gives up on a call cancels it on the node, as closing an
// HTTP request's connection does; the next call finds a channel that works.
func TestCallChannelCancel(t *testing.T) {
	n := &blockingNode{}
	bs := blockingSandbox{started: make(chan struct{}), cancelled: make(chan struct{})}
	n.sb.Store(&bs)
	_, c := serveCounting(t, n, false)
	sb, err := c.Sandbox(context.Background(), "blocking")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-bs.started
		cancel()
	}()
	if _, err := sb.Exec(ctx, runtime.ExecRequest{Command: "sleep"}); !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled exec: %v", err)
	}
	select {
	case <-bs.cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the node's exec was not cancelled")
	}
	is, err := c.Sandbox(context.Background(), "instant")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := is.Stat(context.Background(), "/x"); err != nil {
		t.Errorf("a call after the cancelled one: %v", err)
	}
}

// A node shutting down closes its idle channels; the client's next call
// goes on a new connection (here to a new node on the same address).
func TestCallChannelAfterShutdown(t *testing.T) {
	s, c := serveCounting(t, &instantNode{}, false)
	ctx := context.Background()
	sb, err := c.Sandbox(ctx, "instant")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.h.Load().Shutdown(sctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	s.h.Store(nodeapi.NewHandler(&instantNode{}, nodeapi.HandlerOptions{Token: testToken, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	for i := range 3 {
		// First a process's start, which is never sent twice: the closed
		// channel must be found closed before it is used.
		if _, err := sb.(runtime.Processes).StartProcess(ctx, runtime.ProcessRequest{Command: "true"}); !errors.Is(err, nodeapi.ErrNotImplemented) {
			t.Fatalf("process start %d after the node shut down: %v", i, err)
		}
		if _, err := sb.Stat(ctx, "/x"); err != nil {
			t.Fatalf("stat %d after the node shut down: %v", i, err)
		}
	}
}

// rawChannel upgrades a connection to a call channel by hand.
func rawChannel(t *testing.T, s *countingServer) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, br, resp := rawUpgrade(t, s.Listener.Addr().String(), "/node/v1/channel", "orkestr-node-channel", testToken)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("upgrade: %d %s", resp.StatusCode, b)
	}
	return conn, br
}

func sendFrame(conn net.Conn, typ byte, p []byte) { writeFrame(conn, typ, uint32(len(p)), p) }

func readFrame(br *bufio.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return 0, nil, err
	}
	b := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
	_, err := io.ReadFull(br, b)
	return hdr[0], b, err
}

// Hostile channels: a call without the token is answered 401 and gets
// nothing of the node; a wrong token gets no channel; frames that break
// the protocol close the channel, and the node serves on.
func TestCallChannelHostile(t *testing.T) {
	n := &instantNode{}
	s, c := serveCounting(t, n, false)

	conn, br := rawChannel(t, s)
	head, _ := json.Marshal(map[string]any{"Method": "POST", "Path": "/node/v1/info", "Header": map[string][]string{nodeapi.HeaderVersion: {fmt.Sprint(nodeapi.APIVersion)}}})
	sendFrame(conn, 'Q', head)
	typ, b, err := readFrame(br)
	if err != nil || typ != 'H' || !strings.Contains(string(b), `"Status":401`) {
		t.Fatalf("a call without the token: %q %s %v", typ, b, err)
	}
	if calls := n.calls.Load(); calls != 0 {
		t.Errorf("the node was called %d times by calls without the token", calls)
	}

	if _, _, resp := rawUpgrade(t, s.Listener.Addr().String(), "/node/v1/channel", "orkestr-node-channel", "wrong"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a channel with a wrong token: %d", resp.StatusCode)
	}

	for name, send := range map[string]func(net.Conn){
		"not a call":       func(c net.Conn) { sendFrame(c, 'B', []byte("x")) },
		"not JSON":         func(c net.Conn) { sendFrame(c, 'Q', []byte("{")) },
		"outside the API":  func(c net.Conn) { sendFrame(c, 'Q', []byte(`{"Method":"GET","Path":"/etc/passwd"}`)) },
		"a channel in one": func(c net.Conn) { sendFrame(c, 'Q', []byte(`{"Method":"POST","Path":"/node/v1/channel"}`)) },
		"a huge body": func(c net.Conn) {
			sendFrame(c, 'Q', []byte(`{"Method":"POST","Path":"/node/v1/info","BodyLen":1000000000}`))
		},
		"a negative body": func(c net.Conn) { sendFrame(c, 'Q', []byte(`{"Method":"POST","Path":"/node/v1/info","BodyLen":-1}`)) },
		"a longer body": func(c net.Conn) {
			sendFrame(c, 'Q', []byte(`{"Method":"POST","Path":"/node/v1/info","BodyLen":2}`))
			sendFrame(c, 'B', []byte("{}}"))
		},
		"a frame too large": func(c net.Conn) { c.Write([]byte{'Q', 0xff, 0xff, 0xff, 0xff}) },
	} {
		conn, br := rawChannel(t, s)
		send(conn)
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if typ, b, err := readFrame(br); !errors.Is(err, io.EOF) {
			t.Errorf("%s: the node answered %q %q (%v) instead of closing the channel", name, typ, b, err)
		}
	}
	if _, err := c.Info(context.Background()); !errors.Is(err, n.err) {
		t.Errorf("the node after hostile channels: %v", err)
	}
}

type panickyNode struct {
	failingNode
	panicked atomic.Bool
}

func (n *panickyNode) Info(ctx context.Context) (nodeapi.Info, error) {
	if n.panicked.CompareAndSwap(false, true) {
		panic("a bug in the node")
	}
	return n.failingNode.Info(ctx)
}

// A call whose handler panics ends its channel, not the node: the caller
// gets an error and the next call is answered.
func TestCallChannelPanic(t *testing.T) {
	n := &panickyNode{}
	_, c := serveCounting(t, n, false)
	if _, err := c.Info(context.Background()); err == nil {
		t.Error("a call whose handler panicked succeeded")
	}
	if i, err := c.Info(context.Background()); err != nil || i.ID != "n1" {
		t.Errorf("the call after a panic: %+v %v", i, err)
	}
}
