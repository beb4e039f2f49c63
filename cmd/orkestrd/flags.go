package main

import (
	"flag"
	"os"
	"path/filepath"

	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/template"
)

// nodeFlags are the flags of every command that runs sandboxes.
type nodeFlags struct {
	dataDir, stateDir, templateDir, runsc, agent, logLevel string
	poolSize                                               int
}

func (f *nodeFlags) register(fs *flag.FlagSet, poolDefault int) {
	exeDir := node.ExecutableDir()
	fs.StringVar(&f.dataDir, "data-dir", envOr("ORKESTR_DATA_DIR", "/var/lib/orkestr/data"), "server data directory (env ORKESTR_DATA_DIR)")
	fs.StringVar(&f.stateDir, "state-dir", os.Getenv("ORKESTR_STATE_DIR"), "runtime state (default /run/orkestr/<id of data dir>; env ORKESTR_STATE_DIR)")
	fs.StringVar(&f.templateDir, "template-dir", template.DirFromEnv(), "host-wide template directory (env ORKESTR_TEMPLATE_DIR)")
	fs.StringVar(&f.runsc, "runsc", envOr("ORKESTR_RUNSC", filepath.Join(exeDir, "runsc")), "runsc binary (env ORKESTR_RUNSC)")
	fs.StringVar(&f.agent, "agent", envOr("ORKESTR_AGENT", filepath.Join(exeDir, "orkestr-agent")), "orkestr-agent binary (env ORKESTR_AGENT)")
	fs.IntVar(&f.poolSize, "pool-size", poolDefault, "warm sandboxes kept per built template (size small); 0 disables")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
}

func (f *nodeFlags) config() node.Config {
	return node.Config{
		DataDir: f.dataDir, StateDir: f.stateDir, TemplateDir: f.templateDir,
		Runsc: f.runsc, AgentBinary: f.agent, PoolSize: f.poolSize, Log: newLogger(f.logLevel),
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// openNode is the host's node with the runtime driver chosen here: gVisor,
// the only driver today (internal/runtime/runtimetest is the bar the next
// one passes).
func openNode(cfg node.Config) (*node.Node, error) {
	cfg, err := cfg.Resolved()
	if err != nil {
		return nil, err
	}
	d, err := node.GVisor(cfg)
	if err != nil {
		return nil, err
	}
	return node.New(cfg, d)
}
