package pool_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/pool"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/cgroupv1"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// countingDriver is the real gVisor driver, counting the Creates in flight.
type countingDriver struct {
	runtime.Driver
	inFlight, peak, total atomic.Int64
}

func (d *countingDriver) Create(ctx context.Context, s runtime.Spec) (runtime.Sandbox, error) {
	n := d.inFlight.Add(1)
	defer d.inFlight.Add(-1)
	d.total.Add(1)
	for {
		p := d.peak.Load()
		if n <= p || d.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return d.Driver.Create(ctx, s)
}

// TestRefillsRunConcurrently: an empty pool is filled by several starts at
// once, never more than Demand.Starts; a claim that empties the pool grows
// its target before the next claim misses, and the refills behind claims
// run in parallel too.
func TestRefillsRunConcurrently(t *testing.T) {
	env := testenv.NewDriver(t)
	d := &countingDriver{Driver: env.Driver}
	p := pool.New(d, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	t.Cleanup(func() {
		if err := p.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	p.SetDemand(pool.Demand{Max: 6, Budget: 6, Starts: 3})
	key := pool.Key{Template: "debian-12", Size: "small"}
	spec := runtime.Spec{Template: "debian-12", Rootfs: testenv.Rootfs(t, "debian-12"), Resources: testenv.Small}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	p.SetTarget(key, spec, 4)
	if err := p.WaitFull(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("filling 4: peak %d starts at once", d.peak.Load())
	if pk := d.peak.Load(); pk < 2 || pk > 3 {
		t.Fatalf("filling an empty pool of 4 with Starts 3 ran %d starts at once, want 2 or 3", pk)
	}

	// Four claims in a row empty it: the last one grows the target (4 →
	// 6, the Max) without any claim having missed.
	var sbs []runtime.Sandbox
	var mu sync.Mutex
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, sb := range sbs {
			_ = sb.Destroy(context.Background())
		}
	})
	cpuFile := func(id, name string) string {
		b, err := os.ReadFile(filepath.Join(cgroupv1.Root, "cpu", env.CgroupParent, id, name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	shares := func(id string) string { return cpuFile(id, "cpu.shares") + " idle " + cpuFile(id, "cpu.idle") }
	infos, err := env.Driver.List(ctx)
	if err != nil || len(infos) == 0 {
		t.Fatalf("list: %v, %d sandboxes", err, len(infos))
	}
	// A pooled sandbox yields the CPU to claimed ones until it is
	// claimed: SCHED_IDLE (which reads as the idle weight, 3).
	if got := shares(infos[0].ID); got != "3 idle 1" {
		t.Errorf("pooled sandbox cpu.shares %s, want 3 idle 1", got)
	}
	d.peak.Store(d.inFlight.Load())
	for i := range 4 {
		sb, warm, err := p.Claim(ctx, key, spec, runtime.Claim{Resources: testenv.Small})
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		sbs = append(sbs, sb)
		mu.Unlock()
		if !warm {
			t.Fatalf("claim %d of 4 from a full pool of 4 was cold", i)
		}
		// The claim is applied behind it; its first operation waits
		// for it.
		if _, err := sb.Stat(ctx, "/"); err != nil {
			t.Fatal(err)
		}
		if got := shares(sb.ID()); got != "1024 idle 0" {
			t.Errorf("claimed sandbox cpu.shares %s after its first operation, want 1024 idle 0", got)
		}
	}
	var target int
	for _, dp := range p.Depths() {
		if dp.Key == key {
			target = dp.Target
		}
	}
	if target != 6 {
		t.Fatalf("target after a claim emptied the pool: %d, want 6", target)
	}
	if err := p.WaitFull(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("refilling behind 4 claims to 6: peak %d starts at once, %d starts in all", d.peak.Load(), d.total.Load())
	if pk := d.peak.Load(); pk < 2 || pk > 3 {
		t.Fatalf("refills behind claims ran %d starts at once, want 2 or 3", pk)
	}
	if r := p.Ready(key); r != 6 {
		t.Fatalf("ready %d after the refill, want 6", r)
	}
}

// TestHostStarts: the default bound on starts at once is at least one and
// at most one per CPU.
func TestHostStarts(t *testing.T) {
	n := pool.HostStarts()
	if n < 1 || n > goruntime.NumCPU() {
		t.Fatalf("HostStarts() = %d", n)
	}
}
