package gvisor_test

import (
	"errors"
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
			if !errors.Is(err, runtime.ErrStopped) && !errors.Is(err, runtime.ErrAgent) {
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
