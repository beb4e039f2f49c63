// Package nettest builds a small "internet" on this machine for network
// policy tests: servers in their own network namespaces with public-looking
// addresses routed from the host, and a DNS server for a test zone. No
// test traffic ever needs to leave the machine: every address a test
// dials exists here, so a policy that fails lets a connection succeed
// locally instead of sending it out.
package nettest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/orkestr-eu/orkestr/internal/netpolicy"
)

// Well-known targets of the test internet.
var (
	Allowed   = netip.MustParseAddr("198.51.100.10") // allowed.test
	Allowed2  = netip.MustParseAddr("198.51.100.11") // www.allowed.test (a CNAME chain)
	Forbidden = netip.MustParseAddr("203.0.113.10")  // forbidden.test
	Private   = netip.MustParseAddr("10.99.0.10")    // private.test: a private-range server
	Metadata  = netip.MustParseAddr("169.254.169.254")
)

// Port every test server listens on (TCP); it greets with "hello <addr>".
const Port = 8080

// Zone is the test zone served by the test DNS server.
var Zone = map[string]netip.Addr{
	"allowed.test.":     Allowed,
	"api.allowed.test.": Allowed2,
	"forbidden.test.":   Forbidden,
	"private.test.":     Private,
	"metadata.test.":    Metadata,
}

// Internet is the running test internet.
type Internet struct {
	DNS     string // host:port of the test zone's DNS server (on the host's loopback)
	servers []*server
	dns     *dns.Server
	lock    *os.File
	queries sync.Map // names asked of the DNS server → count
}

type server struct {
	ns    string
	iface string
	addr  netip.Addr
	ln    net.Listener
}

// lockPath serialises test internets on this host: they use fixed
// addresses and routes.
const lockPath = "/run/lock/orkestr-nettest.lock"

// Start builds the internet; t.Cleanup removes all of it.
func Start(t testing.TB) *Internet {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: the test internet needs root and network namespaces (run by `make test`)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	in := &Internet{lock: f}
	t.Cleanup(in.close)
	for i, addr := range []netip.Addr{Allowed, Allowed2, Forbidden, Private, Metadata} {
		s, err := startServer(i, addr)
		if s != nil {
			in.servers = append(in.servers, s)
		}
		if err != nil {
			t.Fatalf("test internet: %v", err)
		}
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	in.DNS = pc.LocalAddr().String()
	started := make(chan struct{})
	in.dns = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(in.serveDNS), NotifyStartedFunc: func() { close(started) }}
	go func() { _ = in.dns.ActivateAndServe() }()
	<-started
	return in
}

// Asked reports how often the test DNS server was asked about name
// (lower case, with the final dot).
func (in *Internet) Asked(name string) int {
	v, _ := in.queries.Load(name)
	n, _ := v.(int)
	return n
}

func (in *Internet) serveDNS(w dns.ResponseWriter, q *dns.Msg) {
	resp := new(dns.Msg)
	resp.SetReply(q)
	resp.Compress = true
	if len(q.Question) == 1 {
		qq := q.Question[0]
		name := strings.ToLower(qq.Name)
		v, _ := in.queries.LoadOrStore(name, 0)
		in.queries.Store(name, v.(int)+1)
		addr, ok := Zone[name]
		switch {
		case name == "www.allowed.test.":
			resp.Answer = append(resp.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 30}, Target: "api.allowed.test."})
			if qq.Qtype == dns.TypeA {
				resp.Answer = append(resp.Answer, &dns.A{Hdr: dns.RR_Header{Name: "api.allowed.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: Allowed2.AsSlice()})
			}
		case name == "many.allowed.test." && qq.Qtype == dns.TypeA:
			// More than fits a 512-byte UDP answer.
			for i := 0; i < 40; i++ {
				resp.Answer = append(resp.Answer, &dns.A{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: net.IPv4(198, 51, 100, byte(100+i))})
			}
		case ok && qq.Qtype == dns.TypeA:
			resp.Answer = append(resp.Answer, &dns.A{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: addr.AsSlice()})
		case ok && qq.Qtype == dns.TypeTXT:
			resp.Answer = append(resp.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 30}, Txt: []string{"secret"}})
		case ok:
		default:
			resp.Rcode = dns.RcodeNameError
		}
	}
	_ = w.WriteMsg(resp)
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// startServer puts addr in its own namespace behind a veth whose host side
// has 198.18.0.(4i+1)/30, with a host route for addr through it.
func startServer(i int, addr netip.Addr) (*server, error) {
	s := &server{ns: fmt.Sprintf("orkt-srv%d", i), iface: fmt.Sprintf("orkt%d", i), addr: addr}
	_ = ip("netns", "del", s.ns)
	_ = ip("link", "del", s.iface)
	_ = ip("route", "del", addr.String()+"/32")
	hostSide := fmt.Sprintf("198.18.0.%d", 4*i+1)
	peer := fmt.Sprintf("198.18.0.%d", 4*i+2)
	steps := [][]string{
		{"netns", "add", s.ns},
		{"link", "add", s.iface, "type", "veth", "peer", "name", "eth0", "netns", s.ns},
		{"addr", "add", hostSide + "/30", "dev", s.iface},
		{"link", "set", s.iface, "up"},
		{"-n", s.ns, "addr", "add", peer + "/30", "dev", "eth0"},
		{"-n", s.ns, "addr", "add", addr.String() + "/32", "dev", "lo"},
		{"-n", s.ns, "link", "set", "lo", "up"},
		{"-n", s.ns, "link", "set", "eth0", "up"},
		{"-n", s.ns, "route", "add", "default", "via", hostSide},
		{"route", "add", addr.String() + "/32", "via", peer, "dev", s.iface},
	}
	for _, st := range steps {
		if err := ip(st...); err != nil {
			return s, err
		}
	}
	// Refuse to go on unless the host really routes addr here: a test
	// must never send to the real network.
	out, err := exec.Command("ip", "route", "get", addr.String()).Output()
	if err != nil || !strings.Contains(string(out), "dev "+s.iface) {
		return s, fmt.Errorf("route to %s does not go through %s: %s", addr, s.iface, out)
	}
	ln, err := listenIn(s.ns, fmt.Sprintf("%s:%d", addr, Port))
	if err != nil {
		return s, err
	}
	s.ln = ln
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = fmt.Fprintf(c, "hello %s\n", addr)
			c.Close()
		}
	}()
	return s, nil
}

// listenIn opens a TCP listener inside a named namespace.
func listenIn(ns, addr string) (net.Listener, error) {
	var ln net.Listener
	err := netpolicy.InNetns("/run/netns/"+ns, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	return ln, err
}

// Dial connects from the namespace at path to addr and reads the greeting.
func Dial(path, addr string, timeout time.Duration) (string, error) {
	var c net.Conn
	err := netpolicy.InNetns(path, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, timeout)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	buf := make([]byte, 128)
	n, err := c.Read(buf)
	if n > 0 {
		return strings.TrimSpace(string(buf[:n])), nil
	}
	return "", err
}

// Resolve asks server (host:port) from inside the namespace at path, over
// UDP without EDNS.
func Resolve(path, server, name string, qtype uint16) (*dns.Msg, error) {
	return ResolveNet(path, "udp", server, name, qtype)
}

// ResolveNet is Resolve over network "udp" or "tcp".
func ResolveNet(path, network, server, name string, qtype uint16) (*dns.Msg, error) {
	var conn *dns.Conn
	err := netpolicy.InNetns(path, func() error {
		var err error
		conn, err = dns.DialTimeout(network, server, 2*time.Second)
		return err
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Timeout: 3 * time.Second}
	resp, _, err := c.ExchangeWithConn(q, conn)
	return resp, err
}

func (in *Internet) close() {
	if in.dns != nil {
		_ = in.dns.Shutdown()
	}
	for _, s := range in.servers {
		if s.ln != nil {
			s.ln.Close()
		}
		_ = ip("route", "del", s.addr.String()+"/32")
		_ = ip("link", "del", s.iface)
		_ = ip("netns", "del", s.ns)
	}
	if in.lock != nil {
		_ = syscall.Flock(int(in.lock.Fd()), syscall.LOCK_UN)
		in.lock.Close()
	}
}

// HostListener is a TCP service on the host itself (as the API is), on
// every address; it greets and closes each connection. It returns the port.
func HostListener(t testing.TB) int {
	ln, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "hello host")
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// Listen opens another TCP listener on one of the internet's servers
// (addr, e.g. Allowed) at port, inside that server's namespace, for a test
// that serves something else there (an HTTPS server). It is closed when
// the test ends.
func (in *Internet) Listen(t testing.TB, addr netip.Addr, port int) net.Listener {
	t.Helper()
	for _, s := range in.servers {
		if s.addr == addr {
			ln, err := listenIn(s.ns, fmt.Sprintf("%s:%d", addr, port))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			return ln
		}
	}
	t.Fatalf("the test internet has no server at %s", addr)
	return nil
}
