package netpolicy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"time"
)

// nft runs the nft command with a script on stdin. The nft binary (package
// nftables) is used rather than raw netlink because every change here is a
// handful of set elements in one atomic transaction, which nft -f gives us.
func nft(ctx context.Context, script string) error {
	cmd := exec.CommandContext(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if _, lerr := exec.LookPath("nft"); lerr != nil {
			return fmt.Errorf("netpolicy: the nft command is missing (install the Debian package nftables): %w", lerr)
		}
		return fmt.Errorf("netpolicy: nft: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// nftJSON runs nft -j with args and returns its output.
func nftJSON(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "nft", append([]string{"-j"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("netpolicy: nft %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// neverReachable are destinations no sandbox may reach in any mode, even
// when the operator allows private ranges: this host's loopback, link-local
// (cloud metadata at 169.254.169.254 lives there), "this network",
// multicast and reserved space.
var neverReachable = []string{
	"0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
}

// privateRanges are blocked unless the operator allows a part of them.
var privateRanges = []string{
	"10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16",
}

// dropReasons name the drop chains; each is also the log prefix that
// tells the drop log reader why a packet was refused.
var dropReasons = []string{"in6", "v6", "spoof", "host", "sibling", "never", "private", "policy", "in", "conns"}

// Limits the kernel enforces per sandbox.
const (
	logRate     = "20/second burst 40 packets" // drops logged per sandbox; the rest are dropped silently
	maxConns    = 2048                         // tracked connections per sandbox
	maxDNSConns = 16                           // TCP connections per sandbox to its resolver
	logRateKeep = "1m"
)

// tableScript is the whole orkestr table of one instance. Per-sandbox state
// lives only in sets keyed by the sandbox's host-side interface, so adding,
// changing or removing a sandbox is a few element updates.
//
// Every rule is scoped to this instance's interfaces (@ifaces): other
// traffic of the host passes untouched, and other instances' tables (tests,
// a second server) handle their own sandboxes.
func tableScript(table string, group uint16, sandboxRange netip.Prefix, allowPrivate []netip.Prefix) string {
	never := append([]string{sandboxRange.String()}, neverReachable...)
	allowed := make([]string, 0, len(allowPrivate))
	for _, p := range allowPrivate {
		allowed = append(allowed, p.String())
	}
	elems := func(l []string) string {
		if len(l) == 0 {
			return ""
		}
		return "elements = { " + strings.Join(l, ", ") + " }; "
	}
	var drops strings.Builder
	for _, r := range dropReasons {
		// A flood of refused packets costs one log message per packet:
		// the rate of logged drops is capped per sandbox.
		fmt.Fprintf(&drops, `	chain drop_%[1]s {
		update @lograte { iifname limit rate %[2]s } log group %[3]d prefix "%[1]s"
		drop
	}
`, r, logRate, group)
	}
	return fmt.Sprintf(`table inet %[1]s {
	set ifaces { type ifname; }
	set open { type ifname; }
	set addrs { type ifname . ipv4_addr; }
	set gateways { type ifname . ipv4_addr; }
	set allowed { type ifname . ipv4_addr; flags timeout; }
	set never4 { type ipv4_addr; flags interval; auto-merge; %[3]s}
	set private4 { type ipv4_addr; flags interval; auto-merge; %[4]s}
	set private_ok4 { type ipv4_addr; flags interval; auto-merge; %[5]s}
	set lograte { type ifname; flags dynamic,timeout; timeout %[7]s; }
	set conns { type ifname; flags dynamic; }
	set dnsconns { type ifname; flags dynamic; }

%[6]s
	chain input {
		type filter hook input priority filter; policy accept;
		iifname @ifaces jump sandbox_in
	}
	chain sandbox_in {
		meta nfproto ipv6 goto drop_in6
		iifname . ip saddr != @addrs goto drop_spoof
		iifname . ip daddr @gateways udp dport 53 accept
		iifname . ip daddr @gateways tcp dport 53 ct state new add @dnsconns { iifname ct count over %[8]d } goto drop_conns
		iifname . ip daddr @gateways tcp dport 53 accept
		iifname . ip daddr @gateways ct state established,related accept
		goto drop_host
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname @ifaces jump sandbox_out
		oifname @ifaces ct state established,related accept
		oifname @ifaces goto drop_in
	}
	chain sandbox_out {
		meta nfproto ipv6 goto drop_v6
		iifname . ip saddr != @addrs goto drop_spoof
		oifname @ifaces goto drop_sibling
		ip daddr @never4 goto drop_never
		ip daddr @private4 ip daddr != @private_ok4 goto drop_private
		ct state established,related accept
		ct state new add @conns { iifname ct count over %[2]d } goto drop_conns
		iifname @open accept
		iifname . ip daddr @allowed accept
		goto drop_policy
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		iifname @ifaces oifname != @ifaces masquerade
	}
}
`, table, maxConns, elems(never), elems(privateRanges), elems(allowed), drops.String(), logRateKeep, maxDNSConns)
}

// setElement is one element of a concatenated ifname . ipv4 set as nft -j
// lists it.
type setElement struct {
	Iface   string
	Addr    netip.Addr
	Expires time.Duration
}

// listAllowed returns the elements of table's allowed set.
func listAllowed(ctx context.Context, table string) ([]setElement, error) {
	out, err := nftJSON(ctx, "list", "set", "inet", table, "allowed")
	if err != nil {
		return nil, err
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("netpolicy: parse nft set listing: %w", err)
	}
	var res []setElement
	for _, obj := range doc.Nftables {
		raw, ok := obj["set"]
		if !ok {
			continue
		}
		var set struct {
			Elem []json.RawMessage `json:"elem"`
		}
		if err := json.Unmarshal(raw, &set); err != nil {
			return nil, err
		}
		for _, e := range set.Elem {
			// Either {"concat": [...]} or {"elem": {"val": {"concat": [...]}, "expires": n}}.
			var wrapped struct {
				Elem *struct {
					Val     json.RawMessage `json:"val"`
					Expires int64           `json:"expires"`
				} `json:"elem"`
			}
			val := e
			var expires time.Duration
			if json.Unmarshal(e, &wrapped) == nil && wrapped.Elem != nil {
				val = wrapped.Elem.Val
				expires = time.Duration(wrapped.Elem.Expires) * time.Second
			}
			var c struct {
				Concat []string `json:"concat"`
			}
			if err := json.Unmarshal(val, &c); err != nil || len(c.Concat) != 2 {
				continue
			}
			a, err := netip.ParseAddr(c.Concat[1])
			if err != nil {
				continue
			}
			res = append(res, setElement{Iface: c.Concat[0], Addr: a, Expires: expires})
		}
	}
	return res, nil
}

// quote makes an nft string literal of an interface name (ours are
// [a-z0-9] only; the quotes keep nft from reading them as keywords).
func quote(s string) string { return `"` + s + `"` }
