package gvisor_test

import (
	"sync"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/netpolicy/nettest"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/gvisor"
	"github.com/orkestr-eu/orkestr/internal/runtime/runtimetest"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// TestConformance runs the runtime driver conformance suite against gVisor:
// every capability, networking in a second run over a driver with a network
// configuration (the first checks that a driver without one refuses
// networked sandboxes). The policies themselves are tested in
// network_test.go.
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

func TestConformanceNetworked(t *testing.T) {
	testenv.RequireRoot(t)
	in := nettest.Start(t)
	runtimetest.Run(t, runtimetest.Harness{
		NewDriver: func(t *testing.T) runtime.Driver {
			return testenv.NewDriverWith(t, func(c *gvisor.Config) {
				c.Network = testenv.NewNetworkConfig(in.DNS, "allowed.test")
			}).Driver
		},
		Spec: runtime.Spec{Template: "debian-12", Rootfs: testenv.Rootfs(t, "debian-12"), Resources: testenv.Small},
		Caps: runtimetest.Capabilities{RealCommands: true, Checkpoint: true, Network: true},
		Only: []string{"Network"},
	})
}
