// Command soak is `make soak`: a churn load against a real orkestrd with
// real gVisor sandboxes for a given duration — create, exec, exec stream,
// files, pause, resume, terminate and expiry across several accounts and
// network modes — while the server is killed with SIGKILL and restarted at
// random moments. At the end it checks that every sandbox row matches the
// runtime, that usage adds up to the sandboxes' metered lifetimes, and that
// the host is back at its baseline (processes, mounts, cgroups, network
// namespaces and links, nftables elements, open fds, disk, memory), and
// prints a report. It exits non-zero if a check fails.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
)

const config = `pool_size: 1
max_file_bytes: 8388608
templates:
  - name: debian-12
    description: Debian 12 (offline recipe)
    default: true
    sources: [{recipe: debian-12}]
plans:
  soak:
    allowed_sizes: [small]
    max_concurrent: 3
    snapshot_cap: 2
    rate_limit: {requests_per_second: 100000, burst: 100000}
`

// Tolerances of the end checks on a host shared with other work.
const (
	memTolerance  = 1 << 30 // MemAvailable may differ this much from the baseline
	fdTolerance   = 8       // the soak's own open fds
	usageSlackSec = 3.0     // per sandbox: flush and sampling granularity
	usageKillSec  = 5.0     // per sandbox and kill: the seconds a SIGKILL can lose
)

func main() {
	repo, _ := os.Getwd()
	dur := flag.Duration("duration", 60*time.Minute, "how long to run the load")
	workers := flag.Int("workers", 4, "concurrent clients")
	accounts := flag.Int("accounts", 3, "accounts (each with its own key and plan slots)")
	killMin := flag.Duration("kill-min", 45*time.Second, "shortest time between two kill -9 of the server")
	killMax := flag.Duration("kill-max", 150*time.Second, "longest time between two kill -9 of the server")
	bin := flag.String("bin", filepath.Join(repo, "bin"), "directory with orkestrd and orkestr-agent")
	runsc := flag.String("runsc", envOr("ORKESTR_RUNSC", filepath.Join(repo, "bin/runsc")), "runsc binary")
	templates := flag.String("templates", envOr("ORKESTR_TEMPLATE_DIR", "/var/lib/orkestr/templates"), "template directory")
	seed := flag.Uint64("seed", uint64(time.Now().UnixNano()), "random seed")
	flag.Parse()
	if os.Geteuid() != 0 {
		fatal("the soak starts real gVisor sandboxes and must run as root")
	}
	s := &soak{bin: *bin, runsc: *runsc, templates: *templates, rng: rand.New(rand.NewPCG(*seed, 16)),
		stats: map[string]*opStats{}, sandboxes: map[string]*tracked{}}
	s.data = must(os.MkdirTemp("", "orksoak-data-"))
	s.state = must(os.MkdirTemp("/run", "orksoak-"))
	s.inst = node.Instance(s.data)
	if err := os.WriteFile(filepath.Join(s.data, "config.yaml"), []byte(config), 0o600); err != nil {
		fatal("%v", err)
	}
	fmt.Printf("soak: %s, %d workers, %d accounts, kill -9 every %s–%s, seed %d\n  data %s\n  state %s\n",
		*dur, *workers, *accounts, *killMin, *killMax, *seed, s.data, s.state)

	s.base = s.snapshot()
	s.start()
	for i := 0; i < *accounts; i++ {
		name := fmt.Sprintf("soak%d", i)
		s.admin("account", "create", name, "--plan", "soak")
		out := strings.Fields(s.admin("key", "create", "--account", name, "--scopes", "sandboxes:write"))
		s.keys = append(s.keys, out[len(out)-1])
	}

	ctx, cancel := context.WithTimeout(context.Background(), *dur)
	var wg sync.WaitGroup
	for i := 0; i < *workers; i++ {
		wg.Add(1)
		go func(i int) { defer wg.Done(); s.worker(ctx, i) }(i)
	}
	wg.Add(1)
	go func() { defer wg.Done(); s.killer(ctx, *killMin, *killMax) }()
	wg.Wait()
	cancel()
	os.Exit(s.finish())
}

type opStats struct {
	n      int
	errors map[string]int
	lat    []time.Duration
}

type interval struct{ from, to time.Time }

// tracked is what the client saw of one sandbox.
type tracked struct {
	id, key  string
	running  []interval // closed intervals of observed running time
	runSince time.Time  // open interval, if running
	// unsure is when a pause, resume or terminate of it was cut by a kill:
	// from then on the client does not know its state (a pause cut by a
	// kill ends it, see docs/benchmarks.md), so usage is only bounded
	// from above.
	unsure time.Time
	gone   bool // terminated (or ended in error): no longer picked
}

type soak struct {
	bin, runsc, templates string
	data, state, inst     string
	url                   string
	keys                  []string

	mu        sync.Mutex
	rng       *rand.Rand
	stats     map[string]*opStats
	sandboxes map[string]*tracked
	down      []interval // the server's down time
	kills     int
	server    *exec.Cmd
	base      snapshot
	failures  []string
}

func (s *soak) rand(n int) int { s.mu.Lock(); defer s.mu.Unlock(); return s.rng.IntN(n) }

// ---- the server ----

func (s *soak) start() {
	port := freePort()
	s.url = "http://127.0.0.1:" + port
	logf := must(os.OpenFile(filepath.Join(s.data, "orkestrd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600))
	outf := must(os.OpenFile(filepath.Join(s.data, "orkestrd.out"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600))
	cmd := exec.Command(filepath.Join(s.bin, "orkestrd"), "serve", "--listen", "127.0.0.1:"+port, "--data-dir", s.data,
		"--state-dir", s.state, "--runsc", s.runsc, "--agent", filepath.Join(s.bin, "orkestr-agent"),
		"--template-dir", s.templates, "--config", filepath.Join(s.data, "config.yaml"), "--log-level", "info")
	cmd.Stdout, cmd.Stderr = outf, logf
	if err := cmd.Start(); err != nil {
		fatal("start orkestrd: %v", err)
	}
	logf.Close()
	outf.Close()
	s.mu.Lock()
	s.server = cmd
	s.mu.Unlock()
	for i := 0; i < 1200; i++ {
		if r, err := http.Get(s.url + "/v1/openapi.yaml"); err == nil {
			r.Body.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	fatal("orkestrd did not answer within a minute (log: %s)", filepath.Join(s.data, "orkestrd.log"))
}

func (s *soak) admin(args ...string) string {
	args = append(append([]string{"admin"}, args...), "--data-dir", s.data, "--config", filepath.Join(s.data, "config.yaml"))
	out, err := exec.Command(filepath.Join(s.bin, "orkestrd"), args...).CombinedOutput()
	if err != nil {
		fatal("orkestrd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// killer kills the server with SIGKILL at random moments and restarts it.
func (s *soak) killer(ctx context.Context, lo, hi time.Duration) {
	for {
		wait := lo + time.Duration(s.rand(int(hi-lo)+1))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		s.mu.Lock()
		srv := s.server
		s.mu.Unlock()
		from := time.Now()
		_ = srv.Process.Signal(syscall.SIGKILL)
		_ = srv.Wait()
		s.start()
		s.mu.Lock()
		s.down = append(s.down, interval{from, time.Now()})
		s.kills++
		s.mu.Unlock()
		fmt.Printf("  %s kill -9 and restart: down %s\n", time.Now().Format("15:04:05"), time.Since(from).Round(time.Millisecond))
	}
}

// ---- the load ----

var client = &http.Client{Timeout: 3 * time.Minute}

type response struct {
	status int
	body   []byte
}

func (r response) code() string {
	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	if json.Unmarshal(r.body, &e) == nil && e.Error.Code != "" {
		return e.Error.Code
	}
	return strconv.Itoa(r.status)
}

func (s *soak) call(op, key, method, path string, body any) (response, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	s.mu.Lock()
	url := s.url
	s.mu.Unlock()
	req, _ := http.NewRequest(method, url+path, rd)
	req.Header.Set("Authorization", "Bearer "+key)
	t0 := time.Now()
	res, err := client.Do(req)
	var r response
	if err == nil {
		r.status = res.StatusCode
		r.body, err = io.ReadAll(res.Body)
		res.Body.Close()
	}
	lat := time.Since(t0)
	s.mu.Lock()
	st := s.stats[op]
	if st == nil {
		st = &opStats{errors: map[string]int{}}
		s.stats[op] = st
	}
	st.n++
	switch {
	case err != nil:
		st.errors["transport (server killed)"]++
		defer time.Sleep(100 * time.Millisecond) // the server is down: do not spin
	case r.status >= 400:
		st.errors[fmt.Sprintf("%d %s", r.status, r.code())]++
	default:
		st.lat = append(st.lat, lat)
	}
	if err == nil && r.status >= 500 && r.code() != "no_capacity" {
		s.failures = append(s.failures, fmt.Sprintf("%s %s %s: %d %s", op, method, path, r.status, truncate(string(r.body), 200)))
	}
	s.mu.Unlock()
	return r, err
}

func (s *soak) pick(key string) *tracked {
	s.mu.Lock()
	defer s.mu.Unlock()
	var mine []*tracked
	for _, t := range s.sandboxes {
		if t.key == key && !t.gone {
			mine = append(mine, t)
		}
	}
	if len(mine) == 0 {
		return nil
	}
	sort.Slice(mine, func(i, j int) bool { return mine[i].id < mine[j].id })
	return mine[s.rng.IntN(len(mine))]
}

func (s *soak) mark(t *tracked, running bool, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case running && t.runSince.IsZero():
		t.runSince = at
	case !running && !t.runSince.IsZero():
		t.running = append(t.running, interval{t.runSince, at})
		t.runSince = time.Time{}
	}
}

// ended notes a sandbox the server says is over, so the load moves on to
// live ones.
func (s *soak) ended(t *tracked, r response, err error) {
	if err != nil || t == nil {
		return
	}
	var e struct {
		Error struct {
			Details struct{ Status string } `json:"details"`
		} `json:"error"`
		Status string `json:"status"`
	}
	_ = json.Unmarshal(r.body, &e)
	st := e.Error.Details.Status
	if r.status == 200 && (e.Status == "terminated" || e.Status == "error") {
		st = e.Status
	}
	if st == "terminated" || st == "error" {
		s.mu.Lock()
		t.gone = true
		s.mu.Unlock()
	}
}

func (s *soak) unsure(t *tracked, err error) {
	if err == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.unsure.IsZero() {
		t.unsure = time.Now()
	}
}

func (s *soak) worker(ctx context.Context, n int) {
	key := s.keys[n%len(s.keys)]
	modes := []string{"off", "restricted", "open"}
	for ctx.Err() == nil {
		t := s.pick(key)
		op := s.rand(100)
		switch {
		case op < 14 || t == nil:
			body := map[string]any{"template": "debian-12", "network": modes[s.rand(3)],
				"timeout_seconds": 20 + s.rand(160), "env": map[string]string{"SOAK": "1"}, "metadata": map[string]string{"worker": strconv.Itoa(n)}}
			r, err := s.call("create", key, "POST", "/v1/sandboxes", body)
			if err == nil && r.status == 201 {
				var sb struct{ ID string }
				_ = json.Unmarshal(r.body, &sb)
				s.mu.Lock()
				s.sandboxes[sb.ID] = &tracked{id: sb.ID, key: key, runSince: time.Now()}
				s.mu.Unlock()
			} else if err == nil && r.status == 402 {
				time.Sleep(200 * time.Millisecond)
			}
		case op < 40:
			r, err := s.call("exec", key, "POST", "/v1/sandboxes/"+t.id+"/exec",
				map[string]any{"command": "echo hi; head -c 20000 /dev/urandom | sha256sum; ls /workspace | wc -l", "timeout_seconds": 30})
			s.ended(t, r, err)
		case op < 50:
			_, _ = s.call("exec_stream", key, "POST", "/v1/sandboxes/"+t.id+"/exec/stream",
				map[string]any{"command": "for i in 1 2 3; do echo line $i; sleep 0.1; done", "timeout_seconds": 30})
		case op < 60:
			name := fmt.Sprintf("/workspace/f%d", s.rand(20))
			payload := bytes.Repeat([]byte{byte('a' + s.rand(26))}, 1+s.rand(256<<10))
			if r, err := s.call("file_write", key, "PUT", "/v1/sandboxes/"+t.id+"/files?path="+name, payload); err == nil && r.status == 200 {
				_, _ = s.call("file_read", key, "GET", "/v1/sandboxes/"+t.id+"/files?path="+name, nil)
			}
		case op < 66:
			r, err := s.call("file_list", key, "GET", "/v1/sandboxes/"+t.id+"/files/list?path=/workspace", nil)
			s.ended(t, r, err)
		case op < 70:
			_, _ = s.call("file_delete", key, "DELETE", "/v1/sandboxes/"+t.id+"/files?path=/workspace/f"+strconv.Itoa(s.rand(20)), nil)
		case op < 78:
			r, err := s.call("pause", key, "POST", "/v1/sandboxes/"+t.id+"/pause", nil)
			if err == nil && r.status == 200 {
				s.mark(t, false, time.Now())
			}
			s.unsure(t, err)
		case op < 88:
			r, err := s.call("resume", key, "POST", "/v1/sandboxes/"+t.id+"/resume", nil)
			if err == nil && r.status == 200 {
				s.mark(t, true, time.Now())
			}
			s.unsure(t, err)
		case op < 95:
			r, err := s.call("terminate", key, "DELETE", "/v1/sandboxes/"+t.id, nil)
			s.unsure(t, err)
			s.ended(t, r, err)
			if err == nil && r.status == 200 {
				// DELETE is idempotent: a sandbox that expired earlier ended
				// at its terminated_at, not now.
				end := time.Now()
				var sb struct {
					TerminatedAt *time.Time `json:"terminated_at"`
				}
				if json.Unmarshal(r.body, &sb) == nil && sb.TerminatedAt != nil && sb.TerminatedAt.Before(end) {
					end = *sb.TerminatedAt
				}
				s.mark(t, false, end)
			}
		default:
			r, err := s.call("get", key, "GET", "/v1/sandboxes/"+t.id, nil)
			s.ended(t, r, err)
			_, _ = s.call("list", key, "GET", "/v1/sandboxes?limit=20", nil)
		}
	}
}

// ---- the end ----

func (s *soak) finish() int {
	fmt.Println("load done; checking")
	time.Sleep(5 * time.Second) // let the last kill's restart settle and expiries land
	rows := s.rows()
	s.checkRuntime(rows)

	// Terminate what is left, through the API, then stop the server.
	for _, key := range s.keys {
		for _, id := range s.liveIDs(key) {
			if r, err := s.call("terminate", key, "DELETE", "/v1/sandboxes/"+id, nil); err != nil || r.status != 200 {
				s.fail("terminating %s at the end: %v %d", id, err, r.status)
			}
		}
	}
	time.Sleep(4 * time.Second) // the last metering flush
	rows = s.rows()
	s.checkUsage(rows)
	s.mu.Lock()
	srv := s.server
	s.mu.Unlock()
	_ = srv.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = srv.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		s.fail("orkestrd did not stop within 2 minutes of SIGTERM")
		_ = srv.Process.Kill()
		<-done
	}
	client.CloseIdleConnections()
	time.Sleep(2 * time.Second)
	end := s.snapshot()
	s.compare(end)
	s.report(rows, end)
	if len(s.failures) > 0 {
		fmt.Printf("\nFAILED: %d problem(s); data and log kept in %s\n", len(s.failures), s.data)
		return 1
	}
	_ = os.RemoveAll(s.state)
	_ = os.RemoveAll(s.data)
	fmt.Println("\nPASS")
	return 0
}

func (s *soak) fail(format string, args ...any) {
	s.mu.Lock()
	s.failures = append(s.failures, fmt.Sprintf(format, args...))
	s.mu.Unlock()
}

func (s *soak) rows() []store.Sandbox {
	st, err := sqlstore.OpenSQLite(context.Background(), filepath.Join(s.data, "orkestr.db"))
	if err != nil {
		fatal("open the store: %v", err)
	}
	defer st.Close()
	rows, err := st.SandboxesByStatus(context.Background(), store.StatusStarting, store.StatusRunning, store.StatusPaused, store.StatusTerminated, store.StatusError)
	if err != nil {
		fatal("read the sandboxes: %v", err)
	}
	return rows
}

func (s *soak) liveIDs(key string) []string {
	var out []string
	cursor := ""
	for {
		path := "/v1/sandboxes?limit=200"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		r, err := s.call("list", key, "GET", path, nil)
		if err != nil || r.status != 200 {
			s.fail("listing at the end: %v %d", err, r.status)
			return out
		}
		var page struct {
			Data       []struct{ ID, Status string }
			NextCursor *string `json:"next_cursor"`
		}
		_ = json.Unmarshal(r.body, &page)
		for _, sb := range page.Data {
			if sb.Status != "terminated" {
				out = append(out, sb.ID)
			}
		}
		if page.NextCursor == nil || *page.NextCursor == "" {
			return out
		}
		cursor = *page.NextCursor
	}
}

// checkRuntime: every running row has its runtime sandbox running, and
// every runtime sandbox belongs to a running row or the warm pool.
func (s *soak) checkRuntime(rows []store.Sandbox) {
	out, err := exec.Command(s.runsc, "--root", filepath.Join(s.state, "runsc"), "list", "-format=json").Output()
	if err != nil {
		s.fail("runsc list: %v", err)
		return
	}
	var cs []struct{ ID, Status string }
	_ = json.Unmarshal(out, &cs)
	runtime := map[string]string{}
	for _, c := range cs {
		runtime[c.ID] = c.Status
	}
	claimed := map[string]bool{}
	for _, r := range rows {
		switch r.Status {
		case store.StatusRunning:
			claimed[r.RuntimeID] = true
			if runtime[r.RuntimeID] != "running" {
				s.fail("sandbox %s is running in the store but its runtime %q is %q", r.ID, r.RuntimeID, runtime[r.RuntimeID])
			}
		case store.StatusStarting:
			s.fail("sandbox %s is still starting after the load ended", r.ID)
		case store.StatusPaused, store.StatusTerminated, store.StatusError:
			if r.RuntimeID != "" && runtime[r.RuntimeID] != "" {
				s.fail("sandbox %s is %s but runtime %s still exists (%s)", r.ID, r.Status, r.RuntimeID, runtime[r.RuntimeID])
			}
		}
	}
	// The warm pools hold the rest: one sandbox each, networked or not,
	// for every template built in the template directory.
	built, _ := filepath.Glob(filepath.Join(s.templates, "*", "template.json"))
	maxWarm := 2 * len(built)
	pooled := 0
	var strays []string
	for id, st := range runtime {
		if !claimed[id] {
			pooled++
			strays = append(strays, id+" "+st)
		}
	}
	if pooled > maxWarm {
		s.fail("%d runtime sandboxes belong to no running row (the warm pools hold at most %d): %v", pooled, maxWarm, strays)
	}
	fmt.Printf("  rows vs runtime: %d rows, %d runtime sandboxes (%d warm)\n", len(rows), len(runtime), pooled)
}

// checkUsage: each sandbox's metered running seconds are within its
// observed running time, less the server's down time, within tolerance.
func (s *soak) checkUsage(rows []store.Sandbox) {
	usage := map[string]float64{}
	for _, key := range s.keys {
		r, err := s.call("usage", key, "GET", "/v1/usage?granularity=hour&from="+time.Now().UTC().Add(-24*time.Hour).Truncate(time.Hour).Format(time.RFC3339)+"&to="+time.Now().UTC().Add(time.Hour).Truncate(time.Hour).Format(time.RFC3339), nil)
		if err != nil || r.status != 200 {
			s.fail("usage: %v %d %s", err, r.status, r.body)
			continue
		}
		var u struct {
			Sandboxes []struct {
				SandboxID      string  `json:"sandbox_id"`
				RunningSeconds float64 `json:"running_seconds"`
			}
		}
		_ = json.Unmarshal(r.body, &u)
		for _, sb := range u.Sandboxes {
			usage[sb.SandboxID] = sb.RunningSeconds
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var sumUsage, sumExpected float64
	bad := 0
	for _, row := range rows {
		t := s.sandboxes[row.ID]
		if t == nil {
			continue
		}
		// The server ended it (expiry, or an end the client missed while
		// the server was down): close the open interval at its end.
		ivs := append([]interval(nil), t.running...)
		if !t.runSince.IsZero() {
			end := time.Now()
			if row.TerminatedAt != nil {
				end = *row.TerminatedAt
			} else if row.PausedAt != nil {
				end = *row.PausedAt
			}
			ivs = append(ivs, interval{t.runSince, end})
		}
		expected, lost := 0.0, 0.0
		for _, iv := range ivs {
			expected += iv.to.Sub(iv.from).Seconds()
			for _, d := range s.down {
				lost += overlap(iv, d).Seconds() + usageKillSec*boolf(overlap(iv, d) > 0)
			}
			if !t.unsure.IsZero() && iv.to.After(t.unsure) {
				// Unknown from the cut request on: bounded from above only.
				lost += iv.to.Sub(maxTime(iv.from, t.unsure)).Seconds()
			}
		}
		got := usage[row.ID]
		sumUsage += got
		sumExpected += expected
		if got > expected+usageSlackSec || got < expected-lost-usageSlackSec*float64(1+len(ivs)) {
			bad++
			if bad <= 5 {
				var spans []string
				for _, iv := range ivs {
					spans = append(spans, fmt.Sprintf("%s–%s", iv.from.Format("15:04:05.0"), iv.to.Format("15:04:05.0")))
				}
				s.failures = append(s.failures, fmt.Sprintf("usage of %s: %.0f s metered, %.1f s observed running (%.1f s of it while the server was down; created %s, ended %v; running %s)",
					row.ID, got, expected, lost, row.CreatedAt.Format("15:04:05.0"), fmtTime(row.TerminatedAt), strings.Join(spans, ", ")))
			}
		}
	}
	fmt.Printf("  usage: %.0f running seconds metered, %.0f observed (%d sandboxes outside the tolerance)\n", sumUsage, sumExpected, bad)
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Local().Format("15:04:05.0")
}

func overlap(a, b interval) time.Duration {
	from, to := a.from, a.to
	if b.from.After(from) {
		from = b.from
	}
	if b.to.Before(to) {
		to = b.to
	}
	if to.Before(from) {
		return 0
	}
	return to.Sub(from)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func boolf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// ---- the host ----

type snapshot struct {
	procs, mounts, cgroups, netns, links, nftElements, fds int
	diskBytes                                              int64
	memAvailable                                           int64
}

func (s *soak) snapshot() snapshot {
	var sn snapshot
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && bytes.Contains(b, []byte(s.state)) {
			sn.procs++
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], s.state+"/") {
				sn.mounts++
			}
		}
	}
	cg, _ := filepath.Glob("/sys/fs/cgroup/*/orkestr/" + s.inst + "/*")
	for _, c := range cg {
		if fi, err := os.Stat(c); err == nil && fi.IsDir() {
			sn.cgroups++
		}
	}
	ns, _ := filepath.Glob("/run/netns/ork-" + s.inst + "-*")
	sn.netns = len(ns)
	if out, err := exec.Command("ip", "-o", "link", "show").Output(); err == nil {
		sn.links = strings.Count(string(out), "orkestr:"+s.inst+":")
	}
	if out, err := exec.Command("nft", "-j", "list", "table", "inet", "orkestr-"+s.inst).Output(); err == nil {
		var doc struct {
			Nftables []map[string]json.RawMessage `json:"nftables"`
		}
		_ = json.Unmarshal(out, &doc)
		for _, o := range doc.Nftables {
			if raw, ok := o["set"]; ok {
				var set struct{ Elem []json.RawMessage }
				_ = json.Unmarshal(raw, &set)
				sn.nftElements += len(set.Elem)
			}
		}
	}
	fds, _ := os.ReadDir("/proc/self/fd")
	sn.fds = len(fds)
	// What sandboxes leave on disk: their directories in the state dir and
	// their snapshots (the agent binary the driver keeps there is not one).
	for _, d := range []string{filepath.Join(s.state, "sandboxes"), filepath.Join(s.data, "snapshots")} {
		_ = filepath.Walk(d, func(_ string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				sn.diskBytes += fi.Size()
			}
			return nil
		})
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				sn.memAvailable = kb << 10
			}
		}
		f.Close()
	}
	return sn
}

func (s *soak) compare(end snapshot) {
	b := s.base
	for _, c := range []struct {
		what      string
		base, end int
		tolerance int
	}{
		{"processes mentioning the state dir", b.procs, end.procs, 0},
		{"mounts under the state dir", b.mounts, end.mounts, 0},
		{"sandbox cgroups", b.cgroups, end.cgroups, 0},
		{"network namespaces", b.netns, end.netns, 0},
		{"host links", b.links, end.links, 0},
		{"nftables set elements", b.nftElements, end.nftElements, 0},
		{"open fds of the soak", b.fds, end.fds, fdTolerance},
	} {
		if c.end > c.base+c.tolerance {
			s.fail("%s: %d at the start, %d at the end", c.what, c.base, c.end)
		}
	}
	if end.diskBytes > b.diskBytes {
		s.fail("disk: %d bytes left in the state dir and snapshots (%d at the start)", end.diskBytes, b.diskBytes)
	}
	if b.memAvailable-end.memAvailable > memTolerance {
		s.fail("memory: MemAvailable %d MiB at the start, %d MiB at the end (tolerance %d MiB; the host is shared)", b.memAvailable>>20, end.memAvailable>>20, memTolerance>>20)
	}
}

func (s *soak) report(rows []store.Sandbox, end snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ops []string
	total, errs := 0, 0
	for op := range s.stats {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	fmt.Println("\n| operation | requests | ok | p50 | p95 | p99 | errors by code |\n|---|---|---|---|---|---|---|")
	for _, op := range ops {
		st := s.stats[op]
		sort.Slice(st.lat, func(i, j int) bool { return st.lat[i] < st.lat[j] })
		var codes []string
		for c, n := range st.errors {
			codes = append(codes, fmt.Sprintf("%s ×%d", c, n))
			errs += n
		}
		sort.Strings(codes)
		total += st.n
		fmt.Printf("| %s | %d | %d | %s | %s | %s | %s |\n", op, st.n, len(st.lat), pct(st.lat, 50), pct(st.lat, 95), pct(st.lat, 99), strings.Join(codes, ", "))
	}
	byStatus := map[store.Status]int{}
	for _, r := range rows {
		byStatus[r.Status]++
	}
	var down time.Duration
	for _, d := range s.down {
		down += d.to.Sub(d.from)
	}
	fmt.Printf("\n%d requests, %d answered with an error or lost to a kill; %d kill -9 + restarts (server down %s in all)\n", total, errs, s.kills, down.Round(time.Millisecond))
	fmt.Printf("sandboxes: %d created; at the end %v\n", len(rows), byStatus)
	b := s.base
	fmt.Printf("host, start → end: processes %d → %d, mounts %d → %d, cgroups %d → %d, netns %d → %d, links %d → %d, nft elements %d → %d, soak fds %d → %d, sandbox dirs+snapshot bytes %d → %d, MemAvailable %d → %d MiB\n",
		b.procs, end.procs, b.mounts, end.mounts, b.cgroups, end.cgroups, b.netns, end.netns, b.links, end.links,
		b.nftElements, end.nftElements, b.fds, end.fds, b.diskBytes, end.diskBytes, b.memAvailable>>20, end.memAvailable>>20)
	if len(s.failures) == 0 {
		fmt.Println("leaks and mismatches found: none")
	} else {
		fmt.Println("problems found:")
		for _, f := range s.failures {
			fmt.Println("  - " + f)
		}
	}
}

func pct(l []time.Duration, p int) string {
	if len(l) == 0 {
		return "–"
	}
	return l[min(len(l)-1, len(l)*p/100)].Round(100 * time.Microsecond).String()
}

func freePort() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal("%v", err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func must[T any](v T, err error) T {
	if err != nil {
		fatal("%v", err)
	}
	return v
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "soak: "+format+"\n", args...)
	os.Exit(2)
}
