package nodeapi_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// driverNode is a minimal nodeapi.Node over a real gVisor driver, for these
// tests only (package node is the real one): no pools, no metering, one
// size.
type driverNode struct {
	t       testing.TB
	env     *testenv.Env
	snapDir string
}

func newDriverNode(t testing.TB) *driverNode {
	env := testenv.NewDriver(t)
	dir := t.TempDir()
	return &driverNode{t: t, env: env, snapDir: dir}
}

func (n *driverNode) Info(ctx context.Context) (nodeapi.Info, error) {
	list, err := n.env.Driver.List(ctx)
	if err != nil {
		return nodeapi.Info{}, err
	}
	return nodeapi.Info{ID: "test-node", Region: "test", APIVersion: nodeapi.APIVersion, Running: len(list), Templates: []string{"debian-12"},
		Capacity: nodeapi.Capacity{CPUs: 2, MemoryBytes: 4 << 30, Slots: 8}}, nil
}

func (n *driverNode) Create(ctx context.Context, r nodeapi.CreateRequest) (runtime.Sandbox, error) {
	if r.Template != "debian-12" {
		return nil, fmt.Errorf("%w: %q (built: debian-12)", nodeapi.ErrTemplateNotBuilt, r.Template)
	}
	if r.Size != "" && r.Size != "small" {
		return nil, fmt.Errorf("%w %q", nodeapi.ErrUnknownSize, r.Size)
	}
	sb, err := n.env.Driver.Create(ctx, runtime.Spec{Template: r.Template, Rootfs: testenv.Rootfs(n.t, r.Template), Resources: testenv.Small,
		Labels: map[string]string{"sandbox": r.SandboxID}})
	if err != nil {
		return nil, err
	}
	claim := r.Claim
	if claim.Resources == (runtime.Resources{}) {
		claim.Resources = testenv.Small
	}
	if err := sb.Configure(ctx, claim); err != nil {
		_ = sb.Destroy(context.WithoutCancel(ctx))
		return nil, err
	}
	return sb, nil
}

func (n *driverNode) Sandbox(ctx context.Context, id string) (runtime.Sandbox, error) {
	sb, ok := n.env.Driver.Get(id)
	if !ok {
		return nil, fmt.Errorf("%w: %q on this node", runtime.ErrNotFound, id)
	}
	return sb, nil
}

func (n *driverNode) Checkpoint(ctx context.Context, id, snap string) (nodeapi.Snapshot, error) {
	sb, err := n.Sandbox(ctx, id)
	if err != nil {
		return nodeapi.Snapshot{}, err
	}
	if snap == "" {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		snap = hex.EncodeToString(b)
	}
	s, err := sb.Checkpoint(ctx, filepath.Join(n.snapDir, filepath.Base(snap)))
	if err != nil {
		return nodeapi.Snapshot{}, err
	}
	return nodeapi.Snapshot{ID: snap, Bytes: s.Bytes}, nil
}

func (n *driverNode) CheckpointLive(ctx context.Context, id, snap string) (nodeapi.Snapshot, error) {
	sb, err := n.Sandbox(ctx, id)
	if err != nil {
		return nodeapi.Snapshot{}, err
	}
	s, err := sb.(runtime.LiveCheckpointer).CheckpointLive(ctx, filepath.Join(n.snapDir, filepath.Base(snap)))
	if err != nil {
		return nodeapi.Snapshot{}, err
	}
	return nodeapi.Snapshot{ID: snap, Bytes: s.Bytes}, nil
}

func (n *driverNode) Restore(ctx context.Context, r nodeapi.RestoreRequest) (runtime.Sandbox, error) {
	dir := filepath.Join(n.snapDir, filepath.Base(r.Snapshot))
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("%w: %s", nodeapi.ErrSnapshotNotFound, r.Snapshot)
	}
	return n.env.Driver.Restore(ctx, dir, testenv.Rootfs(n.t, "debian-12"), map[string]string{"sandbox": r.SandboxID})
}

func (n *driverNode) RemoveSnapshot(ctx context.Context, id string) error {
	return os.RemoveAll(filepath.Join(n.snapDir, filepath.Base(id)))
}

func (n *driverNode) Destroy(ctx context.Context, id string) error {
	sb, ok := n.env.Driver.Get(id)
	if !ok {
		return nil
	}
	return sb.Destroy(ctx)
}

func (n *driverNode) Reconcile(ctx context.Context, keep nodeapi.Keep) (runtime.ReconcileReport, error) {
	return n.env.Driver.Reconcile(ctx, func(i runtime.Info) bool { _, ok := keep.Sandboxes[i.ID]; return ok })
}

func (n *driverNode) Metrics(ctx context.Context, id string, since time.Time) (nodeapi.Metrics, error) {
	sb, err := n.Sandbox(ctx, id)
	if err != nil {
		return nodeapi.Metrics{}, err
	}
	st, err := sb.Stats(ctx)
	if err != nil {
		return nodeapi.Metrics{}, err
	}
	s := nodeapi.Sample{T: st.ReadAt, MemBytes: st.MemoryBytes, MemLimit: st.MemoryLimitBytes}
	return nodeapi.Metrics{Samples: []nodeapi.Sample{s}, Latest: &s, IntervalSeconds: 1}, nil
}

// testToken is the node token of these tests.
const testToken = "s3cret-node-token-for-tests"

// served is a node behind its API on a loopback HTTP server, and a client
// of it.
type served struct {
	node   *driverNode
	srv    *httptest.Server
	client *nodeapi.Client
}

func serve(t testing.TB) *served {
	t.Helper()
	n := newDriverNode(t)
	srv := httptest.NewServer(nodeapi.NewHandler(n, nodeapi.HandlerOptions{Token: testToken,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}))
	t.Cleanup(srv.Close)
	c, err := nodeapi.Dial(srv.URL, testToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return &served{node: n, srv: srv, client: c}
}

// create starts a sandbox through the client; destroyed when the test ends.
func (s *served) create(t testing.TB, claim runtime.Claim) runtime.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sb, err := s.client.Create(ctx, nodeapi.CreateRequest{SandboxID: "sbx_test", Template: "debian-12", Size: "small", Claim: claim})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sb.Destroy(context.Background()); err != nil && !errors.Is(err, runtime.ErrNotFound) {
			t.Errorf("destroy: %v", err)
		}
	})
	return sb
}
