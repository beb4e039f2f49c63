package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// TLS is the certificate the API, the console and (later) the node API
// serve. Both files are PEM; they are read at start and again on SIGHUP.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Enabled says whether orkestrd speaks TLS itself.
func (t TLS) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" }

// Database is where the store lives: empty URL means SQLite in the data
// directory. The URL carries a password, so it may instead come from a
// file (url_file) or an environment variable (url_env).
type Database struct {
	URL     string `yaml:"url"`
	URLFile string `yaml:"url_file,omitempty"`
	URLEnv  string `yaml:"url_env,omitempty"`
}

// Redacted is the placeholder `config check` prints for a secret.
const Redacted = "<redacted>"

// mergeServer copies the server section of a file over the defaults and
// resolves its secrets.
func mergeServer(c *Config, file Config) error {
	if file.Listen != "" {
		c.Listen = file.Listen
	}
	c.ConsoleURL = file.ConsoleURL
	c.MetricsListen = file.MetricsListen
	c.TLS = file.TLS
	c.Database = file.Database
	c.SandboxCAFiles = file.SandboxCAFiles
	c.Fleet, c.Node = file.Fleet, file.Node
	if err := c.resolveFleet(); err != nil {
		return err
	}
	if file.Snapshots != (Snapshots{}) {
		def := c.Snapshots
		c.Snapshots = file.Snapshots
		if c.Snapshots.Store == "" {
			c.Snapshots.Store = def.Store
		}
		if c.Snapshots.CacheBytes == 0 {
			c.Snapshots.CacheBytes = def.CacheBytes
		}
	}
	if err := c.resolveSnapshots(); err != nil {
		return err
	}
	return c.resolveSecrets()
}

// secret resolves one secret that may be given inline, as a file or as the
// name of an environment variable (at most one of the three).
func secret(key, inline, file, env string) (string, error) {
	n := 0
	for _, v := range []string{inline, file, env} {
		if v != "" {
			n++
		}
	}
	if n > 1 {
		return "", fmt.Errorf("config: give %s, %s_file or %s_env, not several", key, key, key)
	}
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("config: %s_file: %w", key, err)
		}
		v := strings.TrimRight(string(b), "\r\n")
		if v == "" {
			return "", fmt.Errorf("config: %s_file %s is empty", key, file)
		}
		return v, nil
	case env != "":
		v, ok := os.LookupEnv(env)
		if !ok || v == "" {
			return "", fmt.Errorf("config: %s_env names the environment variable %s, which is not set", key, env)
		}
		return v, nil
	}
	return inline, nil
}

// resolveSecrets reads the secrets given as files or environment variables
// into their fields.
func (c *Config) resolveSecrets() error {
	var err error
	if c.Database.URL, err = secret("database.url", c.Database.URL, c.Database.URLFile, c.Database.URLEnv); err != nil {
		return err
	}
	for host, a := range c.Registries {
		if a.Password, err = secret("registries."+host+".password", a.Password, a.PasswordFile, a.PasswordEnv); err != nil {
			return err
		}
		if a.Token, err = secret("registries."+host+".token", a.Token, a.TokenFile, a.TokenEnv); err != nil {
			return err
		}
		c.Registries[host] = a
	}
	return nil
}

func (c Config) validateServer() error {
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			return fmt.Errorf("config: listen %q must be host:port, e.g. 127.0.0.1:7777", c.Listen)
		}
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return fmt.Errorf("config: metrics_listen %q must be host:port, e.g. 127.0.0.1:9477", c.MetricsListen)
		}
	}
	if c.ConsoleURL != "" {
		u, err := url.Parse(c.ConsoleURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("config: console_url %q must be an http:// or https:// URL", c.ConsoleURL)
		}
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return fmt.Errorf("config: tls needs both cert_file and key_file")
	}
	if u := c.Database.URL; u != "" && !strings.HasPrefix(u, "postgres://") && !strings.HasPrefix(u, "postgresql://") && !strings.HasPrefix(u, "sqlite:") {
		return fmt.Errorf("config: database.url must be postgres://… or sqlite:///path (empty: SQLite in the data directory)")
	}
	return nil
}

// CheckFiles reads the files the configuration names (the TLS key pair,
// the sandboxes' extra CA certificates) and reports what is wrong with
// them. Validate does not touch the filesystem; serve and `config check`
// call this too.
func (c Config) CheckFiles() error {
	if c.TLS.Enabled() {
		if _, err := tls.LoadX509KeyPair(c.TLS.CertFile, c.TLS.KeyFile); err != nil {
			return fmt.Errorf("config: tls: loading %s and %s: %w", c.TLS.CertFile, c.TLS.KeyFile, err)
		}
	}
	if _, err := c.SandboxCABundle(); err != nil {
		return err
	}
	return c.Snapshots.checkFiles()
}

// SandboxCABundle reads sandbox_ca_files into one PEM bundle of
// certificates (nil when none are configured). Every file must hold at
// least one certificate and nothing but certificates.
func (c Config) SandboxCABundle() ([]byte, error) {
	var out []byte
	for _, f := range c.SandboxCAFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("config: sandbox_ca_files: %w", err)
		}
		n := 0
		for rest := b; ; {
			var blk *pem.Block
			blk, rest = pem.Decode(rest)
			if blk == nil {
				if strings.TrimSpace(string(rest)) != "" {
					return nil, fmt.Errorf("config: sandbox_ca_files: %s has data that is not a PEM block", f)
				}
				break
			}
			if blk.Type != "CERTIFICATE" {
				return nil, fmt.Errorf("config: sandbox_ca_files: %s holds a %q block; only CERTIFICATE blocks belong there (never a private key)", f, blk.Type)
			}
			if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
				return nil, fmt.Errorf("config: sandbox_ca_files: %s: %w", f, err)
			}
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: blk.Bytes})...)
			n++
		}
		if n == 0 {
			return nil, fmt.Errorf("config: sandbox_ca_files: %s holds no certificate", f)
		}
	}
	return out, nil
}

// Redact returns a copy whose secrets are replaced by Redacted (a database
// URL keeps everything but its password), for printing.
func (c Config) Redact() Config {
	out := c
	if c.Database.URL != "" {
		if u, err := url.Parse(c.Database.URL); err == nil && u.Scheme != "" {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
			}
			q := u.Query()
			if q.Has("password") {
				q.Set("password", "xxxxx")
				u.RawQuery = q.Encode()
			}
			out.Database.URL = u.String()
		} else {
			out.Database.URL = Redacted
		}
	}
	if c.Fleet.NodeToken != "" {
		out.Fleet.NodeToken = Redacted
	}
	out.Snapshots = c.Snapshots.redact()
	if c.Registries != nil {
		out.Registries = make(map[string]RegistryAuth, len(c.Registries))
		for h, a := range c.Registries {
			if a.Password != "" {
				a.Password = Redacted
			}
			if a.Token != "" {
				a.Token = Redacted
			}
			out.Registries[h] = a
		}
	}
	return out
}

// CheckKeys reads the file strictly and reports the first key orkestrd
// does not know (a typo such as "tsl:" would otherwise be ignored).
func CheckKeys(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}
