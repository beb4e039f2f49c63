package nodeapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// echoSandbox answers an exec with its command on stdout; the rest of
// runtime.Sandbox is not called by these tests.
type echoSandbox struct {
	runtime.Sandbox
	id    string
	execs *atomic.Int64
	gate  chan struct{} // an exec of "wait" waits for it to close
}

func (s echoSandbox) ID() string            { return s.id }
func (s echoSandbox) Info() runtime.Info    { return runtime.Info{ID: s.id} }
func (s echoSandbox) Done() <-chan struct{} { return nil }
func (s echoSandbox) Err() error            { return nil }
func (s echoSandbox) Exec(_ context.Context, r runtime.ExecRequest) (runtime.ExecResult, error) {
	s.execs.Add(1)
	if r.Command == "wait" {
		<-s.gate
	}
	if r.Stdout != nil {
		_, _ = io.WriteString(r.Stdout, r.Command)
	}
	return runtime.ExecResult{}, nil
}

type echoNode struct {
	failingNode
	execs atomic.Int64
	gate  chan struct{}
}

func (n *echoNode) Sandbox(_ context.Context, id string) (runtime.Sandbox, error) {
	return echoSandbox{id: id, execs: &n.execs, gate: n.gate}, nil
}

// connLog records the node's connections and their states.
type connLog struct {
	mu    sync.Mutex
	order []net.Conn
	state map[net.Conn]http.ConnState
	seen  map[net.Conn]map[http.ConnState]bool
}

func (l *connLog) hook(c net.Conn, s http.ConnState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s == http.StateNew {
		l.order = append(l.order, c)
	}
	l.state[c] = s
	if l.seen[c] == nil {
		l.seen[c] = map[http.ConnState]bool{}
	}
	l.seen[c][s] = true
}

func (l *connLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.order)
}

// waitCount waits until the node has accepted n connections, and a moment
// more for the client to put the last one aside as its spare.
func (l *connLog) waitCount(t *testing.T, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); l.count() < n; {
		if time.Now().After(deadline) {
			t.Fatalf("the node saw %d connections, not %d", l.count(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
}

// A stream call takes the connection dialed after the previous one (the
// spare); a spare the node closed meanwhile costs the call nothing (it is
// made once, on a fresh connection); Close leaves no connection open.
func TestStreamSpareConnection(t *testing.T) {
	n := &echoNode{}
	log := &connLog{state: map[net.Conn]http.ConnState{}, seen: map[net.Conn]map[http.ConnState]bool{}}
	srv := httptest.NewUnstartedServer(nodeapi.NewHandler(n, nodeapi.HandlerOptions{Token: testToken, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	srv.Config.ConnState = log.hook
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := nodeapi.Dial(srv.URL, testToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, time.Minute)
	sb, err := c.Sandbox(ctx, "sb1") // a unary call: connection 1, kept alive
	if err != nil {
		t.Fatal(err)
	}
	exec := func(cmd string) {
		t.Helper()
		o, _, res := run(t, sb, runtime.ExecRequest{Command: cmd})
		if o != cmd || res.ExitCode != 0 {
			t.Fatalf("exec %q: stdout %q, %+v", cmd, o, res)
		}
	}

	exec("one") // dials connection 2; connection 3 is dialed as its spare
	log.waitCount(t, 3)
	exec("two") // on connection 3; connection 4 becomes the spare
	log.waitCount(t, 4)
	log.mu.Lock()
	spareUsed := log.seen[log.order[2]][http.StateHijacked]
	log.mu.Unlock()
	if !spareUsed {
		t.Fatal("the second stream call did not take the spare connection")
	}

	srv.CloseClientConnections() // the spare (connection 4) among them
	time.Sleep(50 * time.Millisecond)
	exec("three")
	if got := n.execs.Load(); got != 3 {
		t.Fatalf("three exec calls ran %d times on the node", got)
	}

	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var open []http.ConnState
		log.mu.Lock()
		for _, s := range log.state {
			if s == http.StateNew || s == http.StateIdle || s == http.StateActive {
				open = append(open, s)
			}
		}
		log.mu.Unlock()
		if len(open) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("connections still open at the node after Close: %v", open)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An exec whose parameters say LateUpgrade gets the node's 101 with its
// first frame, not before the command ran; without it, at once.
func TestLateUpgrade(t *testing.T) {
	for _, late := range []bool{false, true} {
		t.Run(fmt.Sprintf("late=%v", late), func(t *testing.T) {
			n := &echoNode{gate: make(chan struct{})}
			srv := httptest.NewServer(nodeapi.NewHandler(n, nodeapi.HandlerOptions{Token: testToken, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}))
			t.Cleanup(srv.Close)
			conn, err := net.Dial("tcp", srv.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			params, _ := json.Marshal(map[string]any{"Command": "wait", "Stdout": true, "LateUpgrade": late})
			var req bytes.Buffer
			fmt.Fprintf(&req, "POST /node/v1/sandboxes/sb1/stream/exec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n%s: %d\r\nConnection: Upgrade\r\nUpgrade: orkestr-node-stream\r\nContent-Length: 0\r\n\r\n",
				testToken, nodeapi.HeaderVersion, nodeapi.APIVersion)
			req.Write([]byte{'P', 0, 0, 0, byte(len(params))})
			req.Write(params)
			if _, err := conn.Write(req.Bytes()); err != nil {
				t.Fatal(err)
			}
			// While the command waits, the node says nothing (late) or
			// has sent its 101 (not late).
			_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			buf := make([]byte, 4096)
			k, _ := conn.Read(buf)
			early := string(buf[:k])
			if late != (k == 0) || (!late && !strings.HasPrefix(early, "HTTP/1.1 101 ")) {
				t.Fatalf("late=%v: before the command ended the node sent %q", late, early)
			}
			close(n.gate)
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			rest, _ := io.ReadAll(conn)
			all := early + string(rest)
			if !strings.HasPrefix(all, "HTTP/1.1 101 ") || !strings.Contains(all, "\r\n\r\no\x00\x00\x00\x04wait") || !strings.Contains(all, "R\x00") {
				t.Fatalf("late=%v: the node sent %q", late, all)
			}
		})
	}
}
