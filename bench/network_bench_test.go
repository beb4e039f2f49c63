package bench

import (
	"context"
	"log/slog"
	"os"
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
			env := newNetDriver(b)
			p := pool.New(env.Driver, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
			b.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if err := p.Close(ctx); err != nil {
					b.Errorf("close pool: %v", err)
				}
			})
			key := pool.Key{Template: templateName, Size: "small", Networked: mode != runtime.NetworkOff}
			sp := spec(b, testenv.Small)
			p.SetTarget(key, sp, 2)
			claim := runtime.Claim{Hostname: "bench", Resources: testenv.Small, Network: mode}
			ctx := timeout(b, 10*time.Minute)
			once := func() (claimed, first time.Duration) {
				if err := p.WaitFull(ctx); err != nil {
					b.Fatalf("pool never filled: %v", err)
				}
				t0 := time.Now()
				sb, warm, err := p.Claim(ctx, key, sp, claim)
				if err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				execTrue(ctx, b, sb)
				t2 := time.Now()
				if !warm {
					b.Fatal("claim after WaitFull was a cold start")
				}
				destroy(b, sb)
				return t1.Sub(t0), t2.Sub(t1)
			}
			once()
			var claims, execs, total durations
			for b.Loop() {
				c, e := once()
				claims.add(c)
				execs.add(e)
				total.add(c + e)
			}
			total.report(b, "p50-ms")
			claims.report(b, "claim-ms")
			execs.report(b, "exec-ms")
		})
	}
}
