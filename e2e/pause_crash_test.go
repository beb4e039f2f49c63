package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestKilledAfterCheckpoint kills the server in the window between a
// pause's checkpoint (the snapshot is complete, the sandbox stopped) and the
// store's record of it: after a restart the sandbox is paused with its
// snapshot, not an error whose snapshot was swept away (issue 16's soak:
// 4 pauses in 333 lost that way), and it resumes with its files.
func TestKilledAfterCheckpoint(t *testing.T) {
	s := startAPI(t, serverOpts{poolSize: 0})
	id := s.create(s.key, nil)
	s.do("PUT", "/v1/sandboxes/"+id+"/files?path=/workspace/keep", s.key, "kept")
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequest("POST", s.url+"/v1/sandboxes/"+id+"/pause", nil)
		req.Header.Set("Authorization", "Bearer "+s.key)
		if resp, err := httpClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	// snapshot.json is the checkpoint's last step; after it the runtime
	// still tears the stopped sandbox down before the store is updated.
	marker := filepath.Join(s.dataDir, "snapshots", id+"-*", "snapshot.json")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if m, _ := filepath.Glob(marker); len(m) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no snapshot.json within 2 minutes of the pause")
		}
		time.Sleep(time.Millisecond)
	}
	s.stop(syscall.SIGKILL)
	<-done

	s2 := startAPI(t, serverOpts{poolSize: 0, dataDir: s.dataDir, stateDir: s.stateDir})
	sb := s2.do("GET", "/v1/sandboxes/"+id, s.key, nil).json(t)
	t.Logf("after the restart the sandbox is %v (%v)", sb["status"], sb["error"])
	if sb["status"] != "paused" {
		t.Fatalf("sandbox %s is %v after a crash right after its checkpoint, want paused", id, sb["status"])
	}
	if m, _ := filepath.Glob(marker); len(m) != 1 {
		t.Fatalf("the snapshot is gone: %v", m)
	}
	if r := s2.do("POST", "/v1/sandboxes/"+id+"/resume", s.key, nil); r.status != 200 {
		t.Fatalf("resume after the restart: %d %s", r.status, r.body)
	}
	if r := s2.do("GET", "/v1/sandboxes/"+id+"/files?path=/workspace/keep", s.key, nil); string(r.body) != "kept" {
		t.Fatalf("file after the resume: %d %q", r.status, r.body)
	}
	s2.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
	time.Sleep(200 * time.Millisecond)
	if dirs := sandboxIDs(s2.stateDir); len(dirs) != 0 {
		t.Errorf("runtime sandboxes left after the terminate: %v", dirs)
	}
	if ents, _ := os.ReadDir(filepath.Join(s2.dataDir, "snapshots")); len(ents) != 0 {
		t.Errorf("snapshots left after the terminate: %d", len(ents))
	}
}
