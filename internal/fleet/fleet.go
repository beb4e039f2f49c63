// Package fleet runs orkestr on many hosts: the control plane's view of
// the nodes (placement over the store's node records, clients of their
// node API), the singleton loops that exactly one control-plane replica
// runs at a time (by a lease in the store), and a node's side of it (its
// heartbeat into the store and the sweep that drops sandboxes the store no
// longer gives it).
package fleet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/lifecycle"
	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/scheduler"
	"github.com/orkestr-eu/orkestr/internal/store"
)

// Nodes is the control plane's lifecycle.Nodes: the nodes of the store's
// records, reached over their node API.
type Nodes struct {
	store  store.Store
	policy scheduler.Policy
	sizes  map[string]config.Size
	token  string
	tls    *tls.Config
	log    *slog.Logger

	mu      sync.Mutex
	clients map[string]*nodeapi.Client // node id -> client of its current address
	list    []store.Node
	listAt  time.Time
	// refreshing: a read of the list runs in the background.
	refreshing bool
	// placed: what this replica put on each node, or freed there, that
	// the node's last heartbeat may not count yet (see count, Released).
	placed map[string][]placement
}

// placement is a sandbox put on a node at a time, or (freed) one whose
// room there was freed.
type placement struct {
	at       time.Time
	template string
	size     scheduler.Resources
	freed    bool
}

// Options configure Nodes.
type Options struct {
	Store  store.Store
	Config config.Config
	TLS    *tls.Config // for https node addresses; nil: system roots
	Log    *slog.Logger
}

// listFor is how long a read of the nodes table serves placements: a
// create costs no store read of its own, and a heartbeat is seconds apart
// anyway.
const listFor = time.Second

// NewNodes returns the fleet's nodes as the control plane sees them.
func NewNodes(o Options) *Nodes {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return &Nodes{
		store: o.Store, sizes: o.Config.Sizes, token: o.Config.Fleet.NodeToken, tls: o.TLS, log: o.Log,
		policy: scheduler.Policy{
			DefaultRegion: o.Config.Region, Lapse: o.Config.Fleet.HeartbeatTimeout(), CPUOvercommit: o.Config.Fleet.CPUOvercommit,
		},
		clients: map[string]*nodeapi.Client{},
	}
}

var (
	_ lifecycle.Nodes    = (*Nodes)(nil)
	_ lifecycle.Releaser = (*Nodes)(nil)
)

// staleFor is how old a list may still serve a placement while a fresh
// one is read in the background: a create then never waits for the
// nodes table (a round trip to PostgreSQL), only the first after a quiet
// spell does.
const staleFor = 5 * listFor

// nodes is the store's node list (fresh: read now). A list at most listFor
// old is served as is; one at most staleFor old is served while a read in
// the background replaces it; an older one is read again first.
func (f *Nodes) nodes(ctx context.Context, fresh bool) ([]store.Node, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !fresh && f.list != nil {
		switch age := time.Since(f.listAt); {
		case age < listFor:
			return f.list, nil
		case age < staleFor:
			if !f.refreshing {
				f.refreshing = true
				go f.refresh()
			}
			return f.list, nil
		}
	}
	at := time.Now()
	list, err := f.store.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	f.list, f.listAt = list, at
	return list, nil
}

// refresh reads the node list in the background.
func (f *Nodes) refresh() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	at := time.Now()
	list, err := f.store.ListNodes(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refreshing = false
	if err != nil {
		f.log.Warn("reading the node list failed; the next placement reads it again", "err", err)
		return
	}
	if at.After(f.listAt) {
		f.list, f.listAt = list, at
	}
}

// withPlaced returns a copy of list (the cached one) with what this
// replica placed after each node's last heartbeat added (the heartbeat's
// age is by the database's clock, so replicas' clocks need not agree
// with it), and forgets what the heartbeats count already.
func (f *Nodes) withPlaced(list []store.Node) []store.Node {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.placed) == 0 {
		return list
	}
	list = slices.Clone(list)
	for i := range list {
		pending := f.placed[list[i].ID]
		if len(pending) == 0 {
			continue
		}
		beat := f.listAt.Add(-list[i].HeartbeatAge)
		var keep []placement
		for _, p := range pending {
			// A node whose heartbeats stopped keeps nothing past a minute.
			if p.at.After(beat) && time.Since(p.at) < time.Minute {
				keep = append(keep, p)
				addPlaced(&list[i], p)
			}
		}
		if len(keep) == 0 {
			delete(f.placed, list[i].ID)
		} else {
			f.placed[list[i].ID] = keep
		}
	}
	return list
}

// addPlaced counts one placed sandbox on n, or takes one freed off.
func addPlaced(n *store.Node, p placement) {
	a := &n.Allocated
	if p.freed {
		a.Slots = max(a.Slots-1, 0)
		a.CPUs = max(a.CPUs-p.size.CPUs, 0)
		a.MemoryBytes = max(a.MemoryBytes-p.size.MemoryBytes, 0)
		a.DiskBytes = max(a.DiskBytes-p.size.DiskBytes, 0)
		return
	}
	a.Slots++
	a.CPUs += p.size.CPUs
	a.MemoryBytes += p.size.MemoryBytes
	a.DiskBytes += p.size.DiskBytes
	if n.Warm[p.template] > 0 {
		warm := maps.Clone(n.Warm)
		warm[p.template]--
		n.Warm = warm
	}
}

// client is the node API client of a node record (one per address).
func (f *Nodes) client(n store.Node) (*nodeapi.Client, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.clients[n.ID]; ok && c.Address() == n.Address {
		return c, nil
	}
	c, err := nodeapi.Dial(n.Address, f.token, f.tls)
	if err != nil {
		return nil, fmt.Errorf("%w: node %s: %w", nodeapi.ErrUnreachable, n.ID, err)
	}
	if old, ok := f.clients[n.ID]; ok {
		old.Close()
	}
	f.clients[n.ID] = c
	return c, nil
}

// Node implements lifecycle.Nodes.
func (f *Nodes) Node(ctx context.Context, id string) (nodeapi.Node, error) {
	var last error
	// A node missing or silent in the cached list may have come back
	// since: the list is read again before it is given up.
	for _, fresh := range []bool{false, true} {
		list, err := f.nodes(ctx, fresh)
		if err != nil {
			return nil, err
		}
		last = fmt.Errorf("%w: no node %q is registered", nodeapi.ErrUnreachable, id)
		for _, n := range list {
			if n.ID != id {
				continue
			}
			if f.policy.Alive(scheduler.FromNode(n)) {
				return f.client(n)
			}
			last = fmt.Errorf("%w: node %s last answered %s ago", nodeapi.ErrUnreachable, id, n.HeartbeatAge.Round(time.Second))
		}
	}
	return nil, last
}

// Place implements lifecycle.Nodes. A placement that finds no node on a
// list read earlier is tried again on the list as it is now: a node may
// have room again (sandboxes ended since) or have come back, and a
// refusal must not rest on an old view.
func (f *Nodes) Place(ctx context.Context, p lifecycle.Placement) (string, nodeapi.Node, error) {
	fresh := len(p.Exclude) > 0 || p.Fresh
	id, n, err := f.place(ctx, p, fresh, true)
	if err != nil && (errors.Is(err, lifecycle.ErrNoCapacity) || errors.Is(err, lifecycle.ErrRegionUnavailable) || errors.Is(err, lifecycle.ErrUnknownRegion)) {
		return f.place(ctx, p, true, false)
	}
	return id, n, err
}

// place places p on the node list (read now if fresh), with what this
// replica placed since the nodes' heartbeats counted if counted.
func (f *Nodes) place(ctx context.Context, p lifecycle.Placement, fresh, counted bool) (string, nodeapi.Node, error) {
	list, err := f.nodes(ctx, fresh)
	if err != nil {
		return "", nil, err
	}
	if counted {
		// A refusal rests on the nodes' own word only (Place reads the
		// list afresh, uncounted, before it refuses): counted placements
		// may include sandboxes that failed or have ended since.
		list = f.withPlaced(list)
	}
	req := scheduler.Request{Region: p.Region, Template: p.Template, Networked: p.Networked, Size: f.resources(p.Size)}
	if len(p.Exclude) > 0 {
		req.Exclude = map[string]bool{}
		for _, id := range p.Exclude {
			req.Exclude[id] = true
		}
	}
	cands := make([]scheduler.Candidate, len(list))
	for i, n := range list {
		cands[i] = scheduler.FromNode(n)
	}
	c, err := f.policy.Place(cands, req)
	switch {
	case errors.Is(err, scheduler.ErrRegionUnavailable):
		known := false
		for _, n := range list {
			known = known || n.Region == req.Region || (req.Region == "" && n.Region == f.policy.DefaultRegion)
		}
		if !known {
			return "", nil, fmt.Errorf("%w: %w", lifecycle.ErrUnknownRegion, err)
		}
		return "", nil, fmt.Errorf("%w: %w", lifecycle.ErrRegionUnavailable, err)
	case errors.Is(err, scheduler.ErrTemplateUnavailable), errors.Is(err, scheduler.ErrNoCapacity):
		return "", nil, fmt.Errorf("%w: %w", lifecycle.ErrNoCapacity, err)
	case err != nil:
		return "", nil, err
	}
	for _, n := range list {
		if n.ID == c.ID {
			f.count(n.ID, req.Template, req.Size)
			cl, err := f.client(n)
			return n.ID, cl, err
		}
	}
	return "", nil, fmt.Errorf("placement chose node %s, which is not in the list", c.ID)
}

// resources is what a sandbox of size takes on its node.
func (f *Nodes) resources(size string) scheduler.Resources {
	sz := f.sizes[size]
	return scheduler.Resources{CPUs: sz.CPU, MemoryBytes: int64(sz.MemoryMB) << 20, DiskBytes: int64(sz.DiskMBOrDefault()) << 20}
}

// Released implements lifecycle.Releaser: the room of a sandbox of size
// on node id is free again, which the node's next heartbeat will show.
// Until then this replica's placements see it free: a create after a
// delete would otherwise count both, and once the node looked full
// every placement would read the node list afresh (a PostgreSQL round
// trip) to refuse on the nodes' own word, and then find room.
func (f *Nodes) Released(id, size string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.placed == nil {
		f.placed = map[string][]placement{}
	}
	// What a minute has passed over no heartbeat still lacks (as in
	// withPlaced): a replica that deletes but places nothing, so never
	// runs withPlaced, keeps no more than a minute of them.
	now := time.Now()
	kept := f.placed[id]
	for len(kept) > 0 && now.Sub(kept[0].at) >= time.Minute {
		kept = kept[1:]
	}
	f.placed[id] = append(kept, placement{at: now, size: f.resources(size), freed: true})
}

// count records a sandbox just placed on node id until a heartbeat of the
// node is newer, so that the next placements of this replica see it
// before the node reports it (a burst of creates, a fork's clones, would
// otherwise all go to the node that looked emptiest at its last
// heartbeat).
func (f *Nodes) count(id, template string, size scheduler.Resources) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.placed == nil {
		f.placed = map[string][]placement{}
	}
	f.placed[id] = append(f.placed[id], placement{at: time.Now(), template: template, size: size})
}

// Catalog implements lifecycle.Nodes, on a node list up to staleFor old.
func (f *Nodes) Catalog(ctx context.Context) (lifecycle.Catalog, error) {
	return f.catalog(ctx, false)
}

// FreshCatalog is Catalog on the node list read now.
func (f *Nodes) FreshCatalog(ctx context.Context) (lifecycle.Catalog, error) {
	return f.catalog(ctx, true)
}

func (f *Nodes) catalog(ctx context.Context, fresh bool) (lifecycle.Catalog, error) {
	list, err := f.nodes(ctx, fresh)
	if err != nil {
		return lifecycle.Catalog{}, err
	}
	cat := lifecycle.Catalog{Templates: map[string]bool{}}
	cands := make([]scheduler.Candidate, len(list))
	for i, n := range list {
		cands[i] = scheduler.FromNode(n)
		ns := lifecycle.NodeState{ID: n.ID, Region: n.Region, Address: n.Address, Version: n.Version, State: lifecycle.NodeAlive,
			Capacity: cands[i].Capacity, Allocated: cands[i].Allocated, HeartbeatAt: n.HeartbeatAt, HeartbeatAge: n.HeartbeatAge}
		for _, w := range n.Warm {
			ns.Warm += w
		}
		switch {
		case !f.policy.Alive(cands[i]):
			ns.State = lifecycle.NodeLost
		case n.DiskLow:
			ns.State = lifecycle.NodeDiskLow
		}
		cat.Nodes = append(cat.Nodes, ns)
		if !f.policy.Alive(cands[i]) {
			continue
		}
		for _, t := range n.Templates {
			cat.Templates[t] = true
		}
		cat.Network = cat.Network || n.NetworkEnabled
	}
	cat.Regions = f.policy.Regions(cands)
	return cat, nil
}
