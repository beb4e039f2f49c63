package bench

import (
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/netpolicy/nettest"
	"github.com/orkestr-eu/orkestr/internal/pool"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/gvisor"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// newNetDriver is newDriver with networking, against the test internet's
// DNS (no traffic leaves the machine).
func newNetDriver(b *testing.B) *testenv.Env {
	b.Helper()
	in := nettest.Start(b)
	var parent string
	b.Cleanup(func() {
		if parent != "" {
			if err := removeCgroupEverywhere(parent); err != nil {
				b.Errorf("driver cgroups: %v", err)
			}
		}
	})
	env := testenv.NewDriverWith(b, func(c *gvisor.Config) {
		c.Network = testenv.NewNetworkConfig(in.DNS, "allowed.test")
	})
	parent = env.CgroupParent
	return env
}

// BenchmarkColdCreateNetwork is BenchmarkColdCreate (cpu=2) per network
// mode: "off" is the plain sandbox; "restricted" and "open" add the
// namespace, veth pair, set elements and resolver before runsc starts,
// the claim's mode, and their removal on Destroy.
func BenchmarkColdCreateNetwork(b *testing.B) {
	for _, mode := range []string{runtime.NetworkOff, runtime.NetworkRestricted, runtime.NetworkOpen} {
		b.Run("network="+mode, func(b *testing.B) {
			env := newNetDriver(b)
			sp := spec(b, sized(2))
			sp.Networked = mode != runtime.NetworkOff
			ctx := timeout(b, 10*time.Minute)
			one := func() (created, destroyed time.Duration) {
				t0 := time.Now()
				sb, err := env.Driver.Create(ctx, sp)
				if err != nil {
					b.Fatal(err)
				}
				if err := sb.Configure(ctx, runtime.Claim{Network: mode}); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := sb.Destroy(ctx); err != nil {
					b.Fatal(err)
				}
				return t1.Sub(t0), time.Since(t1)
			}
			one() // warm-up
			var created, destroyed, total durations
			for b.Loop() {
				c, d := one()
				created.add(c)
				destroyed.add(d)
				total.add(c + d)
			}
			total.report(b, "p50-ms")
			created.report(b, "create-ms")
			destroyed.report(b, "destroy-ms")
		})
	}
}

// BenchmarkWarmClaimNetwork is BenchmarkWarmClaimFirstExec per network
// mode: a networked pool holds sandboxes with their network made and
// denying everything; the claim sets the mode.
func BenchmarkWarmClaimNetwork(b *testing.B) {
	for _, mode := range []string{runtime.NetworkOff, runtime.NetworkRestricted, runtime.NetworkOpen} {
		b.Run("network="+mode, func(b *testing.B) {
			key := pool.Key{Template: templateName, Size: "small", Networked: mode != runtime.NetworkOff}
			claim := runtime.Claim{Hostname: "bench", Resources: testenv.Small, Network: mode}
			benchWarmClaim(b, newNetDriver(b), key, claim, nil)
		})
	}
}
