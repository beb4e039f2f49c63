package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/orkestr-eu/orkestr/internal/config"
)

// serverEnv are the environment variables that override a key of the
// config file (and are overridden by the matching serve flag).
var serverEnv = []struct {
	name string
	set  func(*config.Config, string)
}{
	{"ORKESTR_LISTEN", func(c *config.Config, v string) { c.Listen = v }},
	{"ORKESTR_DATABASE_URL", func(c *config.Config, v string) { c.Database.URL = v }},
	{"ORKESTR_CONSOLE_URL", func(c *config.Config, v string) { c.ConsoleURL = v }},
	{"ORKESTR_METRICS_LISTEN", func(c *config.Config, v string) { c.MetricsListen = v }},
}

// loadConfig reads the config file (defaults without one) and applies the
// environment variables of serverEnv; ORKESTR_DATABASE_URL_FILE names a
// file holding the database URL.
func loadConfig(path string) (config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return cfg, err
	}
	for _, e := range serverEnv {
		if v := os.Getenv(e.name); v != "" {
			e.set(&cfg, v)
		}
	}
	if f := os.Getenv("ORKESTR_DATABASE_URL_FILE"); f != "" {
		if os.Getenv("ORKESTR_DATABASE_URL") != "" {
			return cfg, errors.New("set ORKESTR_DATABASE_URL or ORKESTR_DATABASE_URL_FILE, not both")
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return cfg, fmt.Errorf("ORKESTR_DATABASE_URL_FILE: %w", err)
		}
		cfg.Database.URL = string(trimNewline(b))
	}
	return cfg, cfg.Validate()
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// flagsGiven names the flags set on the command line.
func flagsGiven(fs *flag.FlagSet) map[string]bool {
	m := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { m[f.Name] = true })
	return m
}

// configCheck validates a config file (unknown keys, values, the files it
// names) and prints the effective configuration with secrets redacted.
func configCheck(args []string) error {
	fs := flag.NewFlagSet("config check", flag.ContinueOnError)
	file := fs.String("config", os.Getenv("ORKESTR_CONFIG"), "YAML config file (env ORKESTR_CONFIG); none: the defaults")
	asNode := fs.Bool("node", false, "check it as `orkestrd node` reads it: with ORKESTR_NODE_ID, ORKESTR_NODE_LISTEN, ORKESTR_NODE_ADVERTISE, ORKESTR_REGION and ORKESTR_NODE_TOKEN, and what a node needs (id, listen, PostgreSQL, the node token)")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if *file != "" {
		if err := config.CheckKeys(*file); err != nil {
			return err
		}
	}
	cfg, err := loadConfig(*file)
	if err != nil {
		return err
	}
	if *asNode {
		applyNodeEnv(&cfg)
		if err := checkNodeConfig(&cfg); err != nil {
			return err
		}
	}
	if err := cfg.CheckFiles(); err != nil {
		return err
	}
	var out strings.Builder
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(cfg.Redact()); err != nil {
		return err
	}
	src := "the built-in defaults"
	if *file != "" {
		src = *file + " over the defaults"
	}
	fmt.Printf("# effective configuration: %s and the ORKESTR_* environment; secrets redacted\n%s", src, out.String())
	fmt.Fprintln(os.Stderr, "config ok")
	return nil
}

// applyNodeEnv applies the environment `orkestrd node` reads when no flag
// is given: a key of the file wins over ORKESTR_NODE_*, and ORKESTR_REGION
// only replaces the default region (as nodeCmd does).
func applyNodeEnv(cfg *config.Config) {
	for _, e := range []struct {
		env string
		key *string
	}{{"ORKESTR_NODE_ID", &cfg.Node.ID}, {"ORKESTR_NODE_LISTEN", &cfg.Node.Listen}, {"ORKESTR_NODE_ADVERTISE", &cfg.Node.Advertise}} {
		if *e.key == "" {
			*e.key = os.Getenv(e.env)
		}
	}
	if r := os.Getenv("ORKESTR_REGION"); r != "" && cfg.Region == config.Default().Region {
		cfg.Region = r
	}
}

// checkNodeConfig refuses a node config that lacks what `orkestrd node`
// needs; the node token may come from ORKESTR_NODE_TOKEN.
func checkNodeConfig(cfg *config.Config) error {
	switch {
	case cfg.Node.ID == "":
		return fmt.Errorf("a node needs an id (--id or node.id), unique in the fleet and kept across restarts")
	case !strings.HasPrefix(cfg.Database.URL, "postgres"):
		return fmt.Errorf("a node needs the fleet's PostgreSQL (--database-url or database.url = postgres://…): it registers there and writes its metering")
	case cfg.Node.Listen == "":
		return fmt.Errorf("a node needs --listen (node.listen), the address of its node API, on an interface the control plane reaches")
	case cfg.Fleet.NodeToken == "":
		if tok := os.Getenv("ORKESTR_NODE_TOKEN"); len(tok) >= 32 {
			cfg.Fleet.NodeToken = tok
		} else {
			return fmt.Errorf("a node needs the fleet's node token (fleet.node_token_file in the config, or ORKESTR_NODE_TOKEN, at least 32 bytes)")
		}
	}
	return nil
}
