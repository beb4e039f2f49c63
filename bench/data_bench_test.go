package bench

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"

	"github.com/orkestr-eu/orkestr/internal/tarx"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// The data-plane benchmarks move bytes through the API of a real orkestrd
// and compare with what the sandbox does on its own in the same run:
//
//   - BenchmarkDataFiles: a 256 MiB file of random bytes uploaded and
//     downloaded through the Go SDK and the CLI, against `dd` of 256 MiB
//     into /workspace inside the sandbox.
//   - BenchmarkDataExecStream: `head -c 200M /dev/zero` streamed through
//     POST …/exec/stream (NDJSON and the binary framing), against the same
//     command to /dev/null inside the sandbox.
//   - BenchmarkDataArchive: a tree of 10,000 files (100 MB) uploaded as a
//     tar and extracted in the sandbox, against tar -x of the same archive
//     inside the sandbox.
//
// Every figure is reported in MB/s (10^6 bytes per second) as the median of
// the iterations, with the CPU the client (this process or the CLI) and
// the server spent per GB moved, and the peak resident memory of orkestrd
// and of the agent (PID 1 in the sandbox) after the run.
var (
	dataFileMiB   = flag.Int("data.file-mib", 256, "size of the file of BenchmarkDataFiles, MiB")
	dataStreamMB  = flag.Int("data.stream-mb", 200, "output of BenchmarkDataExecStream, MB (10^6 bytes)")
	dataPerfAgent = flag.String("data.pprof", "", "write orkestrd's CPU profile during the first upload/download/stream to this prefix")
)

var cliOnce sync.Once
var cliPath, cliErr = "", error(nil)

// cliBinary builds cmd/orkestr once per test binary.
func cliBinary(b *testing.B) string {
	b.Helper()
	if serverBuild == "base" {
		baseOrkestrd(b)
		return filepath.Join(binDir, "orkestr-base")
	}
	cliOnce.Do(func() {
		cliPath = filepath.Join(binDir, "orkestr")
		cmd := exec.Command("go", "build", "-trimpath", "-o", cliPath, "./cmd/orkestr")
		cmd.Dir = testenv.RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			cliErr = fmt.Errorf("%v: %s", err, out)
		}
	})
	if cliErr != nil {
		b.Fatalf("build orkestr: %v", cliErr)
	}
	return cliPath
}

// mbps is bytes per duration in MB/s.
func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

// rates collects MB/s samples.
type rates struct{ samples }

func (r *rates) report(b *testing.B, unit string) {
	if len(r.samples) > 0 {
		b.ReportMetric(r.median(), unit)
	}
}

// inSandbox runs command in sb and fails the benchmark unless it exits 0.
func inSandbox(ctx context.Context, b *testing.B, sb *orkestr.Sandbox, command string) *orkestr.ExecResult {
	b.Helper()
	res, err := sb.Exec(ctx, command, orkestr.ExecOptions{TimeoutSeconds: 600})
	if err != nil {
		b.Fatalf("%s: %v", command, err)
	}
	if res.ExitCode != 0 {
		b.Fatalf("%s: exit %d: %s%s", command, res.ExitCode, res.Stdout, res.Stderr)
	}
	return res
}

var ddTimeRE = regexp.MustCompile(`, ([0-9.]+) s,`)

// ddRate runs dd inside the sandbox and returns the MB/s it reports.
func ddRate(ctx context.Context, b *testing.B, sb *orkestr.Sandbox, args string, n int64) float64 {
	b.Helper()
	res := inSandbox(ctx, b, sb, "LC_ALL=C dd "+args+" 2>&1")
	m := ddTimeRE.FindStringSubmatch(res.Stdout)
	if m == nil {
		b.Fatalf("dd printed no time: %q", res.Stdout)
	}
	secs, _ := strconv.ParseFloat(m[1], 64)
	return float64(n) / 1e6 / secs
}

// agentPeakRSS is the agent's (PID 1's) peak resident memory in MiB, as
// the sandbox's kernel reports it.
func agentPeakRSS(ctx context.Context, b *testing.B, sb *orkestr.Sandbox) float64 {
	res := inSandbox(ctx, b, sb, "cat /proc/1/status")
	for _, key := range []string{"VmHWM:", "VmRSS:"} {
		for _, l := range strings.Split(res.Stdout, "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == key {
				kb, _ := strconv.ParseFloat(f[1], 64)
				return kb / 1024
			}
		}
	}
	b.Logf("no VmHWM or VmRSS in the agent's /proc/1/status: %q", res.Stdout)
	return 0
}

// serverPeakRSS is orkestrd's peak resident memory in MiB.
func serverPeakRSS(b *testing.B, s *apiServer) float64 {
	bs, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.pid()))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(bs), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			kb, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// serverProfile writes orkestrd's CPU profile for d into path, through the
// pprof endpoint of its --metrics-listen (not enabled here), so instead it
// uses perf when -data.pprof is set.
func serverProfile(b *testing.B, s *apiServer, name string, d time.Duration) func() {
	if *dataPerfAgent == "" {
		return func() {}
	}
	return perfRecord(b, *dataPerfAgent+"-"+name+".perf", d, "-p", strconv.Itoa(s.pid()))
}

// sandboxesCPU is the CPU time all of s's sandboxes have used (gVisor's
// sentry, gofer and stubs: the cgroup parent's cpuacct.usage).
func sandboxesCPU(b *testing.B, s *apiServer) time.Duration {
	u, err := s.cgroup.ReadUsage()
	if err != nil {
		b.Fatal(err)
	}
	return time.Duration(u.CPUNanos)
}

// cliEnv is the CLI's environment for server s.
func cliEnv(s *apiServer) []string {
	return append(os.Environ(), "ORKESTR_API_KEY="+s.key, "ORKESTR_BASE_URL="+s.url)
}

// runCLI runs the CLI and returns its wall time and its CPU time.
func runCLI(b *testing.B, s *apiServer, stdout io.Writer, args ...string) (time.Duration, time.Duration) {
	b.Helper()
	cmd := exec.Command(cliBinary(b), args...)
	cmd.Env = cliEnv(s)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("orkestr %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	wall := time.Since(t0)
	return wall, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// BenchmarkDataFiles: upload and download of one file of -data.file-mib
// through the Go SDK and the CLI, and dd in the sandbox as the baseline.
func BenchmarkDataFiles(b *testing.B) { forBuilds(b, benchDataFiles) }

func benchDataFiles(b *testing.B) {
	s := startServer(b, 0, templateName)
	ctx := timeout(b, 30*time.Minute)
	sb := s.create(ctx, "medium")
	b.Cleanup(func() { s.terminate(sb) })
	n := int64(*dataFileMiB) << 20
	data := make([]byte, n)
	_, _ = rand.Read(data)
	local := filepath.Join(b.TempDir(), "data.bin")
	if err := os.WriteFile(local, data, 0o600); err != nil {
		b.Fatal(err)
	}
	back := filepath.Join(b.TempDir(), "back.bin")
	files := sb.Files()
	var dd, up, down, cliUp, cliDown rates
	var cliUpCPU, cliDownCPU, srvCPU, sbxCPU samples
	for i := 0; b.Loop(); i++ {
		dd.add(ddRate(ctx, b, sb, fmt.Sprintf("if=/dev/zero of=/workspace/dd.bin bs=1M count=%d conv=fsync", *dataFileMiB), n))
		inSandbox(ctx, b, sb, "rm -f /workspace/dd.bin /workspace/up.bin")

		c0, s0 := serverCPUTime(b, s), sandboxesCPU(b, s)
		stop := func() {}
		if i == 0 {
			stop = serverProfile(b, s, "upload", 2*time.Second)
		}
		t0 := time.Now()
		got, err := files.WriteFrom(ctx, "/workspace/up.bin", bytes.NewReader(data))
		if err != nil || got != n {
			b.Fatalf("upload: %d bytes, %v", got, err)
		}
		up.add(mbps(n, time.Since(t0)))
		stop()
		if i == 0 {
			stop = serverProfile(b, s, "download", 2*time.Second)
		}
		t0 = time.Now()
		got, err = files.ReadTo(ctx, "/workspace/up.bin", io.Discard)
		if err != nil || got != n {
			b.Fatalf("download: %d bytes, %v", got, err)
		}
		down.add(mbps(n, time.Since(t0)))
		stop()
		srvCPU.add((serverCPUTime(b, s) - c0).Seconds() / (2 * float64(n) / 1e9))
		sbxCPU.add((sandboxesCPU(b, s) - s0).Seconds() / (2 * float64(n) / 1e9))

		wall, cpu := runCLI(b, s, io.Discard, "files", "put", local, sb.ID+":/workspace/cli.bin")
		cliUp.add(mbps(n, wall))
		cliUpCPU.add(cpu.Seconds() / (float64(n) / 1e9))
		wall, cpu = runCLI(b, s, io.Discard, "files", "get", sb.ID+":/workspace/cli.bin", back)
		cliDown.add(mbps(n, wall))
		cliDownCPU.add(cpu.Seconds() / (float64(n) / 1e9))
		if fi, err := os.Stat(back); err != nil || fi.Size() != n {
			b.Fatalf("CLI download: %v", err)
		}
		_ = os.Remove(back)
		b.Logf("dd %.0f, up %.0f, down %.0f, cli up %.0f, cli down %.0f MB/s; cli cpu %.2f/%.2f s/GB",
			dd.samples[i], up.samples[i], down.samples[i], cliUp.samples[i], cliDown.samples[i], cliUpCPU[i], cliDownCPU[i])
		inSandbox(ctx, b, sb, "rm -f /workspace/up.bin /workspace/cli.bin")
	}
	dd.report(b, "dd-MB/s")
	up.report(b, "up-MB/s")
	down.report(b, "down-MB/s")
	cliUp.report(b, "cli-up-MB/s")
	cliDown.report(b, "cli-down-MB/s")
	b.ReportMetric(cliUpCPU.median(), "cli-up-cpu-s/GB")
	b.ReportMetric(cliDownCPU.median(), "cli-down-cpu-s/GB")
	b.ReportMetric(srvCPU.median(), "server-cpu-s/GB")
	b.ReportMetric(sbxCPU.median(), "sandbox-cpu-s/GB")
	b.ReportMetric(serverPeakRSS(b, s), "server-peak-MiB")
	b.ReportMetric(agentPeakRSS(ctx, b, sb), "agent-peak-MiB")
}

// BenchmarkDataExecStream: `head -c N /dev/zero` through the exec stream,
// read by the Go SDK (NDJSON and binary framing) and by the CLI, against
// the same command to /dev/null in the sandbox.
func BenchmarkDataExecStream(b *testing.B) {
	s := startServer(b, 0, templateName)
	ctx := timeout(b, 30*time.Minute)
	sb := s.create(ctx, "medium")
	b.Cleanup(func() { s.terminate(sb) })
	n := int64(*dataStreamMB) * 1e6
	cmd := fmt.Sprintf("head -c %d /dev/zero", n)
	var inside, sdk, cli rates
	var sdkCPU, cliCPU, srvCPU samples
	for i := 0; b.Loop(); i++ {
		res := inSandbox(ctx, b, sb, cmd+" >/dev/null")
		inside.add(mbps(n, time.Duration(max(res.DurationMS, 1))*time.Millisecond))

		cw := &countingWriter{}
		c0, s0 := selfCPU(), serverCPUTime(b, s)
		stop := func() {}
		if i == 0 {
			stop = serverProfile(b, s, "stream", 2*time.Second)
		}
		t0 := time.Now()
		r, err := sb.ExecStreamTo(ctx, cmd, orkestr.ExecOptions{TimeoutSeconds: 600}, cw, io.Discard)
		if err != nil || r.ExitCode != 0 || cw.n != n {
			b.Fatalf("stream: %d bytes, %v", cw.n, err)
		}
		sdk.add(mbps(n, time.Since(t0)))
		b.Logf("sdk: %d chunks of %d bytes on average", cw.writes, cw.n/max(cw.writes, 1))
		stop()
		sdkCPU.add((selfCPU() - c0).Seconds() / (float64(n) / 1e9))
		srvCPU.add((serverCPUTime(b, s) - s0).Seconds() / (float64(n) / 1e9))

		cw = &countingWriter{}
		wall, cpu := runCLI(b, s, cw, "sandbox", "exec", sb.ID, "--", cmd)
		if cw.n != n {
			b.Fatalf("CLI stream: %d bytes", cw.n)
		}
		cli.add(mbps(n, wall))
		cliCPU.add(cpu.Seconds() / (float64(n) / 1e9))
		b.Logf("inside %.0f, sdk %.0f, cli %.0f MB/s; sdk cpu %.2f, cli cpu %.2f, server cpu %.2f s/GB",
			inside.samples[i], sdk.samples[i], cli.samples[i], sdkCPU[i], cliCPU[i], srvCPU[i])
	}
	inside.report(b, "inside-MB/s")
	sdk.report(b, "sdk-MB/s")
	cli.report(b, "cli-MB/s")
	b.ReportMetric(sdkCPU.median(), "sdk-cpu-s/GB")
	b.ReportMetric(cliCPU.median(), "cli-cpu-s/GB")
	b.ReportMetric(srvCPU.median(), "server-cpu-s/GB")
	b.ReportMetric(serverPeakRSS(b, s), "server-peak-MiB")
	b.ReportMetric(agentPeakRSS(ctx, b, sb), "agent-peak-MiB")
}

type countingWriter struct{ n, writes int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	c.writes++
	return len(p), nil
}

// BenchmarkDataArchive: a tree of 10,000 files of 10,000 bytes (100 MB in
// 100 directories) uploaded as one tar through the Go SDK and extracted by
// the agent, against `tar -xf` of the same archive inside the sandbox.
func BenchmarkDataArchive(b *testing.B) {
	s := startServer(b, 0, templateName)
	ctx := timeout(b, 30*time.Minute)
	sb := s.create(ctx, "medium")
	b.Cleanup(func() { s.terminate(sb) })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	content := make([]byte, 10_000)
	_, _ = rand.Read(content)
	for i := range 10_000 {
		if i%100 == 0 {
			_ = tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("d%03d/", i/100), Typeflag: tar.TypeDir, Mode: 0o755})
		}
		_ = tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("d%03d/f%05d", i/100, i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(content))})
		_, _ = tw.Write(content)
	}
	_ = tw.Close()
	archive := buf.Bytes()
	files := sb.Files()
	if _, err := files.WriteFrom(ctx, "/tmp/tree.tar", bytes.NewReader(archive)); err != nil {
		b.Fatal(err)
	}
	// The same tree on the host's disk for the CLI's put -r.
	tree := b.TempDir()
	if _, err := tarx.Extract(mustOpenRoot(b, tree), bytes.NewReader(archive), 0); err != nil {
		b.Fatal(err)
	}
	var inside, api, cli durations
	for b.Loop() {
		res := inSandbox(ctx, b, sb, "rm -rf /workspace/t && mkdir /workspace/t && tar -C /workspace/t -xf /tmp/tree.tar")
		inside.add(time.Duration(res.DurationMS) * time.Millisecond)
		inSandbox(ctx, b, sb, "rm -rf /workspace/t")
		t0 := time.Now()
		x, err := files.WriteArchive(ctx, "/workspace/t", bytes.NewReader(archive))
		if err != nil || x.Entries != 10_100 {
			b.Fatalf("archive: %+v %v", x, err)
		}
		api.add(time.Since(t0))
		inSandbox(ctx, b, sb, "rm -rf /workspace/t")
		wall, _ := runCLI(b, s, io.Discard, "files", "put", "-r", tree, sb.ID+":/workspace/t")
		cli.add(wall)
		b.Logf("tar -x inside %v, API %v, CLI put -r %v", inside[len(inside)-1], api[len(api)-1], wall)
		inSandbox(ctx, b, sb, "rm -rf /workspace/t")
	}
	inside.report(b, "inside-tar-ms")
	api.report(b, "api-ms")
	cli.report(b, "cli-ms")
	b.ReportMetric(agentPeakRSS(ctx, b, sb), "agent-peak-MiB")
}

// BenchmarkDataFilesSDKs: upload and download of one file of -data.file-mib
// through the TypeScript SDK (bench/sdkfiles.mjs, the built sdk/js) and
// the Python SDK (bench/sdkfiles.py, sdk/python/.venv), against dd in the
// sandbox in the same iteration. Needs `cd sdk/js && npm ci && npm run
// build` and the Python SDK's venv (make test-python makes both).
func BenchmarkDataFilesSDKs(b *testing.B) { forBuilds(b, benchDataFilesSDKs) }

func benchDataFilesSDKs(b *testing.B) {
	root := testenv.RepoRoot()
	if _, err := os.Stat(filepath.Join(root, "sdk", "js", "dist", "esm", "index.js")); err != nil {
		b.Skip("sdk/js is not built: cd sdk/js && npm ci && npm run build")
	}
	python := filepath.Join(root, "sdk", "python", ".venv", "bin", "python")
	if _, err := os.Stat(python); err != nil {
		b.Skip("the Python SDK's venv is missing: make test-python")
	}
	s := startServer(b, 0, templateName)
	ctx := timeout(b, 30*time.Minute)
	sb := s.create(ctx, "medium")
	b.Cleanup(func() { s.terminate(sb) })
	n := int64(*dataFileMiB) << 20
	data := make([]byte, n)
	_, _ = rand.Read(data)
	local := filepath.Join(b.TempDir(), "data.bin")
	if err := os.WriteFile(local, data, 0o600); err != nil {
		b.Fatal(err)
	}
	data = nil
	run := func(name string, args ...string) (up, down float64) {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = filepath.Join(root, "bench")
		cmd.Env = append(cliEnv(s), "SANDBOX_ID="+sb.ID, "LOCAL="+local)
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("%s: %v\n%s", name, err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		var r struct {
			Up    float64 `json:"up_s"`
			Down  float64 `json:"down_s"`
			Bytes int64   `json:"bytes"`
		}
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil || r.Bytes != n {
			b.Fatalf("%s printed %q", name, out)
		}
		return float64(n) / 1e6 / r.Up, float64(n) / 1e6 / r.Down
	}
	var dd, tsUp, tsDown, pyUp, pyDown rates
	for i := 0; b.Loop(); i++ {
		dd.add(ddRate(ctx, b, sb, fmt.Sprintf("if=/dev/zero of=/workspace/dd.bin bs=1M count=%d conv=fsync", *dataFileMiB), n))
		inSandbox(ctx, b, sb, "rm -f /workspace/dd.bin /workspace/ts.bin /workspace/py.bin")
		u, d := run("sdkfiles.mjs", "node", "sdkfiles.mjs")
		tsUp.add(u)
		tsDown.add(d)
		u, d = run("sdkfiles.py", python, "sdkfiles.py")
		pyUp.add(u)
		pyDown.add(d)
		b.Logf("dd %.0f, TypeScript up %.0f down %.0f, Python up %.0f down %.0f MB/s",
			dd.samples[i], tsUp.samples[i], tsDown.samples[i], pyUp.samples[i], pyDown.samples[i])
	}
	dd.report(b, "dd-MB/s")
	tsUp.report(b, "ts-up-MB/s")
	tsDown.report(b, "ts-down-MB/s")
	pyUp.report(b, "py-up-MB/s")
	pyDown.report(b, "py-down-MB/s")
	b.ReportMetric(serverPeakRSS(b, s), "server-peak-MiB")
	b.ReportMetric(agentPeakRSS(ctx, b, sb), "agent-peak-MiB")
}

func mustOpenRoot(b *testing.B, dir string) *os.Root {
	r, err := os.OpenRoot(dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	return r
}
