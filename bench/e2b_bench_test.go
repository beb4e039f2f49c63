package bench

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/e2b"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// BenchmarkE2BJSvsOrkestrTS measures Sandbox.create() → commands.run('echo
// hi') through the published e2b JS SDK against orkestr's E2B-compatible
// API, beside Sandbox.create() → exec('echo hi') through orkestr's own
// TypeScript SDK, interleaved in one node process (e2e/e2b/bench.mjs) on one
// orkestrd with a warm pool of python-3.11. One iteration is the whole
// experiment (E2B_BENCH_N pairs, default 20); it reports both medians and
// their ratio. Needs `make e2b-sdk-deps` and sdk/js built (npm run build).
func BenchmarkE2BJSvsOrkestrTS(b *testing.B) {
	root := testenv.RepoRoot()
	dir := filepath.Join(root, "e2e", "e2b")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "e2b")); err != nil {
		b.Skip("the e2b JS SDK is not installed: make e2b-sdk-deps")
	}
	if _, err := os.Stat(filepath.Join(root, "sdk", "js", "dist", "esm", "index.js")); err != nil {
		b.Skip("sdk/js is not built: cd sdk/js && npm ci && npm run build")
	}
	addr := testenv.FreePort(b)
	s := startServer(b, 4, "python-3.11", "--e2b-listen", addr)
	alias, err := e2b.Alias(s.key)
	if err != nil {
		b.Fatal(err)
	}
	n := os.Getenv("E2B_BENCH_N")
	if n == "" {
		n = "20"
	}
	var last struct {
		E2B     struct{ Median float64 } `json:"e2b"`
		Orkestr struct{ Median float64 } `json:"orkestr"`
		Ratio   float64                  `json:"ratio"`
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cmd := exec.Command("node", "bench.mjs")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "E2B_API_URL=http://"+addr, "E2B_SANDBOX_URL=http://"+addr, "E2B_API_KEY="+alias,
			"ORKESTR_BASE_URL="+s.url, "ORKESTR_API_KEY="+s.key, "BENCH_TEMPLATE=python-3.11", "BENCH_N="+n)
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("bench.mjs: %v\n%s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		b.Logf("%s", lines[len(lines)-1])
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
			b.Fatalf("bench.mjs printed %q", out)
		}
	}
	b.ReportMetric(last.E2B.Median, "e2b-ms")
	b.ReportMetric(last.Orkestr.Median, "orkestr-ms")
	b.ReportMetric(last.Ratio, "ratio")
}
