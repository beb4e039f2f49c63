// Package config is the operator's configuration of orkestrd: sizes, plans,
// regions, the template catalog and limits, with the defaults of the API
// contract. A YAML file overrides any part of it.
package config

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Size is one entry of the size menu.
type Size struct {
	CPU      float64 `yaml:"cpu" json:"cpu"`
	MemoryMB int     `yaml:"memory_mb" json:"memory_mb"`
	PIDs     int64   `yaml:"pids" json:"-"`
	// DiskMB caps what a sandbox can write to its filesystem (root
	// changes and /workspace; /tmp is memory). 0: 4 × memory_mb.
	DiskMB int `yaml:"disk_mb" json:"disk_mb"`
}

// DiskMBOrDefault is the size's disk quota in MiB.
func (s Size) DiskMBOrDefault() int {
	if s.DiskMB > 0 {
		return s.DiskMB
	}
	return 4 * s.MemoryMB
}

// RateLimit is a token bucket per API key.
type RateLimit struct {
	RequestsPerSecond float64 `yaml:"requests_per_second"`
	Burst             int     `yaml:"burst"`
}

// Plan caps what an account may use.
type Plan struct {
	AllowedSizes  []string `yaml:"allowed_sizes"`
	MaxConcurrent int      `yaml:"max_concurrent"`
	SnapshotCap   int      `yaml:"snapshot_cap"`
	// MaxFork caps the clones one fork makes (POST /v1/sandboxes/{id}/fork);
	// 0: DefaultMaxFork.
	MaxFork               int       `yaml:"max_fork"`
	UsageGBHoursIncluded  float64   `yaml:"usage_gb_hours_included"`
	UsageCPUHoursIncluded float64   `yaml:"usage_cpu_hours_included"`
	RateLimit             RateLimit `yaml:"rate_limit"`
}

// DefaultMaxFork is a plan's max_fork when the config leaves it out.
const DefaultMaxFork = 10

// ForkLimit is the most clones one fork of this plan makes.
func (p Plan) ForkLimit() int {
	if p.MaxFork > 0 {
		return p.MaxFork
	}
	return DefaultMaxFork
}

// Template is one catalog entry. Its sources are tried in order when it is
// built: an OCI image pulled from a registry, or an offline recipe.
type Template struct {
	Name        string           `yaml:"name"`
	Description string           `yaml:"description"`
	Default     bool             `yaml:"default"`
	Sources     []TemplateSource `yaml:"sources"`
}

// TemplateSource is one way to build a template: exactly one field is set.
type TemplateSource struct {
	Image  string `yaml:"image,omitempty"`  // an OCI reference, e.g. python:3.12-slim-bookworm
	Recipe string `yaml:"recipe,omitempty"` // an offline recipe, e.g. debian-12
}

// RegistryAuth is how to log in to one registry host.
type RegistryAuth struct {
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	Token    string `yaml:"token"` // a bearer token instead of username and password
	// The password and token may come from a file or an environment
	// variable instead (secrets kept out of the YAML).
	PasswordFile string `yaml:"password_file,omitempty"`
	PasswordEnv  string `yaml:"password_env,omitempty"`
	TokenFile    string `yaml:"token_file,omitempty"`
	TokenEnv     string `yaml:"token_env,omitempty"`
}

// Network configures sandbox networking (API `network`: off, restricted,
// open). See docs/operating.md.
type Network struct {
	// Enabled allows restricted and open sandboxes; without it every
	// sandbox is "off" and the host's network is left alone.
	Enabled bool `yaml:"enabled"`
	// Range is where sandbox addresses (one /30 each) come from; it must
	// not overlap any network of the host.
	Range string `yaml:"range"`
	// Allow is the allow-list of restricted sandboxes ("pypi.org",
	// "*.githubusercontent.com"); empty: the package registries default.
	Allow []string `yaml:"allow"`
	// AllowExtra is added to Allow (keeps the default list).
	AllowExtra []string `yaml:"allow_extra"`
	// Accounts adds names for one account's sandboxes, by account id.
	Accounts map[string][]string `yaml:"accounts"`
	// AllowPrivate opens private destinations (CIDRs in 10/8, 172.16/12,
	// 192.168/16, 100.64/10) to networked sandboxes, e.g. a package mirror
	// on the LAN. Loopback, link-local and metadata stay closed.
	AllowPrivate []string `yaml:"allow_private"`
	// Upstreams are the DNS servers (host:port) the sandboxes' resolvers
	// ask; empty: the host's /etc/resolv.conf.
	Upstreams []string `yaml:"upstreams"`
	// PoolSize is how many networked sandboxes each warm pool keeps next
	// to the off ones (at most pool_size).
	PoolSize int `yaml:"pool_size"`
}

// Config is the whole configuration.
type Config struct {
	Region            string          `yaml:"region"` // this node's region
	MaxFileBytes      int64           `yaml:"max_file_bytes"`
	MaxTimeoutSeconds int             `yaml:"max_timeout_seconds"`
	PoolSize          int             `yaml:"pool_size"`
	Sizes             map[string]Size `yaml:"sizes"`
	Plans             map[string]Plan `yaml:"plans"`
	Templates         []Template      `yaml:"templates"`
	// Registries holds credentials by registry host ("ghcr.io",
	// "index.docker.io"); other registries are pulled from anonymously.
	Registries map[string]RegistryAuth `yaml:"registries"`
	// InsecureRegistries are hosts spoken to over plain HTTP (a mirror on
	// the local network).
	InsecureRegistries []string `yaml:"insecure_registries"`
	Network            Network  `yaml:"network"`

	// What `orkestrd serve` also takes as flags (a flag or its environment
	// variable wins over the file). See server.go.
	Listen        string   `yaml:"listen"`
	ConsoleURL    string   `yaml:"console_url"`
	MetricsListen string   `yaml:"metrics_listen"`
	TLS           TLS      `yaml:"tls"`
	Database      Database `yaml:"database"`
	// SandboxCAFiles are PEM files of CA certificates added to every
	// sandbox's trust store (a TLS-inspecting proxy's CA).
	SandboxCAFiles []string `yaml:"sandbox_ca_files"`
	// DiskReserveMB is the host disk kept free: with less free space on
	// the filesystem of the sandboxes' state or of the data directory,
	// creates and resumes are refused (503 host_disk_low).
	DiskReserveMB int64 `yaml:"disk_reserve_mb"`
	// PoolMax is how far a warm pool grows when claims find it empty
	// (pool_size is where it starts and shrinks back to when idle).
	PoolMax int `yaml:"pool_max"`
	// PoolMemoryMB is the budget of all warm pools together, counted at
	// PooledSandboxMB each (an idle sandbox's measured footprint).
	PoolMemoryMB int `yaml:"pool_memory_mb"`

	// Fleet and Node: a control plane with nodes on other hosts (see
	// fleet.go); the one box needs neither.
	Fleet Fleet `yaml:"fleet"`
	Node  Node  `yaml:"node"`

	// Snapshots is where paused sandboxes' snapshots are kept (see
	// snapshots.go).
	Snapshots Snapshots `yaml:"snapshots"`

	// OperatorAccounts are the accounts (by name or id) of the people who
	// run this server: their keys and console members also see the nodes
	// (GET /v1/nodes, the console's usage page). Every other account
	// sees regions only.
	OperatorAccounts []string `yaml:"operator_accounts"`
}

// IsOperator reports whether an account (its id and name) is one of
// OperatorAccounts.
func (c Config) IsOperator(id, name string) bool {
	for _, a := range c.OperatorAccounts {
		if a != "" && (a == id || a == name) {
			return true
		}
	}
	return false
}

// PooledSandboxMB is what one idle pooled sandbox is counted at against
// pool_memory_mb (its PSS measured 18.5 MiB, docs/benchmarks.md, rounded up).
const PooledSandboxMB = 24

// Default returns the defaults of API.md.
func Default() Config {
	return Config{
		Region:            "fsn1",
		Listen:            "127.0.0.1:7777",
		MaxFileBytes:      1 << 30,
		MaxTimeoutSeconds: 86400,
		PoolSize:          2,
		Network:           Network{Enabled: true, Range: "10.231.0.0/16", PoolSize: 1},
		Sizes: map[string]Size{
			"small":  {CPU: 0.5, MemoryMB: 512, PIDs: 512, DiskMB: 2048},
			"medium": {CPU: 2, MemoryMB: 4096, PIDs: 2048, DiskMB: 16384},
			"large":  {CPU: 4, MemoryMB: 8192, PIDs: 4096, DiskMB: 32768},
		},
		DiskReserveMB: 2048,
		Snapshots:     Snapshots{Store: "fs", CacheBytes: DefaultSnapshotCacheBytes},
		PoolMax:       8,
		PoolMemoryMB:  1024,
		Plans: map[string]Plan{
			"free": {AllowedSizes: []string{"small"}, MaxConcurrent: 1, SnapshotCap: 1,
				UsageGBHoursIncluded: 10, UsageCPUHoursIncluded: 2, RateLimit: RateLimit{RequestsPerSecond: 20, Burst: 40}},
			"pro": {AllowedSizes: []string{"small", "medium"}, MaxConcurrent: 10, SnapshotCap: 3,
				UsageGBHoursIncluded: 200, UsageCPUHoursIncluded: 50, RateLimit: RateLimit{RequestsPerSecond: 100, Burst: 200}},
			"team": {AllowedSizes: []string{"small", "medium", "large"}, MaxConcurrent: 50, SnapshotCap: 10,
				UsageGBHoursIncluded: 2000, UsageCPUHoursIncluded: 500, RateLimit: RateLimit{RequestsPerSecond: 500, Burst: 1000}},
		},
		Templates: []Template{
			{Name: "python-3.12", Description: "CPython 3.12 with pip and common libs", Default: true,
				Sources: []TemplateSource{{Image: "python:3.12-slim-bookworm"}}},
			{Name: "python-3.12-bare", Description: "CPython 3.12 only, faster start",
				Sources: []TemplateSource{{Image: "python:3.12-alpine"}}},
			{Name: "node-22", Description: "Node 22 with npm",
				Sources: []TemplateSource{{Image: "node:22-bookworm-slim"}, {Recipe: "node-22"}}},
			{Name: "ubuntu-24.04", Description: "Minimal Ubuntu shell environment",
				Sources: []TemplateSource{{Image: "ubuntu:24.04"}}},
			{Name: "python-3.11", Description: "Debian 12's CPython 3.11 with pip and venv (offline build)",
				Sources: []TemplateSource{{Recipe: "python-3.11"}}},
			{Name: "debian-12", Description: "Minimal Debian 12 shell environment (offline build)",
				Sources: []TemplateSource{{Recipe: "debian-12"}}},
			{Name: "e2b-base", Description: "E2B's base template: bash, Python 3.11 with pip, Node 22 with npm, git (offline build)",
				Sources: []TemplateSource{{Recipe: "e2b-base"}}},
		},
	}
}

// Load reads a YAML file over the defaults. Maps (sizes, plans) merge by
// key; a templates list replaces the default catalog.
func Load(path string) (Config, error) {
	c := Default()
	if path == "" {
		return c, c.Validate()
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	var file Config
	if err := yaml.Unmarshal(b, &file); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	if file.Region != "" {
		c.Region = file.Region
	}
	if file.MaxFileBytes > 0 {
		c.MaxFileBytes = file.MaxFileBytes
	}
	if file.MaxTimeoutSeconds > 0 {
		c.MaxTimeoutSeconds = file.MaxTimeoutSeconds
	}
	// pool_size: 0 is meaningful (disabled), so a YAML node decides.
	var raw map[string]any
	_ = yaml.Unmarshal(b, &raw)
	if _, ok := raw["pool_size"]; ok {
		c.PoolSize = file.PoolSize
	}
	if _, ok := raw["disk_reserve_mb"]; ok {
		c.DiskReserveMB = file.DiskReserveMB
	}
	if _, ok := raw["pool_max"]; ok {
		c.PoolMax = file.PoolMax
	}
	if _, ok := raw["pool_memory_mb"]; ok {
		c.PoolMemoryMB = file.PoolMemoryMB
	}
	for k, v := range file.Sizes {
		c.Sizes[k] = v
	}
	for k, v := range file.Plans {
		c.Plans[k] = v
	}
	if len(file.Templates) > 0 {
		c.Templates = file.Templates
	}
	if n, ok := raw["network"].(map[string]any); ok {
		def := c.Network
		c.Network = file.Network
		if _, set := n["enabled"]; !set {
			c.Network.Enabled = def.Enabled
		}
		if c.Network.Range == "" {
			c.Network.Range = def.Range
		}
		if _, set := n["pool_size"]; !set {
			c.Network.PoolSize = def.PoolSize
		}
	}
	c.Registries = file.Registries
	c.InsecureRegistries = file.InsecureRegistries
	c.OperatorAccounts = file.OperatorAccounts
	if err := mergeServer(&c, file); err != nil {
		return c, err
	}
	return c, c.Validate()
}

// Validate checks internal consistency.
func (c Config) Validate() error {
	for name, s := range c.Sizes {
		if s.CPU <= 0 || s.MemoryMB < 64 {
			return fmt.Errorf("config: size %s needs cpu > 0 and memory_mb >= 64", name)
		}
		if s.DiskMB < 0 || (s.DiskMB > 0 && s.DiskMB < 64) {
			return fmt.Errorf("config: size %s: disk_mb must be >= 64 (or 0 for 4 × memory_mb)", name)
		}
	}
	for name, p := range c.Plans {
		for _, s := range p.AllowedSizes {
			if _, ok := c.Sizes[s]; !ok {
				return fmt.Errorf("config: plan %s allows unknown size %s", name, s)
			}
		}
		if p.UsageGBHoursIncluded < 0 || p.UsageCPUHoursIncluded < 0 {
			return fmt.Errorf("config: plan %s: usage_gb_hours_included and usage_cpu_hours_included must be >= 0 (0 means no cap)", name)
		}
		if p.RateLimit.RequestsPerSecond <= 0 || p.RateLimit.Burst <= 0 {
			return fmt.Errorf("config: plan %s needs a positive rate_limit", name)
		}
	}
	if c.PoolMax < 0 || c.PoolMemoryMB < 0 {
		return fmt.Errorf("config: pool_max and pool_memory_mb must be >= 0 (0: pools do not grow)")
	}
	if c.DiskReserveMB < 0 {
		return fmt.Errorf("config: disk_reserve_mb must be >= 0 (0: no reserve)")
	}
	if c.Region == "" {
		return fmt.Errorf("config: region must be set")
	}
	if err := c.Network.validate(); err != nil {
		return err
	}
	if err := c.validateServer(); err != nil {
		return err
	}
	if err := c.Snapshots.validate(); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, t := range c.Templates {
		if !templateNameRE.MatchString(t.Name) || strings.Contains(t.Name, "..") {
			return fmt.Errorf("config: template name %q: use lower-case letters, digits, '.', '_' and '-' (at most 63)", t.Name)
		}
		if seen[t.Name] {
			return fmt.Errorf("config: template %s is listed twice", t.Name)
		}
		seen[t.Name] = true
		if len(t.Sources) == 0 {
			return fmt.Errorf("config: template %s has no sources (give an image or a recipe)", t.Name)
		}
		for _, src := range t.Sources {
			if (src.Image == "") == (src.Recipe == "") {
				return fmt.Errorf("config: template %s: each source sets exactly one of image and recipe", t.Name)
			}
		}
	}
	return nil
}

// templateNameRE matches template.ValidName; config does not import the
// template package.
var templateNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// SizeNames lists sizes smallest first.
func (c Config) SizeNames() []string {
	out := make([]string, 0, len(c.Sizes))
	for k := range c.Sizes {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := c.Sizes[out[i]], c.Sizes[out[j]]
		if a.MemoryMB != b.MemoryMB {
			return a.MemoryMB < b.MemoryMB
		}
		return out[i] < out[j]
	})
	return out
}

// PlanNames lists plan names.
func (c Config) PlanNames() []string {
	out := make([]string, 0, len(c.Plans))
	for k := range c.Plans {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Template returns a catalog entry.
func (c Config) Template(name string) (Template, bool) {
	for _, t := range c.Templates {
		if t.Name == name {
			return t, true
		}
	}
	return Template{}, false
}

func (n Network) validate() error {
	if p, err := netip.ParsePrefix(n.Range); err != nil || !p.Addr().Is4() || p.Bits() > 28 {
		return fmt.Errorf("config: network.range %q must be an IPv4 CIDR of at least /28, e.g. 10.231.0.0/16", n.Range)
	}
	for _, c := range n.AllowPrivate {
		if _, err := netip.ParsePrefix(c); err != nil {
			return fmt.Errorf("config: network.allow_private %q is not a CIDR", c)
		}
	}
	for _, u := range n.Upstreams {
		if _, err := netip.ParseAddrPort(u); err != nil {
			return fmt.Errorf("config: network.upstreams %q must be ip:port, e.g. 192.0.2.53:53", u)
		}
	}
	if n.PoolSize < 0 {
		return fmt.Errorf("config: network.pool_size must be >= 0")
	}
	return nil
}

// AllowNames is the allow-list of restricted sandboxes, nil for the
// built-in default.
func (n Network) AllowNames(defaults []string) []string {
	base := n.Allow
	if len(base) == 0 {
		base = defaults
	}
	if len(n.AllowExtra) == 0 {
		return base
	}
	return append(slices.Clone(base), n.AllowExtra...)
}
