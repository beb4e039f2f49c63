package netpolicy_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/orkestr-eu/orkestr/internal/netpolicy"
	"github.com/orkestr-eu/orkestr/internal/netpolicy/nettest"
)

const dialTimeout = 700 * time.Millisecond

func instance() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "t" + hex.EncodeToString(b)
}

func newManager(t *testing.T, in *nettest.Internet, inst string) *netpolicy.Manager {
	t.Helper()
	m, err := netpolicy.New(netpolicy.Config{
		Instance: inst, Range: netip.MustParsePrefix("10.231.0.0/16"),
		AllowNames: []string{"allowed.test", "*.allowed.test"},
		Upstreams:  []string{in.DNS},
		Log:        slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Start(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(context.Background(), true); err != nil {
			t.Errorf("close: %v", err)
		}
		assertNoState(t, inst)
	})
	return m
}

// assertNoState fails if anything of instance inst is left on the host.
func assertNoState(t *testing.T, inst string) {
	t.Helper()
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "ork-"+inst+"-") {
			t.Errorf("network namespace %s left behind", e.Name())
		}
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Alias, "orkestr:"+inst+":") {
			t.Errorf("interface %s left behind", l.Attrs().Name)
		}
	}
	if out, err := exec("nft", "list", "table", "inet", "orkestr-"+inst); err == nil {
		t.Errorf("nft table left behind: %s", out)
	}
}

func attach(t *testing.T, m *netpolicy.Manager, id string, mode netpolicy.Mode) netpolicy.Attachment {
	t.Helper()
	a, err := m.Attach(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if mode != netpolicy.ModeDeny {
		if a, err = m.SetPolicy(context.Background(), id, mode, nil); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

func target(a netip.Addr) string { return fmt.Sprintf("%s:%d", a, nettest.Port) }

// hostAddrs are this host's own IPv4 addresses outside loopback.
func hostAddrs(t *testing.T) []string {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if !a.IP.IsLoopback() {
			out = append(out, a.IP.String())
		}
	}
	return out
}

func mustReach(t *testing.T, a netpolicy.Attachment, addr string) {
	t.Helper()
	got, err := nettest.Dial(a.NetnsPath(), addr, 3*time.Second)
	if err != nil || !strings.HasPrefix(got, "hello") {
		t.Errorf("%s (%s) should reach %s: %q %v", a.Sandbox, a.Mode, addr, got, err)
	}
}

func mustNotReach(t *testing.T, a netpolicy.Attachment, addr string) {
	t.Helper()
	got, err := nettest.Dial(a.NetnsPath(), addr, dialTimeout)
	if err == nil {
		t.Errorf("%s (%s) reached %s: %q", a.Sandbox, a.Mode, addr, got)
	}
}

func lookupA(t *testing.T, a netpolicy.Attachment, name string, qtype uint16) *dns.Msg {
	t.Helper()
	resp, err := nettest.Resolve(a.NetnsPath(), netip.AddrPortFrom(a.HostAddr, 53).String(), name, qtype)
	if err != nil {
		t.Fatalf("resolve %s from %s: %v", name, a.Sandbox, err)
	}
	return resp
}

func TestModes(t *testing.T) {
	in := nettest.Start(t)
	m := newManager(t, in, instance())
	apiPort := nettest.HostListener(t)
	deny := attach(t, m, "sbdeny", netpolicy.ModeDeny)
	open := attach(t, m, "sbopen", netpolicy.ModeOpen)
	restr := attach(t, m, "sbrestr", netpolicy.ModeRestricted)
	all := []netpolicy.Attachment{deny, open, restr}

	// Never reachable in any mode: the host on every address and port
	// (including the gateway, where only DNS is answered), siblings,
	// metadata and private ranges.
	never := []string{
		target(nettest.Metadata), target(nettest.Private),
		fmt.Sprintf("%s:%d", deny.HostAddr, apiPort), fmt.Sprintf("%s:%d", open.HostAddr, apiPort),
		fmt.Sprintf("%s:22", restr.HostAddr),
	}
	for _, h := range hostAddrs(t) {
		never = append(never, fmt.Sprintf("%s:%d", h, apiPort))
	}
	for _, a := range all {
		for _, dst := range never {
			mustNotReach(t, a, dst)
		}
		for _, sib := range all {
			if sib.Sandbox != a.Sandbox {
				mustNotReach(t, a, fmt.Sprintf("%s:%d", sib.SandboxAddr, 80))
			}
		}
		// 127.0.0.1 inside a namespace is the sandbox's own loopback;
		// the host's API is not there.
		mustNotReach(t, a, fmt.Sprintf("127.0.0.1:%d", apiPort))
	}

	// A sibling's resolver is the host too: unreachable.
	if _, err := nettest.Resolve(restr.NetnsPath(), netip.AddrPortFrom(open.HostAddr, 53).String(), "forbidden.test", dns.TypeA); err == nil {
		t.Errorf("restricted sandbox used its sibling's (open) resolver")
	}

	// deny: nothing at all, and its resolver answers nothing.
	mustNotReach(t, deny, target(nettest.Allowed))
	mustNotReach(t, deny, target(nettest.Forbidden))
	if r := lookupA(t, deny, "allowed.test", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Errorf("deny resolver answered: %v", r)
	}

	// open: any public address, by name and by raw IP.
	mustReach(t, open, target(nettest.Forbidden))
	mustReach(t, open, target(nettest.Allowed))
	if r := lookupA(t, open, "forbidden.test", dns.TypeA); len(r.Answer) != 1 {
		t.Errorf("open resolver: %v", r)
	}

	// restricted: a raw IP is dropped until an allowed name resolved to it.
	mustNotReach(t, restr, target(nettest.Allowed))
	r := lookupA(t, restr, "allowed.test", dns.TypeA)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != nettest.Allowed.String() {
		t.Fatalf("restricted resolver for allowed.test: %v", r)
	}
	mustReach(t, restr, target(nettest.Allowed))
	// The address is open for the record's TTL (30 s), raised to the
	// 60 s minimum.
	if out, _ := exec("nft", "-j", "list", "set", "inet", m.Table(), "allowed"); !strings.Contains(out, `"concat": ["`+restr.Iface+`", "`+nettest.Allowed.String()+`"]}, "timeout": 60`) {
		t.Errorf("allowed element without its timeout: %s", out)
	}
	// ... only for the sandbox that resolved it.
	mustNotReach(t, deny, target(nettest.Allowed))
	// A CNAME chain opens the address it ends at.
	mustNotReach(t, restr, target(nettest.Allowed2))
	if r := lookupA(t, restr, "www.allowed.test", dns.TypeA); len(r.Answer) != 2 {
		t.Fatalf("CNAME answer: %v", r)
	}
	mustReach(t, restr, target(nettest.Allowed2))
	// Forbidden names are refused and never forwarded; their address
	// stays closed.
	if r := lookupA(t, restr, "forbidden.test", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Errorf("forbidden.test answered: %v", r)
	}
	if in.Asked("forbidden.test.") != 1 { // once: by the open sandbox
		t.Errorf("forbidden.test was forwarded upstream %d times", in.Asked("forbidden.test."))
	}
	mustNotReach(t, restr, target(nettest.Forbidden))
	// An allowed name resolving to a private or metadata address does
	// not open it.
	if r := lookupA(t, restr, "private.test", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Errorf("private.test answered: %v", r)
	}

	// Changing the policy takes effect at once.
	if _, err := m.SetPolicy(context.Background(), open.Sandbox, netpolicy.ModeRestricted, nil); err != nil {
		t.Fatal(err)
	}
	mustNotReach(t, open, target(nettest.Forbidden))
	if _, err := m.SetPolicy(context.Background(), open.Sandbox, netpolicy.ModeOpen, nil); err != nil {
		t.Fatal(err)
	}
	mustReach(t, open, target(nettest.Forbidden))

	// Per-sandbox additions to the allow-list.
	if _, err := m.SetPolicy(context.Background(), restr.Sandbox, netpolicy.ModeRestricted, []string{"forbidden.test"}); err != nil {
		t.Fatal(err)
	}
	if r := lookupA(t, restr, "forbidden.test", dns.TypeA); len(r.Answer) != 1 {
		t.Errorf("added name not answered: %v", r)
	}
	mustReach(t, restr, target(nettest.Forbidden))

	// An allowed name that resolves to a private or metadata address
	// (DNS rebinding) still does not open it.
	if _, err := m.SetPolicy(context.Background(), restr.Sandbox, netpolicy.ModeRestricted, []string{"private.test", "metadata.test"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"private.test", "metadata.test"} {
		if r := lookupA(t, restr, name, dns.TypeA); len(r.Answer) != 1 {
			t.Fatalf("%s not answered: %v", name, r)
		}
	}
	mustNotReach(t, restr, target(nettest.Private))
	mustNotReach(t, restr, target(nettest.Metadata))
}

func TestDNSTunnelling(t *testing.T) {
	in := nettest.Start(t)
	m := newManager(t, in, instance())
	a := attach(t, m, "sbtun", netpolicy.ModeRestricted)
	before := in.Asked("allowed.test.")
	// Data-carrying record types are refused even for allowed names.
	for _, qt := range []uint16{dns.TypeTXT, dns.TypeNULL, dns.TypeMX, dns.TypeANY} {
		if r := lookupA(t, a, "allowed.test", qt); r.Rcode != dns.RcodeRefused {
			t.Errorf("type %s answered: %v", dns.TypeToString[qt], r)
		}
	}
	if in.Asked("allowed.test.") != before {
		t.Errorf("refused types were forwarded upstream")
	}
	// Long random labels under a wildcard are refused and not forwarded.
	secret := strings.Repeat("a1b2c3d4e5", 6)
	for _, name := range []string{secret + ".allowed.test", "x." + secret[:20] + ".allowed.test", "x.y.allowed.test", secret + ".forbidden.test", "UPPER_case.allowed.test"} {
		if r := lookupA(t, a, name, dns.TypeA); r.Rcode != dns.RcodeRefused {
			t.Errorf("%s answered: %v", name, r)
		}
		if in.Asked(strings.ToLower(name)+".") != 0 {
			t.Errorf("%s was forwarded upstream", name)
		}
	}
	// Many distinct names under a wildcard: a budget, then refused.
	refused := 0
	for i := 0; i < 80; i++ {
		r := lookupA(t, a, fmt.Sprintf("n%d.allowed.test", i), dns.TypeA)
		if r.Rcode == dns.RcodeRefused {
			refused++
		}
		time.Sleep(40 * time.Millisecond) // stay under the rate limit
	}
	if refused < 80-64 || refused == 80 {
		t.Errorf("wildcard budget: %d of 80 refused", refused)
	}
	// A flood is rate limited.
	flood := 0
	for i := 0; i < 200; i++ {
		if r := lookupA(t, a, "allowed.test", dns.TypeA); r.Rcode == dns.RcodeRefused {
			flood++
		}
	}
	if flood == 0 {
		t.Errorf("200 queries at once were all answered")
	}
}

func TestBlockedRecorded(t *testing.T) {
	in := nettest.Start(t)
	m := newManager(t, in, instance())
	a := attach(t, m, "sbrec", netpolicy.ModeRestricted)
	since := time.Now().Add(-time.Second)
	lookupA(t, a, "forbidden.test", dns.TypeA)
	mustNotReach(t, a, target(nettest.Forbidden))
	mustNotReach(t, a, target(nettest.Metadata))
	// Spoofing another source address is dropped too.
	if err := netpolicy.InNetns(a.NetnsPath(), func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("10.231.255.254"), Mask: net.CIDRMask(32, 32)}})
	}); err != nil {
		t.Fatal(err)
	}
	if err := netpolicy.InNetns(a.NetnsPath(), func() error {
		d := net.Dialer{Timeout: dialTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP("10.231.255.254")}}
		c, err := d.Dial("tcp4", target(nettest.Forbidden))
		if err == nil {
			c.Close()
			return fmt.Errorf("spoofed connection went through")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	var got []netpolicy.Blocked
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		got = m.Blocked(a.Sandbox, since, time.Now())
		if len(got) >= 4 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	want := map[string]bool{
		"forbidden.test:0":                    false,
		target(nettest.Forbidden) + "/policy": false,
		target(nettest.Metadata) + "/never":   false,
		target(nettest.Forbidden) + "/spoof":  false,
	}
	for _, b := range got {
		if b.Time.Before(since) {
			t.Errorf("event before the window: %+v", b)
		}
		key := fmt.Sprintf("%s:%d", b.Host, b.Port)
		if b.Port != 0 {
			key += "/" + b.Reason
		}
		if _, ok := want[key]; ok {
			want[key] = true
		}
	}
	for k, seen := range want {
		if !seen {
			t.Errorf("not recorded: %s (got %+v)", k, got)
		}
	}
	// Retransmissions of one attempt are one event.
	n := 0
	for _, b := range got {
		if b.Host == nettest.Metadata.String() {
			n++
		}
	}
	if n != 1 {
		t.Errorf("metadata attempt recorded %d times", n)
	}
	if len(m.Blocked(a.Sandbox, time.Now().Add(time.Hour), time.Now().Add(2*time.Hour))) != 0 {
		t.Errorf("events outside the window returned")
	}
	c := m.BlockedCounts()
	for _, r := range []string{"dns", "policy", "never", "spoof"} {
		if c[r] == 0 {
			t.Errorf("count of %s refusals is 0: %v", r, c)
		}
	}
}

func TestManySandboxesAndDetach(t *testing.T) {
	in := nettest.Start(t)
	m := newManager(t, in, instance())
	const n = 12
	atts := make([]netpolicy.Attachment, n)
	errs := make(chan error, n)
	for i := range atts {
		go func(i int) {
			a, err := m.Attach(context.Background(), fmt.Sprintf("sbmany%02d", i))
			if err == nil {
				mode := netpolicy.ModeOpen
				if i%2 == 1 {
					mode = netpolicy.ModeRestricted
				}
				a, err = m.SetPolicy(context.Background(), a.Sandbox, mode, nil)
			}
			atts[i] = a
			errs <- err
		}(i)
	}
	for range atts {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for _, a := range atts {
		if seen[a.Iface] || seen[a.SandboxAddr.String()] {
			t.Fatalf("slot handed out twice: %+v", a)
		}
		seen[a.Iface], seen[a.SandboxAddr.String()] = true, true
	}
	for i, a := range atts {
		if i%2 == 0 {
			mustReach(t, a, target(nettest.Forbidden))
		} else {
			mustNotReach(t, a, target(nettest.Forbidden))
		}
	}
	// Detach leaves nothing of that sandbox; a new one may reuse its slot
	// but not its allowed addresses.
	r := atts[1]
	lookupA(t, r, "allowed.test", dns.TypeA)
	mustReach(t, r, target(nettest.Allowed))
	tracked := func() int {
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, f := range flows {
			if f.Forward.SrcIP.Equal(r.SandboxAddr.AsSlice()) {
				n++
			}
		}
		return n
	}
	if tracked() == 0 {
		t.Fatalf("no connection of %s tracked; the check below would prove nothing", r.SandboxAddr)
	}
	if err := m.Detach(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	// The next sandbox on this address must not inherit them.
	if n := tracked(); n != 0 {
		t.Errorf("%d connections of %s still tracked after detach", n, r.SandboxAddr)
	}
	if err := m.Detach(context.Background(), r); err != nil {
		t.Fatalf("second detach: %v", err)
	}
	if _, err := os.Stat(r.NetnsPath()); !os.IsNotExist(err) {
		t.Errorf("namespace %s still there", r.NetnsPath())
	}
	if _, err := netlink.LinkByName(r.Iface); err == nil {
		t.Errorf("interface %s still there", r.Iface)
	}
	out, _ := exec("nft", "list", "table", "inet", m.Table())
	if strings.Contains(out, `"`+r.Iface+`"`) || strings.Contains(out, r.Iface+" ") {
		t.Errorf("set elements of %s still there:\n%s", r.Iface, out)
	}
	again := attach(t, m, "sbreuse", netpolicy.ModeRestricted)
	if again.Iface != r.Iface {
		t.Logf("slot not reused (%s, %s)", again.Iface, r.Iface)
	}
	mustNotReach(t, again, target(nettest.Allowed))
}

// TestCrashThenStart abandons a manager without any cleanup (as a killed
// server would) and checks that the next start removes all of its state.
func TestCrashThenStart(t *testing.T) {
	in := nettest.Start(t)
	inst := instance()
	crashed, err := netpolicy.New(netpolicy.Config{Instance: inst, AllowNames: []string{"allowed.test"}, Upstreams: []string{in.DNS}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := crashed.Start(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	var keep netpolicy.Attachment
	for i := 0; i < 3; i++ {
		a := attach(t, crashed, fmt.Sprintf("sbcrash%d", i), netpolicy.ModeRestricted)
		lookupA(t, a, "allowed.test", dns.TypeA)
		keep = a
	}
	// The crash: resolvers and the log reader die with the process; the
	// kernel state stays.
	_ = crashed.Close(context.Background(), false)

	m := newManager2(t, in, inst, []netpolicy.Attachment{keep})
	// The kept sandbox still works, with what it was allowed before.
	mustReach(t, keep, target(nettest.Allowed))
	mustNotReach(t, keep, target(nettest.Forbidden))
	if r := lookupA(t, keep, "allowed.test", dns.TypeA); len(r.Answer) != 1 {
		t.Errorf("resolver not back: %v", r)
	}
	ents, _ := os.ReadDir("/run/netns")
	count := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "ork-"+inst+"-") {
			count++
		}
	}
	if count != 1 {
		t.Errorf("%d namespaces after start, want 1", count)
	}
	_ = m
}

func newManager2(t *testing.T, in *nettest.Internet, inst string, keep []netpolicy.Attachment) *netpolicy.Manager {
	m, err := netpolicy.New(netpolicy.Config{Instance: inst, AllowNames: []string{"allowed.test"}, Upstreams: []string{in.DNS}})
	if err != nil {
		t.Fatal(err)
	}
	removed, err := m.Start(context.Background(), keep)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 4 { // two namespaces and two veths
		t.Errorf("removed %v", removed)
	}
	t.Cleanup(func() {
		if err := m.Close(context.Background(), true); err != nil {
			t.Errorf("close: %v", err)
		}
		assertNoState(t, inst)
	})
	return m
}

func TestConfigRejects(t *testing.T) {
	for _, c := range []netpolicy.Config{
		{Instance: "Bad-Name"},
		{Instance: "ok", Range: netip.MustParsePrefix("fd00::/64")},
		{Instance: "ok", Range: netip.MustParsePrefix("10.0.0.0/30")},
		{Instance: "ok", AllowPrivate: []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16")}},
		{Instance: "ok", AllowPrivate: []netip.Prefix{netip.MustParsePrefix("10.231.1.0/24")}},
		{Instance: "ok", AllowNames: []string{"*"}},
		{Instance: "ok", AllowNames: []string{"a.*.org"}},
		{Instance: "ok", AllowNames: []string{"com"}},
	} {
		if _, err := netpolicy.New(c); err == nil {
			t.Errorf("accepted %+v", c)
		}
	}
}

// BenchmarkAttachDetach times the network of one sandbox alone: Attach
// (namespace, veth pair, addresses, route, set elements, resolver),
// SetPolicy to open, and Detach.
func BenchmarkAttachDetach(b *testing.B) {
	in := nettest.Start(b)
	inst := instance()
	m, err := netpolicy.New(netpolicy.Config{Instance: inst, Upstreams: []string{in.DNS}})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := m.Start(context.Background(), nil); err != nil {
		b.Fatal(err)
	}
	defer m.Close(context.Background(), true)
	ctx := context.Background()
	var attach, policy, detach time.Duration
	i := 0
	for b.Loop() {
		t0 := time.Now()
		a, err := m.Attach(ctx, fmt.Sprintf("bench%d", i))
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := m.SetPolicy(ctx, a.Sandbox, netpolicy.ModeOpen, nil); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if err := m.Detach(ctx, a); err != nil {
			b.Fatal(err)
		}
		attach += t1.Sub(t0)
		policy += t2.Sub(t1)
		detach += time.Since(t2)
		i++
	}
	b.ReportMetric(float64(attach.Milliseconds())/float64(i), "attach-ms")
	b.ReportMetric(float64(policy.Microseconds())/1000/float64(i), "policy-ms")
	b.ReportMetric(float64(detach.Milliseconds())/float64(i), "detach-ms")
}

// TestResolverHostileInput sends the resolver what no stub resolver would:
// garbage, responses, several questions, updates, oversized TCP frames.
// It must answer or drop each, and keep serving.
func TestResolverHostileInput(t *testing.T) {
	in := nettest.Start(t)
	m := newManager(t, in, instance())
	a := attach(t, m, "sbhostile", netpolicy.ModeRestricted)
	server := netip.AddrPortFrom(a.HostAddr, 53).String()
	err := netpolicy.InNetns(a.NetnsPath(), func() error {
		u, err := net.Dial("udp4", server)
		if err != nil {
			return err
		}
		defer u.Close()
		for _, junk := range [][]byte{{}, {0}, []byte("GET / HTTP/1.1\r\n\r\n"), make([]byte, 4096), {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}} {
			_, _ = u.Write(junk)
		}
		multi := new(dns.Msg)
		multi.SetQuestion("allowed.test.", dns.TypeA)
		multi.Question = append(multi.Question, dns.Question{Name: "forbidden.test.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
		resp := new(dns.Msg)
		resp.SetQuestion("allowed.test.", dns.TypeA)
		resp.Response = true
		upd := new(dns.Msg)
		upd.SetUpdate("allowed.test.")
		chaos := new(dns.Msg)
		chaos.SetQuestion("allowed.test.", dns.TypeA)
		chaos.Question[0].Qclass = dns.ClassCHAOS
		for _, q := range []*dns.Msg{multi, resp, upd, chaos} {
			b, _ := q.Pack()
			_, _ = u.Write(b)
		}
		tc, err := net.Dial("tcp4", server)
		if err != nil {
			return err
		}
		defer tc.Close()
		_, _ = tc.Write([]byte{0xff, 0xff})
		_, _ = tc.Write(make([]byte, 70000))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Answers to the crafted questions (what came back, if anything)
	// never open anything.
	mustNotReach(t, a, target(nettest.Forbidden))
	if in.Asked("forbidden.test.") != 0 {
		t.Errorf("forbidden.test was forwarded")
	}
	// Still serving.
	if r := lookupA(t, a, "allowed.test", dns.TypeA); len(r.Answer) != 1 {
		t.Errorf("resolver broken after hostile input: %v", r)
	}
}

// TestNoIPv6AndLogFlood checks that a sandbox's link has no IPv6 at all,
// and that a flood of refused packets is logged at a capped rate (the
// drops themselves are never capped).
func TestNoIPv6AndLogFlood(t *testing.T) {
	in := nettest.Start(t)
	m := newManager(t, in, instance())
	a := attach(t, m, "sbflood", netpolicy.ModeRestricted)
	if err := netpolicy.InNetns(a.NetnsPath(), func() error {
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_V6)
		if err != nil {
			return err
		}
		for _, ad := range addrs {
			if !ad.IP.IsLoopback() {
				return fmt.Errorf("IPv6 address in the sandbox: %v", ad)
			}
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if l, err := netlink.LinkByName(a.Iface); err == nil {
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V6)
		if len(addrs) > 0 {
			t.Errorf("IPv6 on the host side: %v", addrs)
		}
	}
	since := time.Now()
	// 400 attempts to distinct ports in well under a second.
	if err := netpolicy.InNetns(a.NetnsPath(), func() error {
		c, err := net.ListenPacket("udp4", ":0")
		if err != nil {
			return err
		}
		defer c.Close()
		for p := 1; p <= 400; p++ {
			_, _ = c.WriteTo([]byte("x"), &net.UDPAddr{IP: nettest.Forbidden.AsSlice(), Port: p})
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	got := len(m.Blocked(a.Sandbox, since, time.Now()))
	if got == 0 || got > 100 {
		t.Errorf("%d of 400 refused packets logged; want some, capped", got)
	}
	t.Logf("%d of 400 refused packets logged", got)
}

// TestResolverTCPCap opens more TCP connections to the resolver than a
// sandbox may hold: the ones over the cap are dropped in the kernel.
func TestResolverTCPCap(t *testing.T) {
	in := nettest.Start(t)
	m := newManager(t, in, instance())
	a := attach(t, m, "sbtcp", netpolicy.ModeRestricted)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	refused := 0
	if err := netpolicy.InNetns(a.NetnsPath(), func() error {
		for i := 0; i < 24; i++ {
			c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(a.HostAddr, 53).String(), 500*time.Millisecond)
			if err != nil {
				refused++
				continue
			}
			conns = append(conns, c)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(conns) != 16 || refused != 8 {
		t.Errorf("%d connections to the resolver held, %d refused; want 16 and 8", len(conns), refused)
	}
}

// TestTwoInstances runs two managers (two servers) on one host and range:
// their sandboxes get distinct slots and cannot reach each other, and one
// closing leaves the other working.
func TestTwoInstances(t *testing.T) {
	in := nettest.Start(t)
	m1 := newManager(t, in, instance())
	m2 := newManager(t, in, instance())
	a := attach(t, m1, "sbone", netpolicy.ModeOpen)
	b := attach(t, m2, "sbtwo", netpolicy.ModeOpen)
	if a.Iface == b.Iface || a.SandboxAddr == b.SandboxAddr {
		t.Fatalf("two instances share a slot: %+v %+v", a, b)
	}
	for _, p := range [][2]netpolicy.Attachment{{a, b}, {b, a}} {
		mustNotReach(t, p[0], fmt.Sprintf("%s:80", p[1].SandboxAddr))
		mustNotReach(t, p[0], fmt.Sprintf("%s:53", p[1].HostAddr))
	}
	if err := m1.Close(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	mustReach(t, b, target(nettest.Forbidden))
}

// TestTruncation: an answer too big for UDP comes back truncated, and in
// full over TCP.
func TestTruncation(t *testing.T) {
	in := nettest.Start(t)
	m := newManager(t, in, instance())
	a := attach(t, m, "sbtc", netpolicy.ModeRestricted)
	server := netip.AddrPortFrom(a.HostAddr, 53).String()
	r, err := nettest.ResolveNet(a.NetnsPath(), "udp", server, "many.allowed.test", dns.TypeA)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Truncated || len(r.Answer) >= 40 {
		t.Errorf("UDP answer: truncated %v, %d records: %v", r.Truncated, len(r.Answer), r)
	}
	r, err = nettest.ResolveNet(a.NetnsPath(), "tcp", server, "many.allowed.test", dns.TypeA)
	if err != nil {
		t.Fatal(err)
	}
	if r.Truncated || len(r.Answer) != 40 {
		t.Errorf("TCP answer: truncated %v, %d records", r.Truncated, len(r.Answer))
	}
}

// TestUpstreamDown: when no upstream answers, an allowed name gets
// SERVFAIL and nothing is opened.
func TestUpstreamDown(t *testing.T) {
	in := nettest.Start(t)
	inst := instance()
	m, err := netpolicy.New(netpolicy.Config{Instance: inst, AllowNames: []string{"allowed.test"}, Upstreams: []string{"127.0.0.1:9"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Start(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = m.Close(context.Background(), true)
		assertNoState(t, inst)
	}()
	a := attach(t, m, "sbup", netpolicy.ModeRestricted)
	if r := lookupA(t, a, "allowed.test", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("with no upstream: %v", r)
	}
	mustNotReach(t, a, target(nettest.Allowed))
	_ = in
}
