package scheduler_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/scheduler"
	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// fleet is n simulated nodes in 5 regions (r0..r4), each with 3 of 5
// templates built, 64 cores, 256 GiB, 2 TiB disk and 200 slots, randomly
// 0-95 % allocated, one in 10 with a warm sandbox of its first template,
// one in 50 dead and one in 50 short of disk. Deterministic.
func fleet(n int) []store.Node {
	r := rand.New(rand.NewPCG(42, 42))
	templates := []string{"debian-12", "python-3.11", "node-22", "go-1.26", "rust-1.90"}
	out := make([]store.Node, n)
	for i := range out {
		used := r.Float64() * 0.95
		first := r.IntN(len(templates))
		node := store.Node{
			ID: fmt.Sprintf("node-%04d", i), Region: fmt.Sprintf("r%d", i%5), Address: fmt.Sprintf("https://10.0.%d.%d:7443", i/250, i%250),
			Version: "v1.0.0", APIVersion: 1,
			Capacity:       store.NodeCapacity{CPUs: 64, MemoryBytes: 256 << 30, DiskBytes: 2 << 40, Slots: 200},
			Allocated:      store.NodeCapacity{CPUs: 64 * used, MemoryBytes: int64(float64(256<<30) * used), DiskBytes: int64(float64(2<<40) * used), Slots: int(200 * used)},
			Templates:      []string{templates[first], templates[(first+1)%5], templates[(first+2)%5]},
			NetworkEnabled: true,
			DiskLow:        i%50 == 7,
			HeartbeatAge:   time.Second,
		}
		node.Running = node.Allocated.Slots
		if i%10 == 3 {
			node.Warm = map[string]int{templates[first]: 1}
		}
		if i%50 == 13 {
			node.HeartbeatAge = time.Minute
		}
		out[i] = node
	}
	return out
}

func candidates(nodes []store.Node) []scheduler.Candidate {
	out := make([]scheduler.Candidate, len(nodes))
	for i, n := range nodes {
		out[i] = scheduler.FromNode(n)
	}
	return out
}

// processCPU is this process's user+system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loopCPU runs loop and reports this process's CPU time per iteration
// ("cpu-ns/op"): on a machine shared with other work it moves much less
// than the wall time of ns/op. PostgreSQL's own CPU is not in it.
func loopCPU(b *testing.B, op func()) {
	start := processCPU(b)
	n := 0
	for b.Loop() {
		op()
		n++
	}
	b.ReportMetric(float64(processCPU(b)-start)/float64(n), "cpu-ns/op")
}

var benchReq = scheduler.Request{Region: "r2", Template: "python-3.11", Networked: true,
	Size: scheduler.Resources{CPUs: 2, MemoryBytes: 2 << 30, DiskBytes: 10 << 30}}

// BenchmarkPlace1000Nodes is one placement decision among 1,000 nodes
// (200 in the asked region): the default best of two, least loaded (K =
// every candidate) for comparison, and a template nobody has warm.
func BenchmarkPlace1000Nodes(b *testing.B) {
	nodes := candidates(fleet(1000))
	cold := benchReq
	cold.Template = "rust-1.90"
	for _, bc := range []struct {
		name string
		p    scheduler.Policy
		req  scheduler.Request
	}{
		{"best-of-2", scheduler.Policy{Rand: rand.New(rand.NewPCG(1, 1)).IntN}, benchReq},
		{"least-loaded", scheduler.Policy{Sample: 1 << 20}, benchReq},
		{"best-of-2-none-warm", scheduler.Policy{Rand: rand.New(rand.NewPCG(1, 1)).IntN}, cold},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			loopCPU(b, func() {
				if _, err := bc.p.Place(nodes, bc.req); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// BenchmarkListNodesPlace1000 is what a create pays for placement against
// a store with 1,000 registered nodes: ListNodes, the conversion and
// Place. PostgreSQL is a fresh database through ORKESTR_TEST_DATABASE_URL
// on this host (loopback TCP).
func BenchmarkListNodesPlace1000(b *testing.B) {
	for _, kind := range []string{"sqlite", "postgres"} {
		b.Run(kind, func(b *testing.B) {
			url := "sqlite://" + filepath.Join(b.TempDir(), "orkestr.db")
			if kind == "postgres" {
				url = testenv.FreshPostgres(b)
			}
			ctx := context.Background()
			s, err := sqlstore.Open(ctx, url)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			for _, n := range fleet(1000) {
				if err := s.Heartbeat(ctx, n); err != nil {
					b.Fatal(err)
				}
			}
			p := scheduler.Policy{Rand: rand.New(rand.NewPCG(1, 1)).IntN}
			b.ReportAllocs()
			b.ResetTimer()
			loopCPU(b, func() {
				nodes, err := s.ListNodes(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := p.Place(candidates(nodes), benchReq); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}
