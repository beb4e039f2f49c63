package netpolicy

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/google/nftables"
)

// fastSets changes set elements over netlink directly, for the two updates
// on a sandbox's hot paths: the DNS answer that opens an address (the
// answer waits for it) and the claim that opens a sandbox. The nft command
// would fork a process for each (3-15 ms on a busy host); the table itself
// and the rarer changes still go through nft, whose scripts are easier to
// read and review.
type fastSets struct {
	table string

	mu   sync.Mutex
	conn *nftables.Conn
	sets map[string]*nftables.Set
}

func (f *fastSets) set(name string) (*nftables.Conn, *nftables.Set, error) {
	if f.conn == nil {
		c, err := nftables.New()
		if err != nil {
			return nil, nil, err
		}
		f.conn = c
		f.sets = map[string]*nftables.Set{}
	}
	if s, ok := f.sets[name]; ok {
		return f.conn, s, nil
	}
	s, err := f.conn.GetSetByName(&nftables.Table{Name: f.table, Family: nftables.TableFamilyINet}, name)
	if err != nil {
		return nil, nil, fmt.Errorf("netpolicy: set %s of table %s: %w", name, f.table, err)
	}
	f.sets[name] = s
	return f.conn, s, nil
}

// reset forgets the cached sets (the table was rebuilt).
func (f *fastSets) reset() {
	f.mu.Lock()
	f.sets = nil
	f.conn = nil
	f.mu.Unlock()
}

// ifnameKey is an ifname as nftables stores it: IFNAMSIZ bytes, zero padded.
func ifnameKey(name string) []byte {
	b := make([]byte, 16)
	copy(b, name)
	return b
}

// allow adds iface . addr elements to "allowed" with a fresh timeout: an
// existing element is deleted and added again in the same batch (adding it
// first, so that the delete cannot fail), since adding an existing element
// does not extend its timeout.
func (f *fastSets) allow(iface string, addrs []netip.Addr, ttl time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, s, err := f.set("allowed")
	if err != nil {
		return err
	}
	els := make([]nftables.SetElement, 0, len(addrs))
	for _, a := range addrs {
		ip := a.As4()
		els = append(els, nftables.SetElement{Key: append(ifnameKey(iface), ip[:]...), Timeout: ttl})
	}
	if err := c.SetAddElements(s, els); err != nil {
		return err
	}
	if err := c.SetDeleteElements(s, els); err != nil {
		return err
	}
	if err := c.SetAddElements(s, els); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		f.conn, f.sets = nil, nil
		return fmt.Errorf("netpolicy: update allowed set: %w", err)
	}
	return nil
}

// setOpen puts iface into the "open" set or takes it out.
func (f *fastSets) setOpen(iface string, open bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, s, err := f.set("open")
	if err != nil {
		return err
	}
	el := []nftables.SetElement{{Key: ifnameKey(iface)}}
	if err := c.SetAddElements(s, el); err != nil {
		return err
	}
	if !open {
		if err := c.SetDeleteElements(s, el); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		f.conn, f.sets = nil, nil
		return fmt.Errorf("netpolicy: update open set: %w", err)
	}
	return nil
}
