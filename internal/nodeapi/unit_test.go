package nodeapi_test

// Tests of the transport that need no root and no sandbox (make test-unit):
// errors across the wire, authentication, version negotiation, hostile
// bodies. The node behind the handler is failingNode, which answers every
// call with the error it is given: the transport is what is under test.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
)

type failingNode struct {
	err   error
	calls atomic.Int64
}

func (n *failingNode) fail() error { n.calls.Add(1); return n.err }

func (n *failingNode) Info(context.Context) (nodeapi.Info, error) {
	if err := n.fail(); err != nil {
		return nodeapi.Info{}, err
	}
	return nodeapi.Info{ID: "n1", Region: "eu", APIVersion: nodeapi.APIVersion, Templates: []string{"debian-12"}}, nil
}
func (n *failingNode) Create(context.Context, nodeapi.CreateRequest) (runtime.Sandbox, error) {
	return nil, n.fail()
}
func (n *failingNode) Sandbox(context.Context, string) (runtime.Sandbox, error) {
	return nil, n.fail()
}
func (n *failingNode) Checkpoint(context.Context, string, string) (nodeapi.Snapshot, error) {
	return nodeapi.Snapshot{}, n.fail()
}
func (n *failingNode) CheckpointLive(context.Context, string, string) (nodeapi.Snapshot, error) {
	return nodeapi.Snapshot{}, n.fail()
}
func (n *failingNode) Restore(context.Context, nodeapi.RestoreRequest) (runtime.Sandbox, error) {
	return nil, n.fail()
}
func (n *failingNode) RemoveSnapshot(context.Context, string) error { return n.fail() }
func (n *failingNode) Destroy(context.Context, string) error        { return n.fail() }
func (n *failingNode) Reconcile(context.Context, nodeapi.Keep) (runtime.ReconcileReport, error) {
	return runtime.ReconcileReport{}, n.fail()
}
func (n *failingNode) Metrics(context.Context, string, time.Time) (nodeapi.Metrics, error) {
	return nodeapi.Metrics{}, n.fail()
}

func serveFailing(t *testing.T, err error) (*failingNode, *httptest.Server, *nodeapi.Client) {
	t.Helper()
	n := &failingNode{err: err}
	srv := httptest.NewServer(nodeapi.NewHandler(n, nodeapi.HandlerOptions{Token: testToken, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	t.Cleanup(srv.Close)
	c, e := nodeapi.Dial(srv.URL, testToken, nil)
	if e != nil {
		t.Fatal(e)
	}
	t.Cleanup(c.Close)
	return n, srv, c
}

// Every sentinel a node may return comes back as an error that errors.Is
// the same sentinel and says the node's message word for word (api cuts the
// agent's reason off after the sentinel's text).
func TestErrorsCrossTheWire(t *testing.T) {
	sentinels := []error{
		runtime.ErrNotFound, runtime.ErrStopped, runtime.ErrOutOfMemory, runtime.ErrFileNotFound, runtime.ErrInvalidPath,
		runtime.ErrIsDir, runtime.ErrNotDir, runtime.ErrNotEmpty, runtime.ErrNoSpace, runtime.ErrInvalidRequest,
		runtime.ErrPermission, runtime.ErrAgent, runtime.ErrReadOnly, runtime.ErrFileBusy, runtime.ErrIO,
		runtime.ErrFileLimit, runtime.ErrAgentFailed, runtime.ErrBusy, runtime.ErrNoNetwork, runtime.ErrInvalidArchive,
		runtime.ErrTooLarge, runtime.ErrExists, runtime.ErrCrossDevice, runtime.ErrNoProcess, runtime.ErrNoUser,
		runtime.ErrDetached,
		nodeapi.ErrTemplateNotBuilt, nodeapi.ErrUnknownSize, nodeapi.ErrDiskLow, nodeapi.ErrNoCapacity,
		nodeapi.ErrSnapshotNotFound, nodeapi.ErrNotImplemented,
		context.Canceled, context.DeadlineExceeded,
	}
	n, _, c := serveFailing(t, nil)
	for _, s := range sentinels {
		for _, sent := range []error{s, fmt.Errorf("%w: /workspace/a: the agent's reason", s)} {
			n.err = sent
			_, err := c.Info(context.Background())
			if !errors.Is(err, s) {
				t.Errorf("sent %q, got %v (%T), which is not the sentinel", sent, err, err)
				continue
			}
			if err.Error() != sent.Error() {
				t.Errorf("message changed on the wire: sent %q, got %q", sent, err)
			}
			// Exactly one sentinel of the table matches.
			for _, other := range sentinels {
				if other != s && errors.Is(err, other) {
					t.Errorf("%q also matches %q", sent, other)
				}
			}
			if errors.Is(err, nodeapi.ErrUnreachable) {
				t.Errorf("%q: a node's answer is not ErrUnreachable", sent)
			}
		}
	}
	// Out of memory wraps no other sentinel but must not be sent as stopped.
	n.err = fmt.Errorf("%w (limit 512 MiB)", runtime.ErrOutOfMemory)
	if _, err := c.Info(context.Background()); !errors.Is(err, runtime.ErrOutOfMemory) || errors.Is(err, runtime.ErrStopped) {
		t.Errorf("out of memory came back as %v", err)
	}
	// An error with no sentinel keeps its text and matches none.
	n.err = errors.New("read cgroup of x: no such file")
	_, err := c.Info(context.Background())
	if err == nil || err.Error() != "read cgroup of x: no such file" {
		t.Fatalf("plain error came back as %v", err)
	}
	for _, s := range sentinels {
		if errors.Is(err, s) {
			t.Errorf("plain error matches %v", s)
		}
	}
	var re *nodeapi.RemoteError
	if !errors.As(err, &re) || re.Code != "internal" {
		t.Errorf("plain error: %#v", err)
	}
	// A success decodes.
	n.err = nil
	if info, err := c.Info(context.Background()); err != nil || info.ID != "n1" || info.Templates[0] != "debian-12" {
		t.Errorf("info: %+v, %v", info, err)
	}
}

func TestSandboxCallsOnAMissingSandbox(t *testing.T) {
	_, _, c := serveFailing(t, fmt.Errorf("%w: %q", runtime.ErrNotFound, "nope"))
	if _, err := c.Sandbox(context.Background(), "nope"); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("sandbox: %v", err)
	}
	if _, err := c.Metrics(context.Background(), "../../etc", time.Time{}); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("metrics: %v", err)
	}
}

func raw(t *testing.T, srv *httptest.Server, method, path string, body io.Reader, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestAuthentication(t *testing.T) {
	n, srv, _ := serveFailing(t, nil)
	version := fmt.Sprint(nodeapi.APIVersion)
	cases := map[string]map[string]string{
		"no token":       {nodeapi.HeaderVersion: version},
		"wrong token":    {"Authorization": "Bearer wrong", nodeapi.HeaderVersion: version},
		"token prefix":   {"Authorization": "Bearer " + testToken[:len(testToken)-1], nodeapi.HeaderVersion: version},
		"token longer":   {"Authorization": "Bearer " + testToken + "x", nodeapi.HeaderVersion: version},
		"not bearer":     {"Authorization": "Basic " + testToken, nodeapi.HeaderVersion: version},
		"empty bearer":   {"Authorization": "Bearer ", nodeapi.HeaderVersion: version},
		"no version too": {"Authorization": "Bearer nope"},
	}
	for name, hdr := range cases {
		for _, path := range []string{"/node/v1/info", "/node/v1/sandboxes/x/stream/exec", "/node/v1/nothing"} {
			resp, body := raw(t, srv, http.MethodPost, path, strings.NewReader("{}"), hdr)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s %s: status %d, want 401", name, path, resp.StatusCode)
			}
			if resp.Header.Get(nodeapi.HeaderVersion) != "" || strings.Contains(body, "n1") || strings.Contains(body, testToken) {
				t.Errorf("%s: a 401 told something: %v %q", name, resp.Header, body)
			}
		}
	}
	if n.calls.Load() != 0 {
		t.Fatalf("the node was called %d times without credentials", n.calls.Load())
	}
	// A client with the wrong token: ErrUnreachable, saying why, without
	// the token.
	c, _ := nodeapi.Dial(srv.URL, "wrong-token-value", nil)
	defer c.Close()
	_, err := c.Info(context.Background())
	if !errors.Is(err, nodeapi.ErrUnreachable) || !strings.Contains(err.Error(), "401") || strings.Contains(err.Error(), "wrong-token-value") {
		t.Fatalf("wrong token: %v", err)
	}
	// A node without a token refuses everything.
	srv2 := httptest.NewServer(nodeapi.NewHandler(n, nodeapi.HandlerOptions{}))
	defer srv2.Close()
	c2, _ := nodeapi.Dial(srv2.URL, "", nil)
	defer c2.Close()
	if _, err := c2.Info(context.Background()); !errors.Is(err, nodeapi.ErrUnreachable) {
		t.Fatalf("empty token accepted: %v", err)
	}
}

func TestVersionNegotiation(t *testing.T) {
	n, srv, c := serveFailing(t, nil)
	auth := "Bearer " + testToken
	for _, v := range []string{"", "0", fmt.Sprint(nodeapi.APIVersion + 1), "x", "99999999999999999999"} {
		resp, body := raw(t, srv, http.MethodPost, "/node/v1/info", strings.NewReader("{}"), map[string]string{"Authorization": auth, nodeapi.HeaderVersion: v})
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `"unsupported_version"`) ||
			!strings.Contains(body, fmt.Sprintf("versions %d to %d", nodeapi.MinAPIVersion, nodeapi.APIVersion)) {
			t.Errorf("version %q: %d %s", v, resp.StatusCode, body)
		}
		if resp.Header.Get(nodeapi.HeaderVersion) != fmt.Sprint(nodeapi.APIVersion) {
			t.Errorf("version %q: the answer does not carry the node's version: %v", v, resp.Header)
		}
	}
	if n.calls.Load() != 0 {
		t.Fatalf("the node was called with an unsupported version")
	}
	resp, _ := raw(t, srv, http.MethodPost, "/node/v1/info", nil, map[string]string{"Authorization": auth, nodeapi.HeaderVersion: fmt.Sprint(nodeapi.APIVersion)})
	if resp.StatusCode != http.StatusOK || resp.Header.Get(nodeapi.HeaderVersion) != fmt.Sprint(nodeapi.APIVersion) {
		t.Fatalf("supported version: %d %v", resp.StatusCode, resp.Header)
	}
	if _, err := c.Info(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A node that speaks only a version the client does not (simulated by a
// proxy that answers as a future node would) is unreachable, saying so.
func TestNoCommonVersion(t *testing.T) {
	future := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(nodeapi.HeaderVersion, "9")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"code":"unsupported_version","message":"this node speaks node API versions 8 to 9","min_version":8,"max_version":9}`)
	}))
	defer future.Close()
	c, _ := nodeapi.Dial(future.URL, testToken, nil)
	defer c.Close()
	_, err := c.Info(context.Background())
	if !errors.Is(err, nodeapi.ErrUnreachable) || !strings.Contains(err.Error(), "versions 8 to 9") {
		t.Fatalf("got %v", err)
	}
}

func TestHostileBodies(t *testing.T) {
	n, srv, c := serveFailing(t, nil)
	hdr := map[string]string{"Authorization": "Bearer " + testToken, nodeapi.HeaderVersion: fmt.Sprint(nodeapi.APIVersion)}
	bodies := map[string]io.Reader{
		"garbage":     strings.NewReader("\x00\xff{{{not json"),
		"wrong type":  strings.NewReader(`{"Sandboxes": 7}`),
		"array":       strings.NewReader(`[1,2,3]`),
		"oversized":   bytes.NewReader(bytes.Repeat([]byte(" "), 9<<20)),
		"deep nested": strings.NewReader(strings.Repeat("[", 100000)),
	}
	for name, body := range bodies {
		resp, got := raw(t, srv, http.MethodPost, "/node/v1/reconcile", body, hdr)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(got, `"protocol"`) {
			t.Errorf("%s: %d %s", name, resp.StatusCode, got)
		}
	}
	for _, p := range []string{"/node/v1/nope", "/node/v1/sandboxes/x/nope", "/node/v1/../../etc/passwd"} {
		resp, got := raw(t, srv, http.MethodPost, p, strings.NewReader("{}"), hdr)
		if resp.StatusCode/100 != 4 {
			t.Errorf("%s: %d %s", p, resp.StatusCode, got)
		}
	}
	// A stream call with input, without the upgrade, is refused before the
	// node is asked; so are oversized parameters of one without input.
	resp, got := raw(t, srv, http.MethodPost, "/node/v1/sandboxes/x/stream/terminal", nil, hdr)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(got, "Upgrade") {
		t.Errorf("stream without upgrade: %d %s", resp.StatusCode, got)
	}
	resp, got = raw(t, srv, http.MethodPost, "/node/v1/sandboxes/x/stream/exec", bytes.NewReader(make([]byte, nodeapi.MaxFrame+1)), hdr)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(got, `"protocol"`) {
		t.Errorf("oversized stream parameters: %d %s", resp.StatusCode, got)
	}
	if n.calls.Load() != 0 {
		t.Errorf("the node was called %d times by hostile requests", n.calls.Load())
	}
	// The node still answers.
	if _, err := c.Info(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestUnreachableNode(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there now
	c, err := nodeapi.Dial(url, testToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Info(context.Background())
	if !errors.Is(err, nodeapi.ErrUnreachable) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("info: %v", err)
	}
	if _, err := c.Sandbox(context.Background(), "x"); !errors.Is(err, nodeapi.ErrUnreachable) {
		t.Fatalf("sandbox: %v", err)
	}
	// A cancelled call says so, not that the node is unreachable.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Info(ctx); !errors.Is(err, context.Canceled) || errors.Is(err, nodeapi.ErrUnreachable) {
		t.Fatalf("cancelled: %v", err)
	}
	for _, bad := range []string{"", "node:8080", "ftp://x", "http://", "http://h:1/path"} {
		if _, err := nodeapi.Dial(bad, "t", nil); err == nil {
			t.Errorf("Dial(%q) accepted", bad)
		}
	}
}

// A node whose sandboxes lack an optional interface answers
// ErrNotImplemented for its calls, unary and stream alike; the calls it has
// work, in both stream modes.
func TestNotImplementedAndStreamModes(t *testing.T) {
	srv := httptest.NewServer(nodeapi.NewHandler(&instantNode{}, nodeapi.HandlerOptions{Token: testToken, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	defer srv.Close()
	c, _ := nodeapi.Dial(srv.URL, testToken, nil)
	defer c.Close()
	ctx := context.Background()
	sb, err := c.Sandbox(ctx, "instant")
	if err != nil {
		t.Fatal(err)
	}
	notImpl := map[string]error{}
	_, notImpl["stat_path"] = sb.(runtime.FileOps).StatPath(ctx, runtime.FSRequest{Path: "/x"})
	notImpl["watch"] = sb.(runtime.FileOps).Watch(ctx, runtime.FSRequest{Path: "/x"}, nil, func(runtime.WatchEvent) error { return nil })
	_, notImpl["terminal"] = sb.(runtime.TerminalOpener).OpenTerminal(ctx, runtime.TerminalRequest{})
	_, notImpl["processes"] = sb.(runtime.Processes).ListProcesses(ctx)
	_, notImpl["untar small"] = sb.(runtime.Archiver).Untar(ctx, "/x", 1<<20, strings.NewReader("tar"))
	_, notImpl["untar large"] = sb.(runtime.Archiver).Untar(ctx, "/x", 1<<30, bytes.NewReader(make([]byte, 1<<20)))
	_, notImpl["usage"] = sb.(runtime.UsageReader).Usage(ctx)
	_, notImpl["read as user"] = sb.(runtime.UserFiles).ReadFileAs(ctx, runtime.UserUser, "/x", io.Discard)
	for name, err := range notImpl {
		if !errors.Is(err, nodeapi.ErrNotImplemented) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Exec as a POST and over an upgraded connection.
	for name, req := range map[string]runtime.ExecRequest{
		"post":     {Command: "true", Stdin: strings.NewReader("small")},
		"upgraded": {Command: "true", Signals: make(chan syscall.Signal)},
	} {
		if _, err := sb.Exec(ctx, req); err != nil {
			t.Errorf("exec %s: %v", name, err)
		}
	}
	if st, err := sb.Stat(ctx, "/x"); err != nil || st.Name != "x" {
		t.Errorf("stat: %+v %v", st, err)
	}
}

// A control plane one version ahead of its node: the node refuses the
// newer version naming its range, the client steps down to the highest
// version both speak and the call succeeds, unary and stream alike.
func TestNewerClientStepsDown(t *testing.T) {
	var seen []string
	var mu sync.Mutex
	h := nodeapi.NewHandler(&instantNode{}, nodeapi.HandlerOptions{Token: testToken, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get(nodeapi.HeaderVersion))
		mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	defer srv.Close()
	ctx := context.Background()
	for name, call := range map[string]func(*nodeapi.Client) error{
		"unary": func(c *nodeapi.Client) error { _, err := c.Info(ctx); return err },
		"post stream": func(c *nodeapi.Client) error {
			sb, err := c.Sandbox(ctx, "instant")
			if err != nil {
				return err
			}
			_, err = sb.Exec(ctx, runtime.ExecRequest{Command: "true"})
			return err
		},
		"upgraded stream": func(c *nodeapi.Client) error {
			sb, err := c.Sandbox(ctx, "instant")
			if err != nil {
				return err
			}
			_, err = sb.Exec(ctx, runtime.ExecRequest{Command: "true", Signals: make(chan syscall.Signal)})
			return err
		},
	} {
		c, _ := nodeapi.Dial(srv.URL, testToken, nil)
		nodeapi.SpeakVersionForTest(c, nodeapi.APIVersion+1)
		mu.Lock()
		seen = nil
		mu.Unlock()
		if err := call(c); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		mu.Lock()
		if len(seen) < 2 || seen[0] != fmt.Sprint(nodeapi.APIVersion+1) || seen[len(seen)-1] != fmt.Sprint(nodeapi.APIVersion) {
			t.Errorf("%s: versions sent %v", name, seen)
		}
		mu.Unlock()
		if v := nodeapi.VersionForTest(c); v != nodeapi.APIVersion {
			t.Errorf("%s: the client speaks %d after stepping down", name, v)
		}
		c.Close()
	}
}

// chattySandbox's Exec writes a line, waits for the caller to say it saw it
// (seen) or for a moment to pass, then writes a large stderr and exits 3,
// reporting in exit's Signal whether the caller saw the line while the
// command ran (1) or not (0).
type chattySandbox struct {
	instantSandbox
	seen chan struct{}
	wait time.Duration
}

func (s chattySandbox) Exec(ctx context.Context, req runtime.ExecRequest) (runtime.ExecResult, error) {
	if _, err := io.WriteString(req.Stdout, "first\n"); err != nil {
		return runtime.ExecResult{}, err
	}
	res := runtime.ExecResult{ExitCode: 3}
	select {
	case <-s.seen:
		res.Signal = 1
	case <-time.After(s.wait):
	}
	if _, err := req.Stderr.Write(bytes.Repeat([]byte("e"), 100<<10)); err != nil {
		return runtime.ExecResult{}, err
	}
	return res, nil
}

type chattyNode struct {
	failingNode
	sb chattySandbox
}

func (n *chattyNode) Sandbox(context.Context, string) (runtime.Sandbox, error) { return n.sb, nil }

// signalWriter closes seen at its first write.
type signalWriter struct {
	bytes.Buffer
	once sync.Once
	seen chan struct{}
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.seen) })
	return w.Buffer.Write(p)
}

// An exec's output reaches its caller as the command writes it, unless the
// caller reads it only at the end (Buffered): then the node holds it for
// the result's write. Either way all of it arrives.
func TestExecOutputStreamedOrBuffered(t *testing.T) {
	for _, buffered := range []bool{false, true} {
		seen := make(chan struct{})
		wait := 10 * time.Second // the streamed line must get through
		if buffered {
			wait = 300 * time.Millisecond // long enough for a flushed line to arrive
		}
		n := &chattyNode{sb: chattySandbox{seen: seen, wait: wait}}
		srv := httptest.NewServer(nodeapi.NewHandler(n, nodeapi.HandlerOptions{Token: testToken, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}))
		c, _ := nodeapi.Dial(srv.URL, testToken, nil)
		sb, err := c.Sandbox(context.Background(), "chatty")
		if err != nil {
			t.Fatal(err)
		}
		stdout := &signalWriter{seen: seen}
		var stderr bytes.Buffer
		res, err := sb.Exec(context.Background(), runtime.ExecRequest{Command: "x", Stdout: stdout, Stderr: &stderr, Buffered: buffered})
		c.Close()
		srv.Close()
		if err != nil || res.ExitCode != 3 {
			t.Fatalf("buffered %v: exec: %+v %v", buffered, res, err)
		}
		if stdout.String() != "first\n" || stderr.Len() != 100<<10 {
			t.Errorf("buffered %v: stdout %q, %d bytes of stderr", buffered, stdout.String(), stderr.Len())
		}
		if sawWhileRunning := res.Signal == 1; sawWhileRunning == buffered {
			t.Errorf("buffered %v: the caller saw the first line while the command ran: %v", buffered, sawWhileRunning)
		}
	}
}
