package config

import (
	"fmt"
	"time"
)

// Fleet makes `orkestrd serve` the control plane of a fleet: sandboxes run
// on the nodes (`orkestrd node`) registered in the store, which must be
// PostgreSQL. Off, the server runs its sandboxes itself (one box).
type Fleet struct {
	Enabled bool `yaml:"enabled"`
	// NodeToken is the credential the control plane and the nodes share
	// (node_token, node_token_file or node_token_env); at least 32 bytes.
	NodeToken     string `yaml:"node_token,omitempty"`
	NodeTokenFile string `yaml:"node_token_file,omitempty"`
	NodeTokenEnv  string `yaml:"node_token_env,omitempty"`
	// HeartbeatTimeoutSeconds: a node silent this long is lost: its
	// running sandboxes become error (node_lost). Default 15.
	HeartbeatTimeoutSeconds int `yaml:"heartbeat_timeout_seconds"`
	// NodeCAFile is a PEM bundle of the CAs that sign the nodes' TLS
	// certificates (https node addresses); empty: the system's roots.
	NodeCAFile string `yaml:"node_ca_file"`
	// CPUOvercommit lets placement allocate a node's cores this many
	// times (memory and disk never); default 1.
	CPUOvercommit float64 `yaml:"cpu_overcommit"`
}

// HeartbeatTimeout is the lapse after which a node is lost.
func (f Fleet) HeartbeatTimeout() time.Duration {
	if f.HeartbeatTimeoutSeconds <= 0 {
		return 15 * time.Second
	}
	return time.Duration(f.HeartbeatTimeoutSeconds) * time.Second
}

// Node configures `orkestrd node`, one host of a fleet.
type Node struct {
	// ID names the node in the fleet (stable across restarts: the store
	// records which node runs which sandbox).
	ID string `yaml:"id"`
	// Listen is the node API's address; Advertise the base URL the
	// control plane reaches it at (default http://<listen>).
	Listen    string `yaml:"listen"`
	Advertise string `yaml:"advertise"`
	// Slots caps the sandboxes the node runs at once; 0: one per 128 MiB
	// of memory.
	Slots int `yaml:"slots"`
	// HeartbeatSeconds is how often the node writes its state to the
	// store; default 5 (a third of the default timeout).
	HeartbeatSeconds int `yaml:"heartbeat_seconds"`
}

// HeartbeatEvery is the node's heartbeat period.
func (n Node) HeartbeatEvery() time.Duration {
	if n.HeartbeatSeconds <= 0 {
		return 5 * time.Second
	}
	return time.Duration(n.HeartbeatSeconds) * time.Second
}

// resolveFleet reads the node token from where the file says.
func (c *Config) resolveFleet() error {
	tok, err := secret("fleet.node_token", c.Fleet.NodeToken, c.Fleet.NodeTokenFile, c.Fleet.NodeTokenEnv)
	if err != nil {
		return err
	}
	c.Fleet.NodeToken = tok
	if tok != "" && len(tok) < 32 {
		return fmt.Errorf("config: fleet.node_token is %d bytes; use at least 32 random bytes (e.g. openssl rand -hex 32)", len(tok))
	}
	if c.Fleet.CPUOvercommit < 0 || c.Fleet.HeartbeatTimeoutSeconds < 0 {
		return fmt.Errorf("config: fleet.cpu_overcommit and fleet.heartbeat_timeout_seconds cannot be negative")
	}
	return nil
}
