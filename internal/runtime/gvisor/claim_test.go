package gvisor_test

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/gvisor"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// TestClaimBehindSandboxKilled: the sandbox process is killed while a claim
// taken behind (ConfigureBehind) is being applied. The operations waiting
// for the claim end with ErrStopped instead of waiting for ever, the
// sandbox counts as stopped, and its destroy cleans up.
func TestClaimBehindSandboxKilled(t *testing.T) {
	env := testenv.NewDriver(t)
	ctx := testCtx(t, time.Minute)
	for i := range 3 {
		sb := newSandboxRes(t, env, testenv.Small)
		bc := sb.(runtime.BackgroundConfigurer)
		if err := bc.ConfigureBehind(runtime.Claim{Env: map[string]string{"K": "v"}, Resources: testenv.Small}); err != nil {
			t.Fatal(err)
		}
		// The kill lands at different points of the claim's application:
		// at once, or after the cgroup writes.
		if i > 0 {
			time.Sleep(time.Duration(i) * time.Millisecond)
		}
		if err := syscall.Kill(gvisor.PIDForTest(sb), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "true"})
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, runtime.ErrStopped) {
				t.Errorf("exec on a sandbox killed during its claim: %v, want ErrStopped", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("exec on a sandbox killed during its claim still waits after 30 s")
		}
		select {
		case <-sb.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("Done not closed 10 s after the kill")
		}
		if err := sb.Err(); !errors.Is(err, runtime.ErrStopped) {
			t.Errorf("Err: %v, want ErrStopped", err)
		}
		if err := sb.Destroy(ctx); err != nil {
			t.Errorf("destroy: %v", err)
		}
	}
}

// TestClaimBehindNotApplied: a claim taken behind that the host then
// refuses (a CPU quota over the kernel's bound: its cgroup write fails)
// stops the sandbox. The first command fails saying so instead of running
// without the claim, and the sandbox is stopped for good.
func TestClaimBehindNotApplied(t *testing.T) {
	env := testenv.NewDriver(t)
	ctx := testCtx(t, time.Minute)
	sb := newSandboxRes(t, env, testenv.Small)
	r := testenv.Small
	r.CPU = 1e9
	if err := sb.(runtime.BackgroundConfigurer).ConfigureBehind(runtime.Claim{Env: map[string]string{"K": "v"}, Resources: r}); err != nil {
		t.Fatalf("the claim was refused at once (%v); the host's refusal should come behind it", err)
	}
	_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "true"})
	if !errors.Is(err, runtime.ErrStopped) || !strings.Contains(err.Error(), "its claim could not be applied") {
		t.Fatalf("the first command after a claim the host refused: %v, want ErrStopped saying the claim could not be applied", err)
	}
	select {
	case <-sb.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after the claim failed")
	}
	if err := sb.Err(); !errors.Is(err, runtime.ErrStopped) {
		t.Errorf("Err: %v, want ErrStopped", err)
	}
	if _, err := sb.Stat(ctx, "/"); !errors.Is(err, runtime.ErrStopped) {
		t.Errorf("a later call: %v, want ErrStopped", err)
	}
}
