package fake_test

import (
	"context"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/fake"
	"github.com/orkestr-eu/orkestr/internal/runtime/runtimetest"
)

// capabilities is what the fake declares to the conformance suite.
var capabilities = runtimetest.Capabilities{
	Checkpoint: true, Processes: true, FileOps: true, Archiver: true, UserFiles: true, Terminal: true, Disk: true, Usage: true, Reconcile: true,
}

var small = runtime.Resources{CPU: 0.5, MemoryBytes: 512 << 20, PIDs: 512}

// newDriver is a driver on a host of its own, checked when the test ends:
// nothing may be left running on the host.
func newDriver(t *testing.T, h *fake.Host) *fake.Driver {
	d := h.NewDriver()
	t.Cleanup(func() {
		if err := d.Close(context.Background(), true); err != nil {
			t.Errorf("close: %v", err)
		}
		if left := h.Running(); len(left) > 0 {
			t.Errorf("sandboxes left running on the host: %v", left)
		}
	})
	return d
}

func TestConformance(t *testing.T) {
	start := time.Now()
	runtimetest.Run(t, runtimetest.Harness{
		NewDriver: func(t *testing.T) runtime.Driver { return newDriver(t, fake.NewHost(fake.Options{})) },
		Reopen: func(t *testing.T, d runtime.Driver) runtime.Driver {
			return d.(*fake.Driver).Host().NewDriver()
		},
		Spec: runtime.Spec{Template: "fake-template", Rootfs: t.TempDir(), Resources: small},
		Caps: capabilities,
	})
	t.Logf("conformance suite against the fake: %v", time.Since(start))
}

func TestConformanceNetworked(t *testing.T) {
	runtimetest.Run(t, runtimetest.Harness{
		NewDriver: func(t *testing.T) runtime.Driver { return newDriver(t, fake.NewHost(fake.Options{Network: true})) },
		Spec:      runtime.Spec{Template: "fake-template", Rootfs: t.TempDir(), Resources: small},
		Caps:      runtimetest.Capabilities{Checkpoint: true, Network: true},
		Only:      []string{"Network"},
	})
}
