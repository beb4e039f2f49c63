package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

const testMasterKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" // 32 bytes

func TestSnapshotsDefaults(t *testing.T) {
	c, err := load(t, "region: fsn1\n")
	if err != nil || c.Snapshots.Store != "fs" || c.Snapshots.CacheBytes != DefaultSnapshotCacheBytes || c.Snapshots.MasterKey != "" {
		t.Fatalf("defaults: %+v %v", c.Snapshots, err)
	}
	c, err = load(t, "snapshots:\n  dir: /srv/snap\n")
	if err != nil || c.Snapshots.Store != "fs" || c.Snapshots.Dir != "/srv/snap" || c.Snapshots.CacheBytes != DefaultSnapshotCacheBytes {
		t.Fatalf("a partial section keeps the defaults: %+v %v", c.Snapshots, err)
	}
}

func TestSnapshotsS3(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "master")
	os.WriteFile(keyFile, []byte(testMasterKey+"\n"), 0o600)
	t.Setenv("TEST_S3_SECRET", "s3-secret-value")
	c, err := load(t, `snapshots:
  store: s3
  master_key_file: `+keyFile+`
  cache_bytes: 1073741824
  s3:
    endpoint: https://s3.example.eu
    region: eu-central-1
    bucket: snaps
    prefix: prod/
    access_key_id: AKIAEXAMPLE
    secret_access_key_env: TEST_S3_SECRET
`)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Snapshots
	if s.MasterKey != testMasterKey || s.S3.SecretAccessKey != "s3-secret-value" || s.S3.Bucket != "snaps" || s.CacheBytes != 1<<30 {
		t.Fatalf("resolved: %+v", s)
	}
	out, err := yaml.Marshal(c.Redact())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), testMasterKey) || strings.Contains(string(out), "s3-secret-value") {
		t.Fatalf("config check would print a snapshot secret:\n%s", out)
	}
	if !strings.Contains(string(out), "AKIAEXAMPLE") || !strings.Contains(string(out), Redacted) {
		t.Fatalf("redacted output lost the non-secret fields:\n%s", out)
	}
}

func TestSnapshotsRefused(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"snapshots:\n  store: s3\n  s3: {bucket: b}\n", "master_key"},
		{"snapshots:\n  store: s3\n  master_key: " + testMasterKey + "\n", "bucket"},
		{"snapshots:\n  store: gcs\n", "use fs or s3"},
		{"snapshots:\n  master_key: c2hvcnQ=\n", "32 random bytes"},
		{"snapshots:\n  master_key: '!!notbase64'\n", "32 random bytes"},
		{"snapshots:\n  master_key: " + testMasterKey + "\n  master_key_env: X\n", "not several"},
		{"snapshots:\n  master_key_env: ORKESTR_TEST_UNSET_VAR\n", "not set"},
		{"snapshots:\n  s3: {bucket: b}\n", "store: s3"},
		{"snapshots:\n  store: s3\n  master_key: " + testMasterKey + "\n  s3: {bucket: b, endpoint: 's3.example.eu'}\n", "endpoint"},
		{"snapshots:\n  store: s3\n  master_key: " + testMasterKey + "\n  s3: {bucket: b, endpoint: 'https://s3.example.eu/path'}\n", "endpoint"},
		{"snapshots:\n  store: s3\n  master_key: " + testMasterKey + "\n  s3: {bucket: b, access_key_id: a}\n", "both"},
		{"snapshots:\n  store: s3\n  master_key: " + testMasterKey + "\n  s3: {bucket: b, prefix: ../x}\n", "prefix"},
		{"snapshots:\n  store: s3\n  master_key: " + testMasterKey + "\n  dir: /x\n  s3: {bucket: b}\n", "dir"},
		{"snapshots:\n  cache_bytes: -1\n", "cache_bytes"},
	} {
		_, err := load(t, tc.yaml)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error about %s", tc.yaml, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), testMasterKey) {
			t.Errorf("an error prints the master key: %v", err)
		}
	}
}

func TestSnapshotsCAFile(t *testing.T) {
	c, err := load(t, "snapshots:\n  store: s3\n  master_key: "+testMasterKey+"\n  s3: {bucket: b, ca_file: /nonexistent/ca.pem}\n")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckFiles(); err == nil || !strings.Contains(err.Error(), "ca_file") {
		t.Fatalf("CheckFiles with a missing CA file: %v", err)
	}
}
