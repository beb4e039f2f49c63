package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Limits of a sandbox's resolver against DNS tunnelling and floods.
const (
	queryRate        = 20 // queries per second, sustained
	queryBurst       = 60 // queries at once
	maxWildcardNames = 64 // distinct names one sandbox may resolve under *.suffix entries
	maxWildcardLabel = 40 // length of the label a * entry stands for
	minAllowTTL      = 60 // seconds an allowed address stays in the set at least
	maxAllowTTL      = 3600
	upstreamTimeout  = 3 * time.Second
	upstreamUDPSize  = 1232 // the EDNS buffer size resolvers agree on (DNS flag day 2020)
)

// allowList matches names against entries "example.org" (that name only)
// and "*.example.org" (exactly one more label, of letters, digits and '-').
type allowList struct {
	exact    map[string]bool
	suffixes []string // ".example.org"
}

func newAllowList(names ...[]string) (allowList, error) {
	a := allowList{exact: map[string]bool{}}
	for _, list := range names {
		for _, n := range list {
			n = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n)), ".")
			if n == "" {
				continue
			}
			base := strings.TrimPrefix(n, "*.")
			if _, ok := dns.IsDomainName(base); !ok || strings.Contains(base, "*") || !strings.Contains(base, ".") {
				return a, fmt.Errorf("netpolicy: allow-list entry %q is not a domain name (use example.org or *.example.org)", n)
			}
			if strings.HasPrefix(n, "*.") {
				a.suffixes = append(a.suffixes, "."+base)
			} else {
				a.exact[n] = true
			}
		}
	}
	return a, nil
}

// match says whether name is allowed and whether it matched a wildcard.
func (a allowList) match(name string) (ok, wildcard bool) {
	if a.exact[name] {
		return true, false
	}
	for _, s := range a.suffixes {
		if label, found := strings.CutSuffix(name, s); found && validLabel(label) {
			return true, true
		}
	}
	return false, false
}

func validLabel(l string) bool {
	if l == "" || len(l) > maxWildcardLabel {
		return false
	}
	for _, c := range l {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// bucket is a token bucket.
type bucket struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
}

func (b *bucket) take() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if b.last.IsZero() {
		b.tokens = queryBurst
	} else {
		b.tokens = min(queryBurst, b.tokens+now.Sub(b.last).Seconds()*queryRate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// resolver answers one sandbox's DNS queries on its gateway address: only
// names its policy allows are ever sent upstream, and the addresses in
// those answers are what a restricted sandbox may connect to.
type resolver struct {
	m       *Manager
	a       *attached
	servers []*dns.Server
	limit   bucket
}

func (m *Manager) startResolver(a *attached) error {
	r := &resolver{m: m, a: a}
	addr := netip.AddrPortFrom(a.HostAddr, 53).String()
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return fmt.Errorf("netpolicy: resolver for %s on %s: %w", a.Sandbox, addr, err)
	}
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		pc.Close()
		return fmt.Errorf("netpolicy: resolver for %s on %s: %w", a.Sandbox, addr, err)
	}
	h := dns.HandlerFunc(r.serve)
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: ln, Handler: h, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, MaxTCPQueries: 32}
	r.servers = []*dns.Server{udp, tcp}
	for _, s := range r.servers {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func(s *dns.Server) {
			if err := s.ActivateAndServe(); err != nil {
				m.log.Debug("resolver stopped", "sandbox", a.Sandbox, "err", err)
			}
		}(s)
		<-started
	}
	a.resolver = r
	return nil
}

func (r *resolver) stop() {
	for _, s := range r.servers {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.ShutdownContext(ctx)
		cancel()
	}
}

func (r *resolver) serve(w dns.ResponseWriter, q *dns.Msg) {
	reply := func(rcode int) {
		resp := new(dns.Msg)
		resp.SetRcode(q, rcode)
		resp.RecursionAvailable = true
		_ = w.WriteMsg(resp)
	}
	// Only the sandbox itself: the policy lets nothing else through to
	// this address, and this check keeps it so if the host's routing
	// ever did.
	if ap, err := netip.ParseAddrPort(w.RemoteAddr().String()); err != nil || ap.Addr().Unmap() != r.a.SandboxAddr {
		reply(dns.RcodeRefused)
		return
	}
	if q.Opcode != dns.OpcodeQuery || len(q.Question) != 1 || q.Response {
		reply(dns.RcodeFormatError)
		return
	}
	if !r.limit.take() {
		r.m.recordDNS(r.a, "", "rate")
		reply(dns.RcodeRefused)
		return
	}
	qq := q.Question[0]
	name := strings.TrimSuffix(strings.ToLower(qq.Name), ".")
	mode, allowed := r.a.policy()
	switch mode {
	case ModeOpen:
		r.forward(w, q, name, false)
		return
	case ModeRestricted:
	default:
		r.m.recordDNS(r.a, name, "dns")
		reply(dns.RcodeRefused)
		return
	}
	ok, wild := allowed.match(name)
	if ok && wild && !r.a.noteWildcard(name) {
		ok = false
	}
	if !ok || qq.Qclass != dns.ClassINET {
		r.m.recordDNS(r.a, name, "dns")
		reply(dns.RcodeRefused)
		return
	}
	switch qq.Qtype {
	case dns.TypeA, dns.TypeCNAME:
		r.forward(w, q, name, true)
	case dns.TypeAAAA, dns.TypeHTTPS, dns.TypeSVCB:
		// Sandboxes have IPv4 only: an empty answer makes clients use A.
		resp := new(dns.Msg)
		resp.SetReply(q)
		resp.RecursionAvailable = true
		_ = w.WriteMsg(resp)
	default:
		// TXT, NULL and the like carry data, not addresses.
		r.m.recordDNS(r.a, name, "dns")
		reply(dns.RcodeRefused)
	}
}

// forward asks the upstream resolvers and relays the answer; with allow
// set the IPv4 addresses in it go into the sandbox's allow set first, so a
// connection right after the answer is not dropped.
func (r *resolver) forward(w dns.ResponseWriter, q *dns.Msg, name string, allow bool) {
	up := new(dns.Msg)
	up.SetQuestion(q.Question[0].Name, q.Question[0].Qtype)
	up.RecursionDesired = true
	up.SetEdns0(upstreamUDPSize, false)
	resp, err := r.m.exchange(up)
	if err != nil {
		r.m.log.Warn("upstream DNS failed", "sandbox", r.a.Sandbox, "name", name, "err", err)
		fail := new(dns.Msg)
		fail.SetRcode(q, dns.RcodeServerFailure)
		_ = w.WriteMsg(fail)
		return
	}
	var addrs []netip.Addr
	ttl := uint32(maxAllowTTL)
	for _, rr := range resp.Answer {
		if a, ok := rr.(*dns.A); ok {
			if ip, ok := netip.AddrFromSlice(a.A.To4()); ok {
				addrs = append(addrs, ip)
				ttl = min(ttl, a.Hdr.Ttl)
			}
		}
	}
	if len(addrs) > 0 {
		r.a.noteNames(addrs, name)
		if allow {
			if err := r.m.allow(r.a, addrs, time.Duration(max(ttl, minAllowTTL))*time.Second); err != nil {
				r.m.log.Error("adding resolved addresses to a sandbox's allow set failed", "sandbox", r.a.Sandbox, "name", name, "err", err)
				fail := new(dns.Msg)
				fail.SetRcode(q, dns.RcodeServerFailure)
				_ = w.WriteMsg(fail)
				return
			}
		}
	}
	resp.Id = q.Id
	resp.Question = q.Question
	resp.Compress = true
	size := dns.MaxMsgSize
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		// What the client can take over UDP; the truncated bit makes
		// it ask again over TCP.
		size = dns.MinMsgSize
		if o := q.IsEdns0(); o != nil {
			size = max(int(o.UDPSize()), dns.MinMsgSize)
		}
	}
	if q.IsEdns0() == nil {
		resp.Extra = nil
	}
	resp.Truncate(size)
	_ = w.WriteMsg(resp)
}

// exchange asks each upstream in turn, over TCP when UDP was truncated.
func (m *Manager) exchange(q *dns.Msg) (*dns.Msg, error) {
	var errs []error
	for _, u := range m.cfg.Upstreams {
		c := &dns.Client{Net: "udp", Timeout: upstreamTimeout, UDPSize: upstreamUDPSize}
		resp, _, err := c.Exchange(q, u)
		if err == nil && resp.Truncated {
			c.Net = "tcp"
			resp, _, err = c.Exchange(q, u)
		}
		if err == nil {
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", u, err))
	}
	if len(errs) == 0 {
		return nil, errors.New("no upstream DNS server configured")
	}
	return nil, errors.Join(errs...)
}

// systemUpstreams reads the nameservers of the host's resolv.conf.
func systemUpstreams(path string) []string {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(cc.Servers))
	for _, s := range cc.Servers {
		out = append(out, net.JoinHostPort(s, cc.Port))
	}
	return out
}
