package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigCheckSnapshots runs the binary's `config check` on a
// snapshots section: the master key (from the environment) and the S3
// secret (from a file) are redacted in what it prints, and an S3 store
// without a master key is refused with what to do.
func TestConfigCheckSnapshots(t *testing.T) {
	dir := t.TempDir()
	const master = "c25hcHNob3QtbWFzdGVyLWtleS0zMi1ieXRlcyEhISE=" // 32 bytes
	secretFile := filepath.Join(dir, "s3-secret")
	if err := os.WriteFile(secretFile, []byte("s3-secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(yaml string, env ...string) (string, error) {
		p := filepath.Join(dir, "config.yaml")
		if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(filepath.Join(binDir, "orkestrd"), "config", "check", "--config", p)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	s3 := "  s3:\n    endpoint: https://s3.example.eu\n    bucket: snaps\n    access_key_id: AKIAEXAMPLE\n    secret_access_key_file: " + secretFile + "\n"
	out, err := check("snapshots:\n  store: s3\n  master_key_env: TEST_SNAPSHOT_KEY\n"+s3, "TEST_SNAPSHOT_KEY="+master)
	if err != nil {
		t.Fatalf("config check: %v\n%s", err, out)
	}
	for _, want := range []string{"store: s3", "bucket: snaps", "access_key_id: AKIAEXAMPLE", "master_key: <redacted>", "secret_access_key: <redacted>", "config ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("config check does not print %q:\n%s", want, out)
		}
	}
	for _, secret := range []string{master, "s3-secret-value"} {
		if strings.Contains(out, secret) {
			t.Errorf("config check printed the secret %q", secret)
		}
	}
	if out, err := check("snapshots:\n  store: s3\n" + s3); err == nil || !strings.Contains(out, "must be encrypted") || !strings.Contains(out, "openssl rand -base64 32") {
		t.Errorf("s3 without a master key: %v\n%s", err, out)
	}
	if out, err := check("snapshots:\n  dir: /srv/snapshots\n"); err != nil || !strings.Contains(out, "store: fs") {
		t.Errorf("the fs store: %v\n%s", err, out)
	}
}
