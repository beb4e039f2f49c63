package bench

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// BenchmarkDiskQuota measures what the disk quota costs: quota=0 is a
// sandbox without one (runsc's overlay upper layer unbounded), quota=2G the
// small size's default (the same layer with a size limit). "create" is
// Driver.Create to a ready agent plus its Destroy (untimed); "write" is dd
// of 256 MiB into /workspace with fsync, then rm (untimed), so each
// iteration writes into a layer of the same fill.
func BenchmarkDiskQuota(b *testing.B) {
	for _, q := range []struct {
		name  string
		bytes int64
	}{{"quota=0", 0}, {"quota=2G", 2 << 30}} {
		res := testenv.Small
		res.DiskBytes = q.bytes
		b.Run("create/"+q.name, func(b *testing.B) {
			env := newDriver(b)
			var ds durations
			for b.Loop() {
				start := time.Now()
				sb, err := env.Driver.Create(timeout(b, time.Minute), spec(b, res))
				if err != nil {
					b.Fatal(err)
				}
				ds.add(time.Since(start))
				b.StopTimer()
				destroy(b, sb)
				b.StartTimer()
			}
			ds.report(b, "p50-ms")
		})
		b.Run("write/"+q.name, func(b *testing.B) {
			env := newDriver(b)
			wres := sized(2)
			wres.DiskBytes = q.bytes
			sb := create(b, env, wres)
			ctx := timeout(b, 10*time.Minute)
			var ds durations
			var mibps samples
			for b.Loop() {
				start := time.Now()
				r, err := sb.Exec(ctx, runtime.ExecRequest{Command: "dd if=/dev/zero of=/workspace/f bs=1M count=256 conv=fsync 2>/dev/null", Stdout: io.Discard, Stderr: io.Discard})
				if err != nil || r.ExitCode != 0 {
					b.Fatalf("dd: %v %+v", err, r)
				}
				d := time.Since(start)
				ds.add(d)
				mibps.add(256 / d.Seconds())
				b.StopTimer()
				if _, err := sb.Exec(context.Background(), runtime.ExecRequest{Command: "rm /workspace/f"}); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			ds.report(b, "p50-ms")
			b.ReportMetric(mibps.median(), "MiB/s")
		})
	}
}
