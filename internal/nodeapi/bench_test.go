package nodeapi_test

import (
	"context"
	"io"
	"net/http/httptest"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
)

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[n/2]
}

// pairs times op on the gVisor sandbox directly and through the node API
// (client → loopback HTTP → handler → the same sandbox), alternating within
// each iteration so that both see the same machine load, with gap of idle
// time (untimed) before each, and reports the medians and what the node API
// adds.
func pairs(b *testing.B, gap time.Duration, op func(ctx context.Context, sb runtime.Sandbox) error) {
	s := serve(b)
	remote := s.create(b, runtime.Claim{})
	direct, ok := s.node.env.Driver.Get(remote.ID())
	if !ok {
		b.Fatal("sandbox not on the node")
	}
	ctx := context.Background()
	for range 5 { // warm both paths (connections, agent streams)
		if op(ctx, direct) != nil || op(ctx, remote) != nil {
			b.Fatal("warm-up failed")
		}
	}
	var d, r, diff []time.Duration
	timed := func(sb runtime.Sandbox) time.Duration {
		if gap > 0 {
			b.StopTimer()
			time.Sleep(gap)
			b.StartTimer()
		}
		t0 := time.Now()
		if err := op(ctx, sb); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	i := 0
	for b.Loop() {
		// Which goes first alternates: neither gains from what the other
		// left behind (a warm agent, a refilled CPU quota).
		var td, tr time.Duration
		if i%2 == 0 {
			td, tr = timed(direct), timed(remote)
		} else {
			tr, td = timed(remote), timed(direct)
		}
		i++
		d, r, diff = append(d, td), append(r, tr), append(diff, tr-td)
	}
	md, mr := median(d), median(r)
	b.ReportMetric(float64(md)/1e6, "direct-p50-ms")
	b.ReportMetric(float64(mr)/1e6, "nodeapi-p50-ms")
	b.ReportMetric(float64(mr-md)/1e6, "added-p50-ms")
	b.ReportMetric(float64(median(diff))/1e6, "paired-added-p50-ms")
	if md > 0 {
		b.ReportMetric(float64(mr)/float64(md), "ratio")
	}
}

// BenchmarkNodeAPIExec: exec `true` (a stream call: dial, upgrade,
// parameters, result) round trip, 100 ms apart as in bench's ExecSpaced
// (back to back, an exec waits for what the previous one left running).
func BenchmarkNodeAPIExec(b *testing.B) {
	pairs(b, 100*time.Millisecond, func(ctx context.Context, sb runtime.Sandbox) error {
		res, err := sb.Exec(ctx, runtime.ExecRequest{Command: "true", Stdout: io.Discard, Stderr: io.Discard})
		if err == nil && res.ExitCode != 0 {
			b.Fatalf("exit %d", res.ExitCode)
		}
		return err
	})
}

// BenchmarkNodeAPIStat: a unary call to the agent (stat of a file) on a
// kept-alive connection.
func BenchmarkNodeAPIStat(b *testing.B) {
	pairs(b, 0, func(ctx context.Context, sb runtime.Sandbox) error {
		_, err := sb.Stat(ctx, "/etc/hostname")
		return err
	})
}

// instantSandbox answers Exec and Stat at once: what the transport alone
// costs, without the agent's noise.
type instantSandbox struct{ runtime.Sandbox }

func (instantSandbox) ID() string { return "instant" }
func (instantSandbox) Info() runtime.Info {
	return runtime.Info{ID: "instant", State: runtime.StateRunning}
}
func (instantSandbox) Exec(context.Context, runtime.ExecRequest) (runtime.ExecResult, error) {
	return runtime.ExecResult{}, nil
}
func (instantSandbox) Stat(context.Context, string) (runtime.FileInfo, error) {
	return runtime.FileInfo{Name: "x"}, nil
}

type instantNode struct{ failingNode }

func (*instantNode) Sandbox(context.Context, string) (runtime.Sandbox, error) {
	return instantSandbox{}, nil
}

// BenchmarkNodeAPITransport: the node API's own cost per call over
// loopback, against a sandbox that answers at once.
func BenchmarkNodeAPITransport(b *testing.B) {
	srv := httptest.NewServer(nodeapi.NewHandler(&instantNode{}, nodeapi.HandlerOptions{Token: testToken}))
	defer srv.Close()
	c, err := nodeapi.Dial(srv.URL, testToken, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	sb, err := c.Sandbox(ctx, "instant")
	if err != nil {
		b.Fatal(err)
	}
	for name, op := range map[string]func() error{
		"exec": func() error { _, err := sb.Exec(ctx, runtime.ExecRequest{Command: "true"}); return err },
		"stat": func() error { _, err := sb.Stat(ctx, "/x"); return err },
		// With a signal channel exec needs input: an upgraded connection.
		"exec-upgraded": func() error {
			_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "true", Signals: make(chan syscall.Signal)})
			return err
		},
	} {
		b.Run(name, func(b *testing.B) {
			var ds []time.Duration
			for b.Loop() {
				t0 := time.Now()
				if err := op(); err != nil {
					b.Fatal(err)
				}
				ds = append(ds, time.Since(t0))
			}
			b.ReportMetric(float64(median(ds))/1e3, "p50-µs")
		})
	}
}
