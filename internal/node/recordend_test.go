package node_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// TestEndRecordedAfterALateRecordOfRunning: a sandbox stops on its own
// before the control plane has recorded it running (its row is still
// starting and names no runtime, so the node's first record of the end
// changes nothing). Once the row says running, the node's next try ends
// it: the row does not stay running for a sandbox that is gone.
func TestEndRecordedAfterALateRecordOfRunning(t *testing.T) {
	testenv.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := sqlstore.OpenSQLite(ctx, filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const sid, account = "sbx_01TESTLATERECORD00000000", "acc_01TESTLATERECORD00000000"
	if err := st.CreateAccount(ctx, store.Account{ID: account, Name: "late-record", Plan: "free", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	row := store.Sandbox{ID: sid, AccountID: account, Status: store.StatusStarting, Template: "debian-12", Size: "small",
		TimeoutSeconds: 300, CreatedAt: time.Now(), UpdatedAt: time.Now()}
	if err := st.CreateSandbox(ctx, row, 0); err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	state, err := os.MkdirTemp("/run", "orkn-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	n, err := node.Open(node.Config{
		DataDir: data, StateDir: state, TemplateDir: testenv.TemplateDir(), Runsc: testenv.Runsc(t),
		AgentBinary: testenv.AgentBinary(t), Sizes: node.Resources(config.Default().Sizes),
		Log:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Recorder: st,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(context.Background(), true)
	if _, err := n.Reconcile(ctx, nodeapi.Keep{}); err != nil {
		t.Fatal(err)
	}
	rt, err := n.Create(ctx, nodeapi.CreateRequest{SandboxID: sid, AccountID: account, Template: "debian-12", Size: "small"})
	if err != nil {
		t.Fatal(err)
	}
	// Its init killed from inside: it stops on its own.
	_, _ = rt.Exec(ctx, runtime.ExecRequest{Command: "kill -9 1"})
	select {
	case <-rt.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the sandbox did not stop after its init was killed")
	}
	time.Sleep(300 * time.Millisecond) // the node's first record came and went
	row.Status, row.RuntimeID = store.StatusRunning, rt.ID()
	if _, err := st.UpdateSandbox(ctx, row, 0); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := st.GetSandbox(ctx, account, sid)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status == store.StatusError {
			if got.ErrorMessage != store.EndStopped {
				t.Errorf("ended with reason %q, want %q", got.ErrorMessage, store.EndStopped)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the row is %s 10 s after its sandbox stopped", got.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
