package config

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// Snapshots is where paused sandboxes' snapshots are kept (see
// internal/snapshot and docs/operating.md, "Snapshot storage").
type Snapshots struct {
	// Store is "fs" (default: a directory of this host, the one box) or
	// "s3" (S3-compatible object storage, what a fleet needs so that a
	// snapshot outlives its host).
	Store string `yaml:"store"`
	// Dir is the fs store's directory; empty: <data-dir>/snapshot-store.
	Dir string     `yaml:"dir,omitempty"`
	S3  SnapshotS3 `yaml:"s3,omitempty"`
	// MasterKey (32 random bytes, base64: `openssl rand -base64 32`)
	// wraps each account's data key. Required with s3; without it the fs
	// store keeps snapshots unencrypted (integrity-checked only).
	MasterKey     string `yaml:"master_key,omitempty"`
	MasterKeyFile string `yaml:"master_key_file,omitempty"`
	MasterKeyEnv  string `yaml:"master_key_env,omitempty"`
	// CacheBytes bounds the snapshots a node keeps locally (to resume
	// where it paused without a download); default 10 GiB.
	CacheBytes int64 `yaml:"cache_bytes"`
}

// SnapshotS3 is an S3-compatible bucket. Empty credentials, region and
// endpoint fall back to the standard AWS environment variables
// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
// AWS_REGION, AWS_ENDPOINT_URL).
type SnapshotS3 struct {
	// Endpoint is the server's URL, e.g. https://s3.eu-central-1.amazonaws.com
	// or http://127.0.0.1:7070 (empty: AWS_ENDPOINT_URL, else AWS S3 of
	// the region).
	Endpoint string `yaml:"endpoint,omitempty"`
	Region   string `yaml:"region,omitempty"`
	Bucket   string `yaml:"bucket,omitempty"`
	// Prefix is prepended to every object key ("orkestr/prod/").
	Prefix      string `yaml:"prefix,omitempty"`
	AccessKeyID string `yaml:"access_key_id,omitempty"`
	// SecretAccessKey may come from a file or an environment variable.
	SecretAccessKey     string `yaml:"secret_access_key,omitempty"`
	SecretAccessKeyFile string `yaml:"secret_access_key_file,omitempty"`
	SecretAccessKeyEnv  string `yaml:"secret_access_key_env,omitempty"`
	// CAFile is a PEM bundle of the CAs of the endpoint's certificate
	// (empty: the system's roots).
	CAFile string `yaml:"ca_file,omitempty"`
	// VirtualHost addresses the bucket as a host name
	// (bucket.endpoint); default false: path-style (endpoint/bucket),
	// which every S3-compatible server speaks.
	VirtualHost bool `yaml:"virtual_host,omitempty"`
}

// DefaultSnapshotCacheBytes is snapshots.cache_bytes's default.
const DefaultSnapshotCacheBytes = 10 << 30

// resolveSnapshots reads the snapshot secrets from where the file says.
func (c *Config) resolveSnapshots() error {
	s := &c.Snapshots
	var err error
	if s.MasterKey, err = secret("snapshots.master_key", s.MasterKey, s.MasterKeyFile, s.MasterKeyEnv); err != nil {
		return err
	}
	if s.S3.SecretAccessKey, err = secret("snapshots.s3.secret_access_key", s.S3.SecretAccessKey, s.S3.SecretAccessKeyFile, s.S3.SecretAccessKeyEnv); err != nil {
		return err
	}
	return nil
}

func (s Snapshots) validate() error {
	switch s.Store {
	case "", "fs":
		if s.S3 != (SnapshotS3{}) {
			return fmt.Errorf("config: snapshots.s3 is set but snapshots.store is %q; set store: s3 to use it", s.storeName())
		}
	case "s3":
		if s.S3.Bucket == "" {
			return fmt.Errorf("config: snapshots.store is s3 but snapshots.s3.bucket is empty")
		}
		if s.MasterKey == "" {
			return fmt.Errorf("config: snapshots.store is s3 but no snapshots.master_key is set: snapshots in an object store must be encrypted (make a key with `openssl rand -base64 32` and give it as master_key_file or master_key_env)")
		}
		if s.Dir != "" {
			return fmt.Errorf("config: snapshots.dir is for store: fs; with store: s3 leave it out")
		}
		if e := s.S3.Endpoint; e != "" {
			u, err := url.Parse(e)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
				return fmt.Errorf("config: snapshots.s3.endpoint %q must be an http:// or https:// URL with no path, e.g. https://s3.eu-central-1.amazonaws.com", e)
			}
		}
		if (s.S3.AccessKeyID == "") != (s.S3.SecretAccessKey == "") {
			return fmt.Errorf("config: snapshots.s3 needs both access_key_id and secret_access_key (or neither: then AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
		}
		if p := s.S3.Prefix; p != "" && (strings.HasPrefix(p, "/") || strings.Contains(p, "..") || strings.Contains(p, "//")) {
			return fmt.Errorf("config: snapshots.s3.prefix %q must be relative, without '..' or '//' (e.g. orkestr/prod/)", p)
		}
	default:
		return fmt.Errorf("config: snapshots.store %q: use fs or s3", s.Store)
	}
	if s.MasterKey != "" {
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s.MasterKey))
		if err != nil || len(b) != 32 {
			return fmt.Errorf("config: snapshots.master_key must be 32 random bytes in base64 (make one with `openssl rand -base64 32`)")
		}
	}
	if s.CacheBytes < 0 {
		return fmt.Errorf("config: snapshots.cache_bytes must be >= 0")
	}
	return nil
}

func (s Snapshots) storeName() string {
	if s.Store == "" {
		return "fs"
	}
	return s.Store
}

// checkFiles reads the CA file the section names.
func (s Snapshots) checkFiles() error {
	if s.Store == "s3" && s.S3.CAFile != "" {
		b, err := os.ReadFile(s.S3.CAFile)
		if err != nil {
			return fmt.Errorf("config: snapshots.s3.ca_file: %w", err)
		}
		if !strings.Contains(string(b), "-----BEGIN CERTIFICATE-----") {
			return fmt.Errorf("config: snapshots.s3.ca_file %s holds no PEM certificate", s.S3.CAFile)
		}
	}
	return nil
}

func (s Snapshots) redact() Snapshots {
	if s.MasterKey != "" {
		s.MasterKey = Redacted
	}
	if s.S3.SecretAccessKey != "" {
		s.S3.SecretAccessKey = Redacted
	}
	return s
}
