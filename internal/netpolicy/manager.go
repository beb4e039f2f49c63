// Package netpolicy gives networked sandboxes their network and enforces
// its policy in the host kernel: a network namespace and veth pair per
// sandbox, one nftables table per orkestr instance whose sets say what each
// sandbox may reach, a DNS resolver per sandbox that answers only allowed
// names (and, in restricted mode, opens exactly the addresses it returned),
// and a reader of the kernel's drop log that records refused connections
// per sandbox.
package netpolicy

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
)

// Mode is a sandbox's network policy.
type Mode string

const (
	ModeOff        Mode = "off"        // no interface but loopback (no attachment at all)
	ModeDeny       Mode = "deny"       // attached but nothing allowed: a pooled, unclaimed sandbox
	ModeRestricted Mode = "restricted" // only addresses of allowed names
	ModeOpen       Mode = "open"       // the public internet through NAT
)

// ParseMode accepts the API's names.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case ModeOff, ModeRestricted, ModeOpen:
		return Mode(s), nil
	}
	return "", fmt.Errorf("network must be one of \"off\", \"restricted\", \"open\"")
}

// DefaultAllowNames is the operator default for restricted sandboxes: the
// common package registries and source hosts.
var DefaultAllowNames = []string{
	"pypi.org", "files.pythonhosted.org",
	"registry.npmjs.org", "registry.yarnpkg.com",
	"crates.io", "static.crates.io", "index.crates.io",
	"proxy.golang.org", "sum.golang.org",
	"deb.debian.org", "security.debian.org",
	"archive.ubuntu.com", "security.ubuntu.com",
	"github.com", "codeload.github.com", "*.githubusercontent.com",
}

// DefaultRange is where sandbox /30s come from unless configured.
var DefaultRange = netip.MustParsePrefix("10.231.0.0/16")

// Config configures a Manager.
type Config struct {
	// Instance names this server's table, namespaces and interfaces'
	// aliases, so that several servers (or test runs) on one host never
	// touch each other's state. Letters and digits only.
	Instance     string
	Range        netip.Prefix   // sandbox addresses; must not overlap the host's networks
	AllowNames   []string       // names restricted sandboxes may resolve (nil: DefaultAllowNames)
	AllowPrivate []netip.Prefix // private destinations the operator opens to networked sandboxes
	Upstreams    []string       // DNS servers host:port (nil: the host's /etc/resolv.conf)
	LogGroup     uint16         // nflog group of the drop log (0: derived from Instance)
	Log          *slog.Logger
}

// Attachment is the network of one sandbox, recorded with it so that a
// restarted server can adopt or remove it.
type Attachment struct {
	Sandbox     string     `json:"sandbox"`
	Slot        int        `json:"slot"`
	Iface       string     `json:"iface"`
	Netns       string     `json:"netns"`
	HostAddr    netip.Addr `json:"host_addr"`
	SandboxAddr netip.Addr `json:"sandbox_addr"`
	Mode        Mode       `json:"mode"`
	Allow       []string   `json:"allow,omitempty"` // names added to the operator's list for this sandbox
}

// NetnsPath is the namespace's path for the OCI spec.
func (a Attachment) NetnsPath() string { return filepath.Join(netnsDir, a.Netns) }

// ResolvConf is the sandbox's /etc/resolv.conf: its own resolver only.
func (a Attachment) ResolvConf() []byte {
	return []byte("nameserver " + a.HostAddr.String() + "\noptions attempts:2 timeout:2\n")
}

// Blocked is one refused connection or DNS name of a sandbox; repeats of
// it moments apart (retransmissions, retries) are folded into it.
type Blocked struct {
	Time   time.Time // first seen
	Last   time.Time // last seen
	Count  int
	Host   string // the name when the sandbox's resolver knows it, else the address
	Port   int    // 0 for a refused DNS name: nothing was connected
	Reason string // dns, rate (DNS refusals); host, sibling, private, never, policy, spoof, conns, v6, in6 (drops)
}

// maxEvents per sandbox are kept for exec results; older ones fall off.
const maxEvents = 512

// dedupe folds retransmissions of one refused connection into one event.
const dedupe = 3 * time.Second

type attached struct {
	Attachment
	ifindex  int
	resolver *resolver

	mu       sync.Mutex
	allowed  allowList
	events   []Blocked
	names    map[netip.Addr]string // resolved address → name, for reports
	wildSeen map[string]bool
}

func (a *attached) policy() (Mode, allowList) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.Mode, a.allowed
}

// noteWildcard admits a name matched by a * entry unless the sandbox has
// used up its budget of distinct such names (tunnelling through a
// wildcard needs many distinct names).
func (a *attached) noteWildcard(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.wildSeen[name] {
		return true
	}
	if len(a.wildSeen) >= maxWildcardNames {
		return false
	}
	a.wildSeen[name] = true
	return true
}

func (a *attached) noteNames(addrs []netip.Addr, name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.names) > 4096 {
		a.names = map[netip.Addr]string{}
	}
	for _, ip := range addrs {
		a.names[ip] = name
	}
}

// Manager owns the networking of one orkestr instance's sandboxes.
type Manager struct {
	cfg    Config
	table  string
	alias  string // prefix of our interfaces' aliases
	nsPre  string // prefix of our namespaces' names
	log    *slog.Logger
	global allowList

	mu      sync.Mutex
	started bool
	up      bool // table, forwarding and drop log are in place
	byID    map[string]*attached
	byIndex map[int]*attached
	nflog   *nflog
	nftMu   sync.Mutex        // serialises slot allocation
	tearing map[string]bool   // interfaces being detached; their slots are not free yet
	counts  map[string]uint64 // refused connections and names by reason, since start
	fast    *fastSets
}

// New checks cfg; nothing on the host changes until Start.
func New(cfg Config) (*Manager, error) {
	if cfg.Instance == "" || strings.Trim(cfg.Instance, "abcdefghijklmnopqrstuvwxyz0123456789") != "" || len(cfg.Instance) > 16 {
		return nil, fmt.Errorf("netpolicy: instance %q must be 1-16 lower-case letters and digits", cfg.Instance)
	}
	if !cfg.Range.IsValid() {
		cfg.Range = DefaultRange
	}
	if !cfg.Range.Addr().Is4() || cfg.Range.Bits() > 28 {
		return nil, fmt.Errorf("netpolicy: sandbox range %s must be IPv4 and at least a /28", cfg.Range)
	}
	cfg.Range = cfg.Range.Masked()
	for _, p := range cfg.AllowPrivate {
		if !p.Addr().Is4() || p.Overlaps(cfg.Range) {
			return nil, fmt.Errorf("netpolicy: allowed private range %s must be IPv4 and outside the sandbox range %s", p, cfg.Range)
		}
		for _, n := range neverReachable {
			if p.Overlaps(netip.MustParsePrefix(n)) {
				return nil, fmt.Errorf("netpolicy: %s overlaps %s, which sandboxes can never reach", p, n)
			}
		}
	}
	if cfg.AllowNames == nil {
		cfg.AllowNames = DefaultAllowNames
	}
	global, err := newAllowList(cfg.AllowNames)
	if err != nil {
		return nil, err
	}
	if cfg.Upstreams == nil {
		cfg.Upstreams = systemUpstreams("/etc/resolv.conf")
	}
	if cfg.LogGroup == 0 {
		h := sha256.Sum256([]byte(cfg.Instance))
		cfg.LogGroup = 1024 + binary.BigEndian.Uint16(h[:2])%60000
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Manager{
		cfg: cfg, table: "orkestr-" + cfg.Instance, alias: "orkestr:" + cfg.Instance + ":",
		nsPre: "ork-" + cfg.Instance + "-", log: cfg.Log, global: global,
		byID: map[string]*attached{}, byIndex: map[int]*attached{}, tearing: map[string]bool{}, counts: map[string]uint64{},
		fast: &fastSets{table: "orkestr-" + cfg.Instance},
	}, nil
}

// Table is the name of this instance's nftables table (family inet).
func (m *Manager) Table() string { return m.table }

// ValidateNames checks per-sandbox allow-list additions.
func ValidateNames(names []string) error {
	_, err := newAllowList(names)
	return err
}

// Start runs once before any Attach, after a crash or a clean stop: it
// removes every namespace and interface of this instance not in keep,
// rebuilds this instance's nftables table, and takes over the ones in keep
// (their resolvers start again; addresses they were allowed stay allowed).
// It returns what it removed. A server with no networked sandbox leaves
// the host untouched: the table, IPv4 forwarding and the drop log are set
// up with the first attachment.
func (m *Manager) Start(ctx context.Context, keep []Attachment) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started {
		return nil, errors.New("netpolicy: already started")
	}
	var removed []string
	var errs []error
	kept := map[string]Attachment{}
	for _, a := range keep {
		kept[a.Sandbox] = a
	}
	keptIface := map[string]bool{}
	for _, a := range keep {
		keptIface[a.Iface] = true
	}
	// Allowed addresses of kept sandboxes survive the table rebuild.
	var carry []setElement
	if els, err := listAllowed(ctx, m.table); err == nil {
		for _, e := range els {
			if keptIface[e.Iface] {
				carry = append(carry, e)
			}
		}
	}
	links, err := hostLinks(m.alias)
	if err != nil {
		return nil, err
	}
	for name, alias := range links {
		id := strings.TrimPrefix(alias, m.alias)
		if a, ok := kept[id]; ok && a.Iface == name {
			continue
		}
		sandboxAddrs := linkPeerAddrs(name)
		if err := deleteLink(name); err != nil {
			errs = append(errs, err)
		}
		for _, ip := range sandboxAddrs {
			flushConntrack(ip)
		}
		removed = append(removed, "veth:"+name)
	}
	ents, _ := os.ReadDir(netnsDir)
	for _, e := range ents {
		id, ok := strings.CutPrefix(e.Name(), m.nsPre)
		if !ok {
			continue
		}
		if a, ok := kept[id]; ok && a.Netns == e.Name() {
			continue
		}
		if err := deleteNetns(e.Name()); err != nil {
			errs = append(errs, err)
		}
		removed = append(removed, "netns:"+e.Name())
	}
	if _, err := nftJSON(ctx, "list", "table", "inet", m.table); err == nil {
		if err := nft(ctx, fmt.Sprintf("delete table inet %s\n", m.table)); err != nil {
			return removed, err
		}
		if len(keep) == 0 {
			removed = append(removed, "nft:inet "+m.table)
		}
	}
	m.started = true
	if len(keep) > 0 {
		if err := m.bringUp(ctx); err != nil {
			return removed, err
		}
	}
	for _, a := range keep {
		if err := m.adopt(ctx, a, carry); err != nil {
			errs = append(errs, fmt.Errorf("netpolicy: take over %s: %w", a.Sandbox, err))
		}
	}
	return removed, errors.Join(errs...)
}

// bringUp creates the table, turns on forwarding and opens the drop log;
// m.mu is held.
func (m *Manager) bringUp(ctx context.Context) error {
	if m.up {
		return nil
	}
	script := fmt.Sprintf("table inet %s\ndelete table inet %s\n", m.table, m.table) +
		tableScript(m.table, m.cfg.LogGroup, m.cfg.Range, m.cfg.AllowPrivate)
	if err := nft(ctx, script); err != nil {
		return err
	}
	m.fast.reset()
	if err := enableForwarding(); err != nil {
		return err
	}
	l, err := openNflog(m.cfg.LogGroup)
	if err != nil {
		_ = nft(ctx, fmt.Sprintf("delete table inet %s\n", m.table))
		return err
	}
	m.nflog = l
	go l.run(m.onDrop)
	m.up = true
	return nil
}

func (m *Manager) adopt(ctx context.Context, a Attachment, carry []setElement) error {
	link, err := netlink.LinkByName(a.Iface)
	if err != nil {
		return err
	}
	at, err := m.newAttached(a, link.Attrs().Index)
	if err != nil {
		return err
	}
	var b strings.Builder
	m.baseElements(&b, "add", at)
	for _, e := range carry {
		if e.Iface == a.Iface && e.Expires > time.Second {
			fmt.Fprintf(&b, "add element inet %s allowed { %s . %s timeout %ds }\n", m.table, quote(e.Iface), e.Addr, int(e.Expires.Seconds()))
		}
	}
	if err := nft(ctx, b.String()); err != nil {
		return err
	}
	if err := m.startResolver(at); err != nil {
		return err
	}
	m.byID[a.Sandbox] = at
	m.byIndex[at.ifindex] = at
	return nil
}

func (m *Manager) newAttached(a Attachment, ifindex int) (*attached, error) {
	al, err := newAllowList(a.Allow)
	if err != nil {
		return nil, err
	}
	merged := allowList{exact: map[string]bool{}}
	for k := range m.global.exact {
		merged.exact[k] = true
	}
	for k := range al.exact {
		merged.exact[k] = true
	}
	merged.suffixes = append(slices.Clone(m.global.suffixes), al.suffixes...)
	return &attached{Attachment: a, ifindex: ifindex, allowed: merged, names: map[netip.Addr]string{}, wildSeen: map[string]bool{}}, nil
}

// baseElements writes the set elements of a's policy.
func (m *Manager) baseElements(b *strings.Builder, verb string, a *attached) {
	fmt.Fprintf(b, "%s element inet %s ifaces { %s }\n", verb, m.table, quote(a.Iface))
	fmt.Fprintf(b, "%s element inet %s addrs { %s . %s }\n", verb, m.table, quote(a.Iface), a.SandboxAddr)
	fmt.Fprintf(b, "%s element inet %s gateways { %s . %s }\n", verb, m.table, quote(a.Iface), a.HostAddr)
	if a.Mode == ModeOpen {
		fmt.Fprintf(b, "%s element inet %s open { %s }\n", verb, m.table, quote(a.Iface))
	}
}

// Attach makes the network of a new sandbox with nothing allowed (mode
// deny); SetPolicy opens it. The namespace is ready for runsc when it
// returns.
func (m *Manager) Attach(ctx context.Context, sandbox string) (_ Attachment, err error) {
	m.mu.Lock()
	if !m.started {
		m.mu.Unlock()
		return Attachment{}, errors.New("netpolicy: not started")
	}
	err = m.bringUp(ctx)
	m.mu.Unlock()
	if err != nil {
		return Attachment{}, err
	}
	a := Attachment{Sandbox: sandbox, Netns: m.nsPre + sandbox, Mode: ModeDeny}
	if err := createNetns(a.Netns); err != nil {
		return a, err
	}
	defer func() {
		if err != nil {
			_ = deleteNetns(a.Netns)
		}
	}()
	m.nftMu.Lock()
	n := slots(m.cfg.Range)
	for slot := 0; slot < n; slot++ {
		host, sb, ok := slotAddrs(m.cfg.Range, slot)
		if !ok {
			break
		}
		name := ifName(slot)
		if m.tearing[name] {
			continue
		}
		if _, lerr := netlink.LinkByName(name); lerr == nil {
			continue
		}
		err = setupLink(a.Netns, name, m.alias+sandbox, host, sb)
		if err != nil {
			_ = deleteLink(name)
			if errors.Is(err, os.ErrExist) || strings.Contains(err.Error(), "exists") {
				continue
			}
			m.nftMu.Unlock()
			return a, err
		}
		a.Slot, a.Iface, a.HostAddr, a.SandboxAddr = slot, name, host, sb
		break
	}
	m.nftMu.Unlock()
	if a.Iface == "" {
		return a, fmt.Errorf("netpolicy: no free address block in %s (%d sandboxes at most); configure a larger range", m.cfg.Range, n)
	}
	defer func() {
		if err != nil {
			_ = deleteLink(a.Iface)
		}
	}()
	link, err := netlink.LinkByName(a.Iface)
	if err != nil {
		return a, err
	}
	at, err := m.newAttached(a, link.Attrs().Index)
	if err != nil {
		return a, err
	}
	var b strings.Builder
	m.baseElements(&b, "add", at)
	if err := nft(ctx, b.String()); err != nil {
		return a, err
	}
	if err := m.startResolver(at); err != nil {
		b.Reset()
		m.baseElements(&b, "delete", at)
		_ = nft(context.WithoutCancel(ctx), b.String())
		return a, err
	}
	m.mu.Lock()
	m.byID[sandbox] = at
	m.byIndex[at.ifindex] = at
	m.mu.Unlock()
	return a, nil
}

// SetPolicy changes an attached sandbox's mode and its own additions to
// the allow-list. Off is not a mode of an attached sandbox.
func (m *Manager) SetPolicy(ctx context.Context, sandbox string, mode Mode, allow []string) (Attachment, error) {
	if mode != ModeDeny && mode != ModeRestricted && mode != ModeOpen {
		return Attachment{}, fmt.Errorf("netpolicy: mode %q cannot be set on an attached sandbox", mode)
	}
	m.mu.Lock()
	at, ok := m.byID[sandbox]
	m.mu.Unlock()
	if !ok {
		return Attachment{}, fmt.Errorf("netpolicy: sandbox %s has no network attachment", sandbox)
	}
	fresh, err := m.newAttached(Attachment{Allow: allow}, 0)
	if err != nil {
		return Attachment{}, err
	}
	at.mu.Lock()
	old := at.Mode
	at.mu.Unlock()
	if (mode == ModeOpen) != (old == ModeOpen) {
		if err := m.fast.setOpen(at.Iface, mode == ModeOpen); err != nil {
			return Attachment{}, err
		}
	}
	at.mu.Lock()
	at.Mode, at.Allow, at.allowed = mode, slices.Clone(allow), fresh.allowed
	a := at.Attachment
	at.mu.Unlock()
	return a, nil
}

// Detach removes a sandbox's network: resolver, set elements, interface
// and namespace. It is idempotent and works from the recorded attachment
// alone, for sandboxes this process never attached.
func (m *Manager) Detach(ctx context.Context, a Attachment) error {
	m.mu.Lock()
	at, ok := m.byID[a.Sandbox]
	if ok {
		delete(m.byID, a.Sandbox)
		delete(m.byIndex, at.ifindex)
	}
	m.mu.Unlock()
	if ok {
		at.resolver.stop()
	}
	var errs []error
	if a.Iface != "" {
		// The interface goes first: nothing can be sent after that. The
		// slot is not handed out again before its conntrack entries and
		// set elements are gone too; other attaches go on meanwhile.
		m.nftMu.Lock()
		m.tearing[a.Iface] = true
		m.nftMu.Unlock()
		defer func() {
			m.nftMu.Lock()
			delete(m.tearing, a.Iface)
			m.nftMu.Unlock()
		}()
		if err := deleteLink(a.Iface); err != nil {
			errs = append(errs, err)
		}
		// Connections tracked for this address must not count as
		// established for the next sandbox that gets it: a packet
		// matching one would skip the policy.
		if a.SandboxAddr.IsValid() {
			flushConntrack(a.SandboxAddr)
		}
		m.mu.Lock()
		up := m.up
		m.mu.Unlock()
		// Without the table there are no elements to remove.
		if up {
			errs = append(errs, m.flushElements(ctx, a))
		}
	}
	if a.Netns != "" {
		errs = append(errs, deleteNetns(a.Netns))
	}
	return errors.Join(errs...)
}

// flushElements deletes every set element of a's interface in one
// transaction. Each element is added before it is deleted: adding an
// existing element is a no-op and deleting a missing one would fail the
// whole transaction.
func (m *Manager) flushElements(ctx context.Context, a Attachment) error {
	els, err := listAllowed(ctx, m.table)
	if err != nil {
		return err
	}
	var b strings.Builder
	for _, e := range els {
		if e.Iface == a.Iface {
			fmt.Fprintf(&b, "delete element inet %s allowed { %s . %s }\n", m.table, quote(e.Iface), e.Addr)
		}
	}
	for _, el := range []string{
		fmt.Sprintf("ifaces { %s }", quote(a.Iface)),
		fmt.Sprintf("open { %s }", quote(a.Iface)),
		fmt.Sprintf("addrs { %s . %s }", quote(a.Iface), a.SandboxAddr),
		fmt.Sprintf("gateways { %s . %s }", quote(a.Iface), a.HostAddr),
		fmt.Sprintf("lograte { %s }", quote(a.Iface)),
		fmt.Sprintf("conns { %s }", quote(a.Iface)),
		fmt.Sprintf("dnsconns { %s }", quote(a.Iface)),
	} {
		fmt.Fprintf(&b, "add element inet %s %s\ndelete element inet %s %s\n", m.table, el, m.table, el)
	}
	return nft(ctx, b.String())
}

// allow adds addresses to a restricted sandbox's allow set.
func (m *Manager) allow(a *attached, addrs []netip.Addr, ttl time.Duration) error {
	ttl = min(max(ttl, minAllowTTL*time.Second), maxAllowTTL*time.Second)
	return m.fast.allow(a.Iface, addrs, ttl)
}

// onDrop records one packet of the drop log.
func (m *Manager) onDrop(ev dropEvent) {
	m.mu.Lock()
	a, ok := m.byIndex[ev.InDev]
	m.mu.Unlock()
	if !ok {
		return
	}
	a.mu.Lock()
	host := ev.Dst.String()
	if n, ok := a.names[ev.Dst]; ok {
		host = n
	}
	a.mu.Unlock()
	if m.record(a, Blocked{Time: ev.Time.UTC(), Host: host, Port: int(ev.DPort), Reason: ev.Prefix}) {
		m.log.Info("network connection blocked", "audit", true, "sandbox", a.Sandbox, "host", host,
			"addr", ev.Dst.String(), "port", ev.DPort, "proto", ev.Proto, "reason", ev.Prefix)
	}
}

func (m *Manager) recordDNS(a *attached, name, reason string) {
	if m.record(a, Blocked{Time: time.Now().UTC(), Host: name, Port: 0, Reason: reason}) {
		m.log.Info("DNS name refused", "audit", true, "sandbox", a.Sandbox, "name", name, "reason", reason)
	}
}

// record keeps b, or folds it into the same event seen moments ago; it
// says whether b was new.
func (m *Manager) record(a *attached, b Blocked) bool {
	m.mu.Lock()
	m.counts[b.Reason]++
	m.mu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	b.Last, b.Count = b.Time, 1
	for i := len(a.events) - 1; i >= 0; i-- {
		e := &a.events[i]
		if b.Time.Sub(e.Last) > dedupe {
			continue
		}
		if e.Host == b.Host && e.Port == b.Port && e.Reason == b.Reason {
			e.Last = b.Time
			e.Count++
			return false
		}
	}
	if len(a.events) >= maxEvents {
		a.events = slices.Delete(a.events, 0, len(a.events)-maxEvents+1)
	}
	a.events = append(a.events, b)
	return true
}

// BlockedCounts returns how many refused packets (as logged: the kernel
// caps the log rate per sandbox) and DNS names were recorded since start,
// by reason.
func (m *Manager) BlockedCounts() map[string]uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]uint64, len(m.counts))
	for k, v := range m.counts {
		out[k] = v
	}
	return out
}

// Blocked returns what sandbox was refused between since and until.
func (m *Manager) Blocked(sandbox string, since, until time.Time) []Blocked {
	m.mu.Lock()
	a, ok := m.byID[sandbox]
	m.mu.Unlock()
	if !ok {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Blocked
	for _, e := range a.events {
		if !e.Last.Before(since) && !e.Time.After(until) {
			out = append(out, e)
		}
	}
	return out
}

// Get returns the current attachment of sandbox.
func (m *Manager) Get(sandbox string) (Attachment, bool) {
	m.mu.Lock()
	at, ok := m.byID[sandbox]
	m.mu.Unlock()
	if !ok {
		return Attachment{}, false
	}
	at.mu.Lock()
	defer at.mu.Unlock()
	return at.Attachment, true
}

// Close stops the resolvers and the drop log reader. Kernel state stays
// for the next process to take over; with destroy set, every attachment
// and the table go as well.
func (m *Manager) Close(ctx context.Context, destroy bool) error {
	m.mu.Lock()
	all := make([]*attached, 0, len(m.byID))
	for _, a := range m.byID {
		all = append(all, a)
	}
	l := m.nflog
	m.nflog = nil
	up := m.up
	m.mu.Unlock()
	var errs []error
	for _, a := range all {
		if destroy {
			errs = append(errs, m.Detach(ctx, a.Attachment))
		} else {
			a.resolver.stop()
		}
	}
	if l != nil {
		l.close()
	}
	if destroy && up {
		errs = append(errs, nft(ctx, fmt.Sprintf("table inet %s\ndelete table inet %s\n", m.table, m.table)))
	}
	m.mu.Lock()
	if destroy {
		m.up = false
	}
	m.mu.Unlock()
	return errors.Join(errs...)
}

// Leftovers lists what of instance exists on this host: namespaces,
// interfaces and its nftables table. Tests use it to prove cleanup.
func Leftovers(instance string) []string {
	var out []string
	ents, _ := os.ReadDir(netnsDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "ork-"+instance+"-") {
			out = append(out, "netns:"+e.Name())
		}
	}
	links, _ := hostLinks("orkestr:" + instance + ":")
	for name := range links {
		out = append(out, "veth:"+name)
	}
	if _, err := nftJSON(context.Background(), "list", "table", "inet", "orkestr-"+instance); err == nil {
		out = append(out, "nft:inet orkestr-"+instance)
	}
	return out
}

// Cleanup removes all network state of instance from this host (what
// Start with nothing kept removes), for tools and tests that clean up
// after a server that cannot.
func Cleanup(ctx context.Context, instance string) error {
	m, err := New(Config{Instance: instance, Upstreams: []string{}})
	if err != nil {
		return err
	}
	_, err = m.Start(ctx, nil)
	return err
}
