package bench

import (
	"io"
	"sync"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// firstByte is a writer that records when its first byte arrived.
type firstByte struct {
	once sync.Once
	at   chan time.Time
}

func newFirstByte() *firstByte { return &firstByte{at: make(chan time.Time, 1)} }

func (f *firstByte) Write(p []byte) (int, error) {
	if len(p) > 0 {
		f.once.Do(func() { f.at <- time.Now() })
	}
	return len(p), nil
}

// BenchmarkProcessFirstByte times starting a background process (`echo
// hi`) until the first byte of its output reaches the host through an
// attach (start, then attach with replay, as a client that starts a dev
// server and reads its log does). The baseline, in the same run on the
// same sandbox, is a streamed exec of `/bin/echo hi` until its first
// byte: the same program (a background `echo hi` execs /bin/echo, where an
// exec's shell would use its builtin).
func BenchmarkProcessFirstByte(b *testing.B) {
	env := newDriver(b)
	sb := create(b, env, sized(1))
	ps := sb.(runtime.Processes)
	ctx := timeout(b, 10*time.Minute)
	for range 3 {
		execTrue(ctx, b, sb)
	}
	var proc, exec durations
	for b.Loop() {
		// Background process: start → attach → first byte.
		t0 := time.Now()
		p, err := ps.StartProcess(ctx, runtime.ProcessRequest{Command: "echo hi"})
		if err != nil {
			b.Fatal(err)
		}
		fb := newFirstByte()
		if _, err := ps.AttachProcess(ctx, p.PID, true, runtime.ProcessOutput{Stdout: fb}); err != nil {
			b.Fatal(err)
		}
		proc.add((<-fb.at).Sub(t0))

		b.StopTimer()
		// Baseline: a streamed exec → first byte.
		fb = newFirstByte()
		t1 := time.Now()
		if _, err := sb.Exec(ctx, runtime.ExecRequest{Command: "/bin/echo hi", Stdout: fb, Stderr: io.Discard}); err != nil {
			b.Fatal(err)
		}
		exec.add((<-fb.at).Sub(t1))
		time.Sleep(20 * time.Millisecond) // let the next pre-started shell come up for both
		b.StartTimer()
	}
	proc.report(b, "p50-ms")
	proc.reportQuantile(b, 0.9, "p90-ms")
	exec.report(b, "exec-p50-ms")
}
