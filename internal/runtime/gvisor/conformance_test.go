package gvisor_test

import (
	"sync"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/runtimetest"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// TestConformance runs the runtime driver conformance suite against gVisor:
// every capability but networking (its policy needs a DNS upstream and is
// tested in network_test.go), so the suite also checks that a driver without
// a network configuration refuses networked sandboxes.
func TestConformance(t *testing.T) {
	testenv.RequireRoot(t)
	var mu sync.Mutex
	envs := map[runtime.Driver]*testenv.Env{}
	runtimetest.Run(t, runtimetest.Harness{
		NewDriver: func(t *testing.T) runtime.Driver {
			env := testenv.NewDriver(t)
			mu.Lock()
			envs[env.Driver] = env
			mu.Unlock()
			return env.Driver
		},
		Reopen: func(t *testing.T, d runtime.Driver) runtime.Driver {
			mu.Lock()
			env := envs[d]
			mu.Unlock()
			d2 := env.Reopen(t)
			mu.Lock()
			envs[d2] = env
			mu.Unlock()
			return d2
		},
		Spec: runtime.Spec{Template: "debian-12", Rootfs: testenv.Rootfs(t, "debian-12"), Resources: testenv.Small},
		Caps: runtimetest.Capabilities{
			RealCommands: true, Checkpoint: true, CheckpointMemory: true, Processes: true, Terminal: true,
			FileOps: true, Archiver: true, UserFiles: true, Disk: true, Usage: true, Reconcile: true,
		},
	})
}
