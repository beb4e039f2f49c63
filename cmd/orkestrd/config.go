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
