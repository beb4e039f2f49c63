package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
)

// backupRows reads every sandbox row of a backup (from a copy, since
// opening a SQLite file may change it).
func backupRows(t *testing.T, backupDir string) []store.Sandbox {
	t.Helper()
	cp := filepath.Join(t.TempDir(), "copy.db")
	b, err := os.ReadFile(filepath.Join(backupDir, "orkestr.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := sqlstore.OpenSQLite(context.Background(), cp)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rows, err := st.SandboxesByStatus(context.Background(), store.StatusStarting, store.StatusRunning, store.StatusPaused, store.StatusTerminated, store.StatusError)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func newStateDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/run", "orke2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// TestBackupUnderLoadAndRestore takes `orkestrd admin backup` while
// sandboxes are created, used and terminated, then restores it (refused
// while the server runs) into the same data directory — the running
// sandbox is re-adopted, the paused one resumes with its files — and into
// a new one, where every row of the backup is served too (the running
// sandbox, which runs elsewhere, marked error; the paused one resumable).
func TestBackupUnderLoadAndRestore(t *testing.T) {
	dataDir, stateDir := t.TempDir(), newStateDir(t)
	s := startAPI(t, serverOpts{dataDir: dataDir, stateDir: stateDir, logLevel: "info"})
	exec1 := func(srv *apiServer, id, cmd string) string {
		t.Helper()
		r := srv.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": cmd})
		if r.status != 200 {
			t.Fatalf("exec %q in %s: %d %s", cmd, id, r.status, r.body)
		}
		return r.json(t)["stdout"].(string)
	}
	running := s.create(s.key, nil)
	exec1(s, running, "echo kept > /workspace/f")
	paused := s.create(s.key, nil)
	exec1(s, paused, "echo paused-state > /workspace/p")
	if r := s.do("POST", "/v1/sandboxes/"+paused+"/pause", s.key, nil); r.status != 200 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	gone := s.create(s.key, nil)
	s.do("DELETE", "/v1/sandboxes/"+gone, s.key, nil)

	// Load: sandboxes come and go, commands run, lists are read.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var churned []string
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			r := s.do("POST", "/v1/sandboxes", s.key, map[string]any{"template": "debian-12"})
			if r.status != 201 {
				continue
			}
			id := r.json(t)["id"].(string)
			mu.Lock()
			churned = append(churned, id)
			mu.Unlock()
			s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": "echo busy > /workspace/x"})
			s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			s.do("POST", "/v1/sandboxes/"+running+"/exec", s.key, map[string]any{"command": "date >> /workspace/log"})
			s.do("GET", "/v1/sandboxes?limit=50", s.key, nil)
		}
	}()
	// Back up in the middle of it: once a few sandboxes have come and gone.
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		n := len(churned)
		mu.Unlock()
		if n >= 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the load made only %d sandboxes", n)
		}
	}
	backupDir := filepath.Join(t.TempDir(), "backup")
	out := s.admin("backup", "--out", backupDir)
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	t.Logf("backup: %s", strings.TrimSpace(out))
	if fi, err := os.Stat(filepath.Join(backupDir, "orkestr.db")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup database: %v %v", fi, err)
	}
	rows := backupRows(t, backupDir)
	inBackup := map[string]store.Sandbox{}
	for _, r := range rows {
		inBackup[r.ID] = r
	}
	for _, id := range []string{running, paused, gone} {
		if _, ok := inBackup[id]; !ok {
			t.Fatalf("the backup lacks %s", id)
		}
	}
	if len(inBackup) < 7 {
		t.Fatalf("the backup holds %d sandboxes, want the 3 made before and at least 4 of the load", len(inBackup))
	}

	// No restore under a running server.
	cmd := exec.Command(filepath.Join(binDir, "orkestrd"), "admin", "restore", "--from", backupDir, "--data-dir", dataDir)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Run(); err == nil || !strings.Contains(errb.String(), "stop it first") {
		t.Fatalf("restore under a running server: %v %s", err, errb.String())
	}
	s.stop(syscall.SIGTERM)
	out = s.admin("restore", "--from", backupDir)
	t.Logf("restore: %s", strings.TrimSpace(out))

	check := func(srv *apiServer, adopted bool) {
		t.Helper()
		for id, row := range inBackup {
			r := srv.do("GET", "/v1/sandboxes/"+id, s.key, nil)
			if r.status != 200 {
				t.Fatalf("restored row %s (%s in the backup): %d %s", id, row.Status, r.status, r.body)
			}
			got := r.json(t)["status"]
			want := string(row.Status)
			switch {
			case id == running && !adopted, row.Status == store.StatusRunning && id != running, row.Status == store.StatusStarting:
				// Not running on this server's host any more: marked.
				want = string(store.StatusError)
			}
			if got != want {
				t.Errorf("%s: status %v, want %s (backup: %s)", id, got, want, row.Status)
			}
		}
		if r := srv.do("POST", "/v1/sandboxes/"+paused+"/resume", s.key, nil); r.status != 200 {
			t.Fatalf("resume after restore: %d %s", r.status, r.body)
		}
		if got := exec1(srv, paused, "cat /workspace/p"); got != "paused-state\n" {
			t.Errorf("the resumed sandbox's file: %q", got)
		}
		srv.do("DELETE", "/v1/sandboxes/"+paused, s.key, nil)
	}
	s2 := startAPI(t, serverOpts{dataDir: dataDir, stateDir: stateDir, logLevel: "info"})
	check(s2, true)
	if got := exec1(s2, running, "cat /workspace/f"); got != "kept\n" {
		t.Errorf("the re-adopted sandbox's file: %q", got)
	}

	// Into a new data directory (another host, say).
	dataDir3 := t.TempDir()
	cmd = exec.Command(filepath.Join(binDir, "orkestrd"), "admin", "restore", "--from", backupDir, "--data-dir", dataDir3)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("restore into a new data dir: %v\n%s", err, b)
	}
	s3 := startAPI(t, serverOpts{dataDir: dataDir3, stateDir: newStateDir(t), logLevel: "info"})
	check(s3, false)
	s2.do("DELETE", "/v1/sandboxes/"+running, s.key, nil)
}

// TestRestoreRefusesBadBackups: an unfinished backup (no backup.json), one
// from a newer schema, and one whose manifest names snapshots outside the
// backup are refused before anything in the data directory changes.
func TestRestoreRefusesBadBackups(t *testing.T) {
	dataDir := t.TempDir()
	orig := []byte("the current database")
	if err := os.WriteFile(filepath.Join(dataDir, "orkestr.db"), orig, 0o600); err != nil {
		t.Fatal(err)
	}
	restore := func(from string) string {
		cmd := exec.Command(filepath.Join(binDir, "orkestrd"), "admin", "restore", "--from", from, "--data-dir", dataDir)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("restore from %s succeeded:\n%s", from, out)
		}
		return string(out)
	}
	manifest := func(body string) string {
		dir := t.TempDir()
		if body != "" {
			if err := os.WriteFile(filepath.Join(dir, "backup.json"), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	for _, tc := range []struct{ manifest, want string }{
		{"", "not a finished backup"},
		{`{"format": 1, "database": "postgres"}`, "format 1 SQLite backups"},
		{`{"format": 1, "database": "sqlite", "schema_version": 999999, "orkestrd": "v9"}`, "knows versions up to"},
		{`{"format": 1, "database": "sqlite", "snapshots": ["../../../etc"]}`, "outside the backup"},
		{`{"format": 1, "database": "sqlite", "snapshots": ["/etc"]}`, "outside the backup"},
	} {
		if out := restore(manifest(tc.manifest)); !strings.Contains(out, tc.want) {
			t.Errorf("manifest %q: %s (want %q)", tc.manifest, out, tc.want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dataDir, "orkestr.db")); err != nil || !bytes.Equal(b, orig) {
		t.Errorf("a refused restore changed the data directory's database (%v)", err)
	}
}
