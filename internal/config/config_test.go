package config

import (
	"os"
	"path/filepath"
	"testing"
)

func load(t *testing.T, yaml string) (Config, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return Load(p)
}

func TestNetworkSection(t *testing.T) {
	c, err := load(t, "region: fsn1\n")
	if err != nil || !c.Network.Enabled || c.Network.Range != "10.231.0.0/16" || c.Network.PoolSize != 1 {
		t.Fatalf("defaults: %+v %v", c.Network, err)
	}
	c, err = load(t, "network:\n  allow_extra: [pkg.example.org]\n")
	if err != nil || !c.Network.Enabled || c.Network.Range != "10.231.0.0/16" || c.Network.PoolSize != 1 {
		t.Fatalf("a partial section keeps the defaults: %+v %v", c.Network, err)
	}
	if got := c.Network.AllowNames([]string{"pypi.org"}); len(got) != 2 || got[1] != "pkg.example.org" {
		t.Errorf("allow_extra: %v", got)
	}
	c, err = load(t, "network:\n  enabled: false\n  pool_size: 0\n  allow: [a.example]\n")
	if err != nil || c.Network.Enabled || c.Network.PoolSize != 0 {
		t.Fatalf("explicit values: %+v %v", c.Network, err)
	}
	if got := c.Network.AllowNames([]string{"pypi.org"}); len(got) != 1 || got[0] != "a.example" {
		t.Errorf("allow replaces the default: %v", got)
	}
	for _, bad := range []string{
		"network:\n  range: 10.0.0.0/30\n",
		"network:\n  range: fd00::/64\n",
		"network:\n  range: nonsense\n",
		"network:\n  allow_private: [10.1.2.3]\n",
		"network:\n  upstreams: [dns.example:53]\n",
		"network:\n  pool_size: -1\n",
	} {
		if _, err := load(t, bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestOperatorAccounts(t *testing.T) {
	c, err := load(t, "region: fsn1\n")
	if err != nil || len(c.OperatorAccounts) != 0 || c.IsOperator("acc_1", "default") {
		t.Fatalf("default: nobody is an operator: %v %v", c.OperatorAccounts, err)
	}
	c, err = load(t, "operator_accounts: [default, acc_2]\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []struct {
		id, name string
		want     bool
	}{{"acc_1", "default", true}, {"acc_2", "ops", true}, {"acc_3", "customer", false}, {"", "", false}} {
		if got := c.IsOperator(a.id, a.name); got != a.want {
			t.Errorf("IsOperator(%q, %q) = %v, want %v", a.id, a.name, got, a.want)
		}
	}
}
