package fleet_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
)

// cuttingProxy forwards TCP connections to a node's API. Armed, it drops
// the node's next answer and closes that connection, as a network that
// fails after the node acted on a call but before its answer arrived.
type cuttingProxy struct {
	ln     net.Listener
	target string
	armed  atomic.Bool
	cuts   atomic.Int32
	mu     sync.Mutex
	seen   map[string]int // request lines ("POST /node/v1/create") forwarded
	conns  []net.Conn
}

var callPath = regexp.MustCompile(`"Path":"(/node/v1/[^"?]*)`)

func newCuttingProxy(t *testing.T, target string) *cuttingProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cuttingProxy{ln: ln, target: target, seen: map[string]int{}}
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	return p
}

func (p *cuttingProxy) url() string { return "http://" + p.ln.Addr().String() }

func (p *cuttingProxy) track(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
}

func (p *cuttingProxy) count(path string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[path]
}

func (p *cuttingProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		n, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.track(c)
		p.track(n)
		go func() { // client → node, noting the request lines
			buf := make([]byte, 64<<10)
			for {
				k, err := c.Read(buf)
				if k > 0 {
					for _, line := range bytes.Split(buf[:k], []byte("\r\n")) {
						if bytes.HasPrefix(line, []byte("POST /")) {
							f := bytes.Fields(line)
							p.mu.Lock()
							p.seen[string(f[1])]++
							p.mu.Unlock()
						}
					}
					// Calls on a call channel: their head frames name the path.
					for _, m := range callPath.FindAllSubmatch(buf[:k], -1) {
						p.mu.Lock()
						p.seen[string(m[1])]++
						p.mu.Unlock()
					}
					if _, werr := n.Write(buf[:k]); werr != nil {
						return
					}
				}
				if err != nil {
					n.Close()
					return
				}
			}
		}()
		go func() { // node → client, unless armed
			buf := make([]byte, 64<<10)
			for {
				k, err := n.Read(buf)
				if k > 0 && p.armed.CompareAndSwap(true, false) {
					p.cuts.Add(1)
					c.Close()
					n.Close()
					return
				}
				if k > 0 {
					if _, werr := c.Write(buf[:k]); werr != nil {
						return
					}
				}
				if err != nil {
					c.Close()
					return
				}
			}
		}()
	}
}

// TestStartRepeatedAfterALostAnswer: the control plane's transport sends a
// create or a restore again when the connection broke after the node had
// carried it out (the answer never came); the node answers the repeat with
// the sandbox the first call started, and runs exactly one.
func TestStartRepeatedAfterALostAnswer(t *testing.T) {
	ctx := context.Background()
	st, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "orkestr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := config.Default()
	cfg.Fleet = config.Fleet{Enabled: true, NodeToken: token}
	fn := startNode(t, st, cfg, "a", "fsn1", 8)
	proxy := newCuttingProxy(t, fn.srv.Listener.Addr().String())
	c, err := nodeapi.Dial(proxy.url(), token, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A call is replayed only on a connection (a call channel) reused from
	// an earlier call: open one.
	if _, err := c.Info(ctx); err != nil {
		t.Fatal(err)
	}
	const acct = "acc_dedupe"
	sandboxes := func(id string) (n int, runtimeID string) {
		for _, r := range fn.n.Running() {
			if r.SandboxID == id {
				n++
				runtimeID = r.RuntimeID
			}
		}
		return n, runtimeID
	}
	cut := func(t *testing.T, path string, call func() (runtime.Sandbox, error)) runtime.Sandbox {
		t.Helper()
		before, cuts := proxy.count(path), proxy.cuts.Load()
		proxy.armed.Store(true)
		sb, err := call()
		if err != nil {
			t.Fatalf("%s after a cut connection: %v", path, err)
		}
		if proxy.cuts.Load() != cuts+1 {
			t.Fatal("the proxy did not cut the answer: the test proves nothing")
		}
		if got := proxy.count(path) - before; got != 2 {
			t.Fatalf("%s reached the node %d times, want 2 (the call and its replay)", path, got)
		}
		return sb
	}

	total := fn.n.RuntimeSandboxes(ctx)
	id := "sbx_" + ulid.Make().String()
	sb := cut(t, "/node/v1/create", func() (runtime.Sandbox, error) {
		return c.Create(ctx, nodeapi.CreateRequest{SandboxID: id, AccountID: acct, Template: "debian-12", Size: "small"})
	})
	n, rid := sandboxes(id)
	if n != 1 || sb.ID() != rid {
		t.Fatalf("after a repeated create the node runs %d sandboxes for %s (want 1), answered %s, runs %s", n, id, sb.ID(), rid)
	}
	if got := fn.n.RuntimeSandboxes(ctx); got != total+1 {
		t.Fatalf("the driver runs %d sandboxes after one create, want %d", got, total+1)
	}

	// The same id for another account: refused, nothing started.
	_, err = c.Create(ctx, nodeapi.CreateRequest{SandboxID: id, AccountID: "acc_other", Template: "debian-12", Size: "small"})
	if !errors.Is(err, runtime.ErrExists) {
		t.Fatalf("create of a running sandbox id for another account: %v, want runtime.ErrExists", err)
	}
	if got := fn.n.RuntimeSandboxes(ctx); got != total+1 {
		t.Fatalf("the refused create started a sandbox (%d, want %d)", got, total+1)
	}

	// Restore: checkpoint it, then restore with the answer lost.
	snap, err := c.Checkpoint(ctx, sb.ID(), id+"-snap")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := sandboxes(id); n != 0 {
		t.Fatalf("the node still runs %s after its checkpoint", id)
	}
	total = fn.n.RuntimeSandboxes(ctx)
	rb := cut(t, "/node/v1/restore", func() (runtime.Sandbox, error) {
		return c.Restore(ctx, nodeapi.RestoreRequest{SandboxID: id, AccountID: acct, Snapshot: snap.ID, Template: "debian-12", Size: "small"})
	})
	n, rid = sandboxes(id)
	if n != 1 || rb.ID() != rid {
		t.Fatalf("after a repeated restore the node runs %d sandboxes for %s (want 1), answered %s, runs %s", n, id, rb.ID(), rid)
	}
	if got := fn.n.RuntimeSandboxes(ctx); got != total+1 {
		t.Fatalf("the driver runs %d sandboxes after one restore, want %d", got, total+1)
	}

	// Concurrent starts of one id: one sandbox, every caller gets it.
	id2 := "sbx_" + ulid.Make().String()
	var wg sync.WaitGroup
	got := make([]string, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sb, err := c.Create(ctx, nodeapi.CreateRequest{SandboxID: id2, AccountID: acct, Template: "debian-12", Size: "small"})
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = sb.ID()
		}()
	}
	wg.Wait()
	n, rid = sandboxes(id2)
	if n != 1 {
		t.Fatalf("8 concurrent creates of one id left %d sandboxes, want 1", n)
	}
	for _, g := range got {
		if g != rid {
			t.Fatalf("a concurrent create answered %q, the node runs %q", g, rid)
		}
	}
	for _, id := range []string{rid, rb.ID()} {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := c.Destroy(dctx, id); err != nil {
			t.Error(err)
		}
		cancel()
	}
}
