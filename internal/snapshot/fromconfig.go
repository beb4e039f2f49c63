package snapshot

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/orkestr-eu/orkestr/internal/config"
)

// FromConfig makes the snapshot store and keyring the configuration's
// snapshots section names. dataDir is orkestrd's data directory: the fs
// store defaults to <dataDir>/snapshot-store. An S3 store without a
// master key is refused (config.Validate refuses it too): only the
// filesystem store may keep snapshots unencrypted.
func FromConfig(c config.Snapshots, dataDir string) (Store, *Keyring, error) {
	var master []byte
	if c.MasterKey != "" {
		var err error
		if master, err = ParseMasterKey(c.MasterKey); err != nil {
			return nil, nil, fmt.Errorf("config: snapshots.master_key: %w", err)
		}
	}
	var st Store
	switch c.Store {
	case "", "fs":
		dir := c.Dir
		if dir == "" {
			if dataDir == "" {
				return nil, nil, errors.New("config: snapshots.dir is empty and there is no data directory to put the snapshot store in")
			}
			dir = filepath.Join(dataDir, "snapshot-store")
		}
		st = NewFS(dir)
	case "s3":
		if master == nil {
			return nil, nil, errors.New("config: snapshots.store is s3 but no snapshots.master_key is set: snapshots in an object store must be encrypted (make a key with `openssl rand -base64 32`)")
		}
		var err error
		st, err = NewS3(S3Config{
			Endpoint: c.S3.Endpoint, Region: c.S3.Region, Bucket: c.S3.Bucket, Prefix: c.S3.Prefix,
			AccessKeyID: c.S3.AccessKeyID, SecretAccessKey: c.S3.SecretAccessKey,
			CAFile: c.S3.CAFile, VirtualHost: c.S3.VirtualHost,
		})
		if err != nil {
			return nil, nil, fmt.Errorf("config: snapshots.s3: %w", err)
		}
	default:
		return nil, nil, fmt.Errorf("config: snapshots.store %q: use fs or s3", c.Store)
	}
	kr, err := NewKeyring(st, master)
	if err != nil {
		return nil, nil, err
	}
	return st, kr, nil
}
