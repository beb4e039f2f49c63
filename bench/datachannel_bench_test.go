package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"

	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// BenchmarkDataChannel: upload and download of one file of -data.file-mib
// through the runtime driver alone (the agent channel and the sandbox, no
// HTTP, no client), against dd of the same size in the sandbox in the same
// iteration. The difference to BenchmarkDataFiles is what the API and the
// clients add.
func BenchmarkDataChannel(b *testing.B) {
	env := newDriver(b)
	res := runtime.Resources{CPU: 2, MemoryBytes: 4 << 30, PIDs: 2048, DiskBytes: 16 << 30}
	sb := create(b, env, res)
	ctx := timeout(b, 30*time.Minute)
	n := int64(*dataFileMiB) << 20
	data := make([]byte, n)
	_, _ = rand.Read(data)
	var dd, up, down rates
	for i := 0; b.Loop(); i++ {
		dd.add(driverDD(ctx, b, sb, fmt.Sprintf("if=/dev/zero of=/workspace/dd.bin bs=1M count=%d conv=fsync", *dataFileMiB), n))
		driverSh(ctx, b, sb, "rm -f /workspace/dd.bin /workspace/up.bin")
		t0 := time.Now()
		got, err := sb.WriteFile(ctx, "/workspace/up.bin", 0o644, bytes.NewReader(data))
		if err != nil || got != n {
			b.Fatalf("upload: %d bytes, %v", got, err)
		}
		up.add(mbps(n, time.Since(t0)))
		cw := &countingWriter{}
		t0 = time.Now()
		if _, err := sb.ReadFile(ctx, "/workspace/up.bin", cw); err != nil || cw.n != n {
			b.Fatalf("download: %d bytes, %v", cw.n, err)
		}
		down.add(mbps(n, time.Since(t0)))
		b.Logf("dd %.0f, up %.0f, down %.0f MB/s (%d frames of %d bytes on average)",
			dd.samples[i], up.samples[i], down.samples[i], cw.writes, cw.n/max(cw.writes, 1))
	}
	dd.report(b, "dd-MB/s")
	up.report(b, "up-MB/s")
	down.report(b, "down-MB/s")
}

// driverSh runs command in sb through the driver and returns its stdout;
// it fails the benchmark unless the command exits 0.
func driverSh(ctx context.Context, b *testing.B, sb runtime.Sandbox, command string) string {
	b.Helper()
	var out bytes.Buffer
	r, err := sb.Exec(ctx, runtime.ExecRequest{Command: command, Stdout: &out, Stderr: &out, Timeout: 10 * time.Minute})
	if err != nil || r.ExitCode != 0 {
		b.Fatalf("%s: exit %d, %v: %s", command, r.ExitCode, err, out.String())
	}
	return out.String()
}

var ddSecsRE = regexp.MustCompile(`, ([0-9.]+) s,`)

// driverDD runs dd in sb and returns the MB/s it reports for n bytes.
func driverDD(ctx context.Context, b *testing.B, sb runtime.Sandbox, args string, n int64) float64 {
	b.Helper()
	out := driverSh(ctx, b, sb, "LC_ALL=C dd "+args+" 2>&1")
	m := ddSecsRE.FindStringSubmatch(out)
	if m == nil {
		b.Fatalf("dd printed no time: %q", strings.TrimSpace(out))
	}
	secs, _ := strconv.ParseFloat(m[1], 64)
	return float64(n) / 1e6 / secs
}
