package netpolicy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces are bind-mounted (the same
// place `ip netns` uses, so operators can inspect them with iproute2).
const netnsDir = "/run/netns"

// ifPrefix starts the host-side name of every sandbox veth on this host.
const ifPrefix = "ork"

// ifName names slot's host-side veth: unique per slot on the host, so two
// orkestr instances sharing a range cannot take the same slot (the second
// link creation fails and the allocator moves on).
func ifName(slot int) string { return fmt.Sprintf("%s%05x", ifPrefix, slot) }

// slotAddrs returns the /30 of slot in r: the host side is .1, the sandbox
// .2 of the block.
func slotAddrs(r netip.Prefix, slot int) (host, sandbox netip.Addr, ok bool) {
	base := r.Masked().Addr().As4()
	n := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	n += uint32(slot) * 4
	mk := func(v uint32) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	host, sandbox = mk(n+1), mk(n+2)
	return host, sandbox, r.Contains(host) && r.Contains(sandbox)
}

// slots is how many /30 blocks r holds.
func slots(r netip.Prefix) int {
	bits := 32 - r.Bits()
	if bits < 2 {
		return 0
	}
	return 1 << (bits - 2)
}

// createNetns makes a named network namespace.
func createNetns(name string) error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return err
	}
	err := onNetns(func() (netns.NsHandle, error) { return netns.NewNamed(name) }, func() error {
		// Interfaces made in the new namespace from now on get no IPv6
		// (sandboxes are IPv4 only; the policy drops IPv6).
		for _, p := range []string{"/proc/sys/net/ipv6/conf/default/disable_ipv6", "/proc/sys/net/ipv6/conf/all/disable_ipv6"} {
			_ = os.WriteFile(p, []byte("1\n"), 0o644)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("netpolicy: create network namespace %s: %w", name, err)
	}
	return nil
}

// InNetns runs fn on a thread switched into the network namespace at path:
// sockets fn creates belong to that namespace for their whole life.
func InNetns(path string, fn func() error) error {
	return onNetns(func() (netns.NsHandle, error) {
		target, err := netns.GetFromPath(path)
		if err != nil {
			return netns.None(), err
		}
		if err := netns.Set(target); err != nil {
			target.Close()
			return netns.None(), err
		}
		return target, nil
	}, fn)
}

// onNetns runs fn on an OS thread that enter switches into a namespace
// (enter runs on that thread: netns.NewNamed creates one and enters it),
// then switches the thread back. It switches back even when enter failed,
// which may have left the thread in a new namespace (NewNamed unshares
// before it mounts). If switching back fails the thread stays locked, so
// the Go runtime discards it instead of running other goroutines in the
// wrong namespace.
func onNetns(enter func() (netns.NsHandle, error), fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := enter()
	if target.IsOpen() {
		defer target.Close()
	}
	if err == nil {
		err = fn()
	}
	if serr := netns.Set(orig); serr != nil {
		return errors.Join(err, fmt.Errorf("netpolicy: cannot return to the host network namespace: %w", serr))
	}
	runtime.UnlockOSThread()
	return err
}

// deleteNetns removes a named namespace; a missing one is not an error.
func deleteNetns(name string) error {
	p := filepath.Join(netnsDir, name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netpolicy: unmount %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// setupLink creates the veth pair of one sandbox: host side ifname with
// host/30 and alias, sandbox side "eth0" inside the namespace with
// sandbox/30, loopback up and a default route via the host side.
func setupLink(nsName, ifname, alias string, host, sandbox netip.Addr) error {
	ns, err := netns.GetFromName(nsName)
	if err != nil {
		return fmt.Errorf("netpolicy: open network namespace %s: %w", nsName, err)
	}
	defer ns.Close()
	la := netlink.NewLinkAttrs()
	la.Name = ifname
	veth := &netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("netpolicy: create veth %s: %w", ifname, err)
	}
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetAlias(link, alias); err != nil {
		return err
	}
	// No IPv6 link-local address on the host side either: nothing of the
	// host is reachable over IPv6 from the sandbox's link.
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+ifname+"/disable_ipv6", []byte("1\n"), 0o644)
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: host.AsSlice(), Mask: net.CIDRMask(30, 32)}}); err != nil {
		return fmt.Errorf("netpolicy: address %s on %s: %w", host, ifname, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	for _, name := range []string{"lo", "eth0"} {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("netpolicy: %s in %s: %w", name, nsName, err)
		}
		if name == "eth0" {
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: sandbox.AsSlice(), Mask: net.CIDRMask(30, 32)}}); err != nil {
				return err
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
		if name == "eth0" {
			if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: host.AsSlice()}); err != nil {
				return fmt.Errorf("netpolicy: default route in %s: %w", nsName, err)
			}
		}
	}
	return nil
}

// hostLinks returns the host-side sandbox veths whose alias starts with
// aliasPrefix, by name.
func hostLinks(aliasPrefix string) (map[string]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, l := range links {
		a := l.Attrs()
		if strings.HasPrefix(a.Name, ifPrefix) && strings.HasPrefix(a.Alias, aliasPrefix) {
			out[a.Name] = a.Alias
		}
	}
	return out, nil
}

// deleteLink removes a host-side veth (which removes its peer too); a
// missing one is not an error.
func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	return netlink.LinkDel(l)
}

// enableForwarding turns on IPv4 forwarding, which networked sandboxes
// need (the host routes their traffic). Forwarded traffic of anything that
// is not a sandbox is left to the host's own firewall.
func enableForwarding() error {
	const p = "/proc/sys/net/ipv4/ip_forward"
	b, err := os.ReadFile(p)
	if err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("netpolicy: enable IPv4 forwarding (%s): %w", p, err)
	}
	return nil
}

// flushConntrack forgets every connection the kernel tracks from addr.
func flushConntrack(addr netip.Addr) {
	f := &netlink.ConntrackFilter{}
	if err := f.AddIP(netlink.ConntrackOrigSrcIP, addr.AsSlice()); err != nil {
		return
	}
	_, _ = netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f)
}

// linkPeerAddrs returns the sandbox addresses behind a host-side veth: the
// address after each IPv4 address of the link (slots are host .1,
// sandbox .2).
func linkPeerAddrs(name string) []netip.Addr {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			out = append(out, ip.Next())
		}
	}
	return out
}
