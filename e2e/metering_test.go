package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
	"github.com/orkestr-eu/orkestr/internal/testenv"
	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

// persistedUsage reads a sandbox's metered lifetime straight from a
// stopped server's SQLite store.
func persistedUsage(t *testing.T, dataDir, account, id string) store.Usage {
	t.Helper()
	st, err := sqlstore.Open(context.Background(), "sqlite://"+filepath.Join(dataDir, "orkestr.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	u, err := st.SandboxUsage(context.Background(), account, id)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func lifetime(t *testing.T, s *apiServer, key, id string) map[string]any {
	t.Helper()
	r := s.do("GET", "/v1/sandboxes/"+id+"/metrics", key, nil)
	if r.status != 200 {
		t.Fatalf("metrics: %d %s", r.status, r.body)
	}
	return r.json(t)["lifetime"].(map[string]any)
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, b)
	}
	return string(b)
}

// metricValue finds one sample of the Prometheus text exposition.
func metricValue(t *testing.T, text, series string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no %s in /metrics:\n%s", series, text)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// TestMeteringSurvivesKill9: metering is flushed every few seconds, so a
// kill -9 of the server loses at most 5 s of it; after the restart the
// adopted sandbox's lifetime goes on from what was persisted, a clean stop
// loses nothing, and the operator metrics are on their own address.
func TestMeteringSurvivesKill9(t *testing.T) {
	metricsAddr := testenv.FreePort(t)
	s := startAPI(t, serverOpts{args: []string{"--metrics-listen", metricsAddr}})
	if s.key == "" {
		t.Fatalf("no bootstrap key; log:\n%s", s.logText())
	}
	account := s.do("GET", "/v1/usage", s.key, nil).json(t)["account_id"].(string)
	id := s.create(s.key, nil)
	time.Sleep(7 * time.Second)
	before := lifetime(t, s, s.key, id)
	s.stop(syscall.SIGKILL)
	counted := int64(before["running_seconds"].(float64))
	persisted := persistedUsage(t, s.dataDir, account, id)
	t.Logf("kill -9: the server had counted %d s, the store holds %d s", counted, persisted.RunningSeconds)
	if counted < 5 || persisted.RunningSeconds < counted-5 || persisted.RunningSeconds > counted+1 {
		t.Fatalf("kill -9 lost more than 5 s of metering: counted %v, persisted %+v", before, persisted)
	}
	if persisted.MemMBSeconds != 512*persisted.RunningSeconds {
		t.Fatalf("persisted %+v: mem_mb_seconds is not 512 MB × running_seconds", persisted)
	}

	// Restart on the same state: the sandbox is adopted and its lifetime
	// continues from the store.
	s2 := startAPI(t, serverOpts{dataDir: s.dataDir, stateDir: s.stateDir, poolSize: 1, args: []string{"--metrics-listen", metricsAddr}})
	after := lifetime(t, s2, s.key, id)
	if int64(after["running_seconds"].(float64)) < persisted.RunningSeconds {
		t.Fatalf("lifetime after the restart %v is below what was persisted %+v", after, persisted)
	}
	time.Sleep(2500 * time.Millisecond)
	if later := lifetime(t, s2, s.key, id); later["running_seconds"].(float64) < after["running_seconds"].(float64)+1 {
		t.Fatalf("the adopted sandbox does not accrue: %v then %v", after, later)
	}

	// Operator metrics: on their own listener only.
	id2 := s2.create(s.key, nil)
	if r := s2.do("POST", "/v1/sandboxes/"+id2+"/exec", s.key, map[string]any{"command": "true"}); r.status != 200 {
		t.Fatalf("exec: %d %s", r.status, r.body)
	}
	if r := s2.do("GET", "/metrics", "", nil); r.status != 404 {
		t.Fatalf("the API address serves /metrics: %d", r.status)
	}
	deadline := time.Now().Add(2 * time.Minute)
	var text string
	for {
		text = scrape(t, metricsAddr)
		if regexp.MustCompile(`orkestr_pool_ready\{network="off",size="small",template="debian-12"\} [1-9]`).MatchString(text) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the debian-12 pool never showed a ready sandbox:\n%s", text)
		}
		time.Sleep(500 * time.Millisecond)
	}
	for series, want := range map[string]float64{
		`orkestr_sandboxes{status="running"}`:                  2,
		`orkestr_sandbox_create_seconds_count{outcome="ok"}`:   1,
		`orkestr_exec_seconds_count{mode="sync",outcome="ok"}`: 1,
		`orkestr_sampler_sandboxes`:                            2,
		`orkestr_store_up`:                                     1,
	} {
		if got := metricValue(t, text, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	// The pool's base target is 1; a claim that found it empty (the
	// create right after the restart may) doubles it with demand.
	if got := metricValue(t, text, `orkestr_pool_target{network="off",size="small",template="debian-12"}`); got != 1 && got != 2 {
		t.Errorf("pool target %v, want 1 (or 2 after a claim found the pool empty)", got)
	}
	if metricValue(t, text, "orkestr_sampler_lag_seconds_count") < 1 || metricValue(t, text, `orkestr_metering_flushes_total{result="ok"}`) < 1 {
		t.Errorf("no sampling rounds or flushes counted:\n%s", text)
	}

	// A clean stop flushes the last seconds: nothing is lost.
	if r := s2.do("DELETE", "/v1/sandboxes/"+id2, s.key, nil); r.status != 200 {
		t.Fatalf("delete: %d", r.status)
	}
	last := lifetime(t, s2, s.key, id)
	s2.stop(syscall.SIGTERM)
	if p := persistedUsage(t, s.dataDir, account, id); p.RunningSeconds < int64(last["running_seconds"].(float64)) {
		t.Fatalf("a clean stop lost metering: counted %v, persisted %+v", last, p)
	}

	s3 := startAPI(t, serverOpts{dataDir: s.dataDir, stateDir: s.stateDir})
	if r := s3.do("DELETE", "/v1/sandboxes/"+id, s.key, nil); r.status != 200 {
		t.Fatalf("delete after the restarts: %d %s", r.status, r.body)
	}

	// The Go SDK and the CLI read the same figures: the sandboxes add up
	// to the total, which is what /v1/limits reports.
	c := sdkClient(t, s3, s.key)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	u, err := c.Usage(ctx, orkestr.UsageParams{Granularity: "hour"})
	if err != nil {
		t.Fatal(err)
	}
	lim, err := c.Limits(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, sb := range u.Sandboxes {
		sum += sb.MemMBSeconds
	}
	if len(u.Sandboxes) != 2 || sum != u.Total.MemMBSeconds || u.Total.GBHours != lim.UsageGBHoursUsed || u.Total.RunningSeconds < counted {
		t.Fatalf("usage %+v, limits %+v", u, lim)
	}
	cmd := exec.Command(filepath.Join(binDir, "orkestr"), "usage", "--hourly", "--csv")
	cmd.Env = append(os.Environ(), "ORKESTR_API_KEY="+s.key, "ORKESTR_BASE_URL="+s3.url)
	out, err := cmd.Output()
	if err != nil || !strings.HasPrefix(string(out), "period_start,period_end,sandbox_id,mem_mb_seconds,cpu_ms,running_seconds\n") || !strings.Contains(string(out), ","+id+",") {
		t.Fatalf("orkestr usage --csv: %v\n%s", err, out)
	}
}
