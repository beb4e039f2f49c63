package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestDiskQuotaAPI: the size table names each size's disk, a sandbox's
// metrics show its disk, a write past the quota fails inside with the
// program's own message, and under the host's disk reserve creates and
// resumes are refused with 503 host_disk_low, counted for the operator.
func TestDiskQuotaAPI(t *testing.T) {
	cfg := testConfig()
	small := cfg.Sizes["small"]
	small.DiskMB = 64
	cfg.Sizes["small"] = small
	h := newHarness(t, cfg, true)
	_, key := h.account("disk", "team")

	lim := h.do("GET", "/v1/limits", key, nil).json(t)
	disks := map[string]float64{}
	for _, s := range lim["sizes"].([]any) {
		m := s.(map[string]any)
		disks[m["size"].(string)] = m["disk_mb"].(float64)
	}
	if disks["small"] != 64 || disks["medium"] != 16384 || disks["large"] != 32768 {
		t.Fatalf("disk_mb in /v1/limits: %v", disks)
	}

	id := h.create(key)
	if out := h.exec(key, id, "df -k / | tail -n 1 | awk '{print $2}'"); out != "65536\n" {
		t.Fatalf("df inside: %q KiB, want the 64 MiB quota", out)
	}
	r := h.do("POST", "/v1/sandboxes/"+id+"/exec", key, map[string]any{"command": "dd if=/dev/zero of=/workspace/big bs=1M count=100"})
	m := r.json(t)
	if r.status != 200 || m["exit_code"] == 0.0 || !strings.Contains(m["stderr"].(string), "No space left on device") {
		t.Fatalf("dd past the quota: %d %s", r.status, r.body)
	}
	met := h.do("GET", "/v1/sandboxes/"+id+"/metrics", key, nil).json(t)
	disk, ok := met["disk"].(map[string]any)
	if !ok {
		t.Fatalf("metrics without disk: %v", met)
	}
	if disk["limit_bytes"] != float64(64<<20) || disk["usage_bytes"].(float64) < 48<<20 || disk["usage_bytes"].(float64) > 65<<20 || disk["usage_percent"].(float64) < 75 {
		t.Fatalf("metrics disk after filling it: %v", disk)
	}
	h.exec(key, id, "rm /workspace/big")
	// The sandbox gives the space back as it frees its pages, which may
	// lag the rm a little on a busy host.
	var after map[string]any
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		after = h.do("GET", "/v1/sandboxes/"+id+"/metrics", key, nil).json(t)["disk"].(map[string]any)
		if after["usage_bytes"].(float64) <= 4<<20 || time.Now().After(deadline) {
			break
		}
	}
	if after["usage_bytes"].(float64) > 4<<20 {
		t.Fatalf("metrics disk after rm: %v", after)
	}

	// A paused sandbox, then the reserve is raised above what the host has free.
	paused := h.create(key)
	if r := h.do("POST", "/v1/sandboxes/"+paused+"/pause", key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	spaces, err := h.srv.local.DiskSpaces()
	if err != nil || len(spaces) == 0 {
		t.Fatalf("disk spaces: %v %v", spaces, err)
	}
	h.srv.local.SetDiskReserve(int64(spaces[0].FreeBytes) + 1<<40)
	for _, c := range []struct{ what, path string }{
		{"create", "/v1/sandboxes"},
		{"resume", "/v1/sandboxes/" + paused + "/resume"},
	} {
		var body any
		if c.what == "create" {
			body = map[string]any{"template": "debian-12"}
		}
		r := h.do("POST", c.path, key, body)
		if r.status != http.StatusServiceUnavailable || r.code() != "host_disk_low" {
			t.Fatalf("%s under the reserve: %d %s", c.what, r.status, r.body)
		}
		if strings.Contains(string(r.body), h.srv.dataDir) || strings.Contains(string(r.body), "/run") {
			t.Fatalf("%s: the refusal names host paths: %s", c.what, r.body)
		}
	}
	if st := h.do("GET", "/v1/sandboxes/"+paused, key, nil).json(t)["status"]; st != "paused" {
		t.Fatalf("a refused resume left the sandbox %v", st)
	}
	// The sandbox already running keeps working.
	h.exec(key, id, "echo still")
	rec := scrape(t, h)
	for _, want := range []string{"orkestr_disk_reserve_refusals_total 2", "orkestr_host_disk_free_bytes{path=", "orkestr_host_disk_reserve_bytes "} {
		if !strings.Contains(rec, want) {
			t.Errorf("operator metrics lack %q", want)
		}
	}

	h.srv.local.SetDiskReserve(0)
	if r := h.do("POST", "/v1/sandboxes/"+paused+"/resume", key, nil); r.status != 200 {
		t.Fatalf("resume with the reserve lifted: %d %s", r.status, r.body)
	}
}

// scrape reads the operator metrics.
func scrape(t *testing.T, h *harness) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}
