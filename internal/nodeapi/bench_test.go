package nodeapi_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
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
// loopback, against a sandbox that answers at once: on a call channel and
// as HTTP requests (to a node that refuses channels, as one from before
// them), alternating in each iteration, back to back and after 5 ms of
// untimed idle (both ends asleep, as between a create and its first exec).
func BenchmarkNodeAPITransport(b *testing.B) {
	sandbox := func(refuse bool) runtime.Sandbox {
		h := nodeapi.NewHandler(&instantNode{}, nodeapi.HandlerOptions{Token: testToken})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if refuse && strings.HasSuffix(r.URL.Path, "/channel") {
				http.NotFound(w, r)
				return
			}
			h.ServeHTTP(w, r)
		}))
		b.Cleanup(srv.Close)
		c, err := nodeapi.Dial(srv.URL, testToken, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(c.Close)
		sb, err := c.Sandbox(context.Background(), "instant")
		if err != nil {
			b.Fatal(err)
		}
		return sb
	}
	sbs := [2]runtime.Sandbox{sandbox(false), sandbox(true)}
	ctx := context.Background()
	ops := map[string]func(sb runtime.Sandbox) error{
		"exec": func(sb runtime.Sandbox) error {
			_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "true", Buffered: true})
			return err
		},
		"stat": func(sb runtime.Sandbox) error { _, err := sb.Stat(ctx, "/x"); return err },
		// With a signal channel exec needs input: an upgraded connection
		// of its own, either way.
		"exec-upgraded": func(sb runtime.Sandbox) error {
			_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "true", Signals: make(chan syscall.Signal)})
			return err
		},
	}
	for _, gap := range []time.Duration{0, 5 * time.Millisecond} {
		for name, op := range ops {
			b.Run(fmt.Sprintf("%s/gap=%v", name, gap), func(b *testing.B) {
				var ds [2][]time.Duration
				n := 0
				for b.Loop() {
					for k := range 2 {
						i := (n + k) % 2
						if gap > 0 {
							b.StopTimer()
							time.Sleep(gap)
							b.StartTimer()
						}
						t0 := time.Now()
						if err := op(sbs[i]); err != nil {
							b.Fatal(err)
						}
						ds[i] = append(ds[i], time.Since(t0))
					}
					n++
				}
				b.ReportMetric(float64(median(ds[0]))/1e3, "channel-p50-µs")
				b.ReportMetric(float64(median(ds[1]))/1e3, "http-p50-µs")
				b.ReportMetric(float64(median(ds[0]))/float64(median(ds[1])), "ratio-p50")
			})
		}
	}
}
