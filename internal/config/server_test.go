package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/tlsutil/tlstest"
)

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestServerKeysDefaults(t *testing.T) {
	c := config.Default()
	if c.Listen != "127.0.0.1:7777" || c.TLS.Enabled() || c.Database.URL != "" || len(c.SandboxCAFiles) != 0 {
		t.Fatalf("defaults: %+v", c)
	}
	c, err := config.Load(write(t, t.TempDir(), "c.yaml", "listen: 0.0.0.0:8443\nconsole_url: https://o.example.com\nmetrics_listen: 127.0.0.1:9477\n"))
	if err != nil || c.Listen != "0.0.0.0:8443" || c.ConsoleURL != "https://o.example.com" || c.MetricsListen != "127.0.0.1:9477" {
		t.Fatalf("%+v %v", c, err)
	}
}

func TestSecretsFromFileAndEnv(t *testing.T) {
	dir := t.TempDir()
	const url = "postgres://orkestr:s3cret-pw@db.example:5432/orkestr?sslmode=verify-full"
	urlFile := write(t, dir, "db-url", url+"\n")
	pwFile := write(t, dir, "reg-pw", "hunter2\n")
	t.Setenv("TEST_ORK_TOKEN", "tok-123")
	c, err := config.Load(write(t, dir, "c.yaml", `
database:
  url_file: `+urlFile+`
registries:
  ghcr.io: {username: bot, password_file: `+pwFile+`}
  quay.io: {token_env: TEST_ORK_TOKEN}
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Database.URL != url || c.Registries["ghcr.io"].Password != "hunter2" || c.Registries["quay.io"].Token != "tok-123" {
		t.Fatalf("secrets not resolved: %+v %+v", c.Database, c.Registries)
	}
	t.Setenv("TEST_ORK_DB", url)
	c, err = config.Load(write(t, dir, "c2.yaml", "database: {url_env: TEST_ORK_DB}\n"))
	if err != nil || c.Database.URL != url {
		t.Fatalf("url_env: %q %v", c.Database.URL, err)
	}

	// Redacted: nothing secret survives into what `config check` prints.
	out, err := yaml.Marshal(c.Redact())
	if err != nil {
		t.Fatal(err)
	}
	c3, _ := config.Load(write(t, dir, "c3.yaml", "database:\n  url_file: "+urlFile+"\nregistries:\n  ghcr.io: {username: bot, password_file: "+pwFile+"}\n  quay.io: {token_env: TEST_ORK_TOKEN}\n"))
	out3, _ := yaml.Marshal(c3.Redact())
	for _, o := range []string{string(out), string(out3)} {
		for _, secret := range []string{"s3cret-pw", "hunter2", "tok-123"} {
			if strings.Contains(o, secret) {
				t.Fatalf("redacted config shows %q:\n%s", secret, o)
			}
		}
	}
	if !strings.Contains(string(out3), "postgres://orkestr:xxxxx@db.example:5432/orkestr") || !strings.Contains(string(out3), config.Redacted) {
		t.Errorf("redacted config lost what is not secret:\n%s", out3)
	}
	if c3.Registries["ghcr.io"].Password != "hunter2" {
		t.Error("Redact changed the original")
	}
}

func TestSecretErrors(t *testing.T) {
	dir := t.TempDir()
	empty := write(t, dir, "empty", "\n")
	for _, tc := range []struct{ yaml, want string }{
		{"database: {url: postgres://a@b/c, url_file: /x}\n", "not several"},
		{"database: {url_file: " + filepath.Join(dir, "missing") + "}\n", "url_file"},
		{"database: {url_file: " + empty + "}\n", "is empty"},
		{"database: {url_env: TEST_ORK_UNSET_VAR}\n", "TEST_ORK_UNSET_VAR, which is not set"},
		{"registries:\n  r.example: {password: a, password_env: B}\n", "not several"},
		{"database: {url: mysql://x}\n", "postgres://"},
		{"tls: {cert_file: /a.crt}\n", "both cert_file and key_file"},
		{"listen: 7777\n", "host:port"},
		{"console_url: ftp://x\n", "console_url"},
	} {
		_, err := config.Load(write(t, dir, "c.yaml", tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want it to mention %q", tc.yaml, err, tc.want)
		}
	}
}

func TestCheckKeysRejectsUnknown(t *testing.T) {
	dir := t.TempDir()
	if err := config.CheckKeys(write(t, dir, "ok.yaml", "region: fsn1\ntls: {cert_file: a, key_file: b}\nnetwork: {enabled: false}\n")); err != nil {
		t.Fatal(err)
	}
	err := config.CheckKeys(write(t, dir, "bad.yaml", "region: fsn1\ntsl:\n  cert_file: a\n"))
	if err == nil || !strings.Contains(err.Error(), "tsl") {
		t.Fatalf("unknown key: %v", err)
	}
	if err := config.CheckKeys(write(t, dir, "empty.yaml", "")); err != nil {
		t.Fatalf("an empty file is the defaults: %v", err)
	}
}

func TestCheckFiles(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "test CA")
	crt, key := ca.WriteFiles(t, dir, "server", "localhost", "localhost", "127.0.0.1")
	caFile := ca.WriteCA(t, dir, "ca.crt")
	other := tlstest.NewCA(t, "other CA")
	otherFile := other.WriteCA(t, dir, "other.crt")
	both := write(t, dir, "both.crt", string(ca.CertPEM)+string(other.CertPEM))

	c := config.Default()
	c.TLS = config.TLS{CertFile: crt, KeyFile: key}
	c.SandboxCAFiles = []string{caFile, both}
	if err := c.CheckFiles(); err != nil {
		t.Fatal(err)
	}
	b, err := c.SandboxCABundle()
	if err != nil || strings.Count(string(b), "BEGIN CERTIFICATE") != 3 {
		t.Fatalf("bundle of 3 certificates: %v\n%s", err, b)
	}
	_ = otherFile

	for _, tc := range []struct {
		mut  func(*config.Config)
		want string
	}{
		{func(c *config.Config) { c.TLS.KeyFile = caFile }, "tls"},
		{func(c *config.Config) { c.SandboxCAFiles = []string{key} }, "never a private key"},
		{func(c *config.Config) { c.SandboxCAFiles = []string{write(t, dir, "junk", "hello")} }, "not a PEM block"},
		{func(c *config.Config) { c.SandboxCAFiles = []string{write(t, dir, "nothing", "")} }, "no certificate"},
		{func(c *config.Config) { c.SandboxCAFiles = []string{filepath.Join(dir, "missing.crt")} }, "sandbox_ca_files"},
	} {
		c := config.Default()
		c.TLS = config.TLS{CertFile: crt, KeyFile: key}
		tc.mut(&c)
		if err := c.CheckFiles(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err %v, want it to mention %q", err, tc.want)
		}
	}
}
