package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/scheduler"
)

// Nodes is how the control plane reaches the hosts that run sandboxes: the one
// in-process node of a single box, or a fleet's nodes over the node API.
type Nodes interface {
	// Node is the node a sandbox record names (store.Sandbox.Node).
	Node(ctx context.Context, id string) (nodeapi.Node, error)
	// Place picks a node for a new running sandbox.
	Place(ctx context.Context, p Placement) (id string, n nodeapi.Node, err error)
	// Catalog says what the nodes offer, for validation and listings.
	Catalog(ctx context.Context) (Catalog, error)
}

// Releaser is a Nodes that counts what it placed on each node until the
// node reports it (fleet.Nodes): it is told when a placement's room is
// free again (a sandbox destroyed or paused, a start that failed), so
// that a burst of creates and deletes between two heartbeats does not
// look like a full node.
type Releaser interface {
	Released(nodeID, size string)
}

// Placement is what a new running sandbox needs from its node.
type Placement struct {
	Region    string // "" for the operator's default region
	Template  string
	Size      string
	Networked bool
	Exclude   []string // nodes that just failed this sandbox
	// Fresh asks for the node list as it is now rather than one read up
	// to a few seconds ago: for rare operations (a fork) that cost far
	// more than the read, so that a node which just came back is used.
	Fresh bool
}

// Catalog is what the nodes offer.
type Catalog struct {
	Templates map[string]bool // built on at least one live node
	Network   bool            // some live node runs networked sandboxes
	Regions   []scheduler.RegionState
	Nodes     []NodeState // every registered node, by id
}

// Node states in NodeState.State.
const (
	NodeAlive   = "alive"    // heartbeat within the timeout
	NodeDiskLow = "disk_low" // alive, but takes no new sandbox: disk under its reserve
	NodeLost    = "lost"     // heartbeat older than the timeout
)

// NodeState is one node as its operator sees it.
type NodeState struct {
	ID, Region string
	Address    string // node API base URL; "" for the one box's in-process node
	Version    string
	State      string // NodeAlive, NodeDiskLow or NodeLost
	Capacity   scheduler.Resources
	Allocated  scheduler.Resources // Slots: the sandboxes it runs
	Warm       int                 // warm sandboxes ready, all templates
	// HeartbeatAt is its last heartbeat by the database's clock (the
	// one box's node: now); HeartbeatAge how old it was when read.
	HeartbeatAt  time.Time
	HeartbeatAge time.Duration
}

// Placement failures: the API answers 503 with these codes.
var (
	ErrRegionUnavailable = errors.New("region_unavailable")
	ErrNoCapacity        = errors.New("no_capacity")
	// ErrUnknownRegion: a region no node has ever registered in (400).
	ErrUnknownRegion = errors.New("unknown_region")
)

// localNodes is the one-box server's single in-process node.
type localNodes struct {
	n *node.Node
}

// LocalNodes serves every sandbox from one in-process node.
func LocalNodes(n *node.Node) Nodes { return localNodes{n} }

func (l localNodes) Node(context.Context, string) (nodeapi.Node, error) { return l.n, nil }

func (l localNodes) Place(_ context.Context, p Placement) (string, nodeapi.Node, error) {
	if p.Region != "" && p.Region != l.n.Region() {
		return "", nil, fmt.Errorf("%w: this server runs region %q only", ErrUnknownRegion, l.n.Region())
	}
	if err := l.n.CheckDisk(); err != nil {
		return "", nil, err
	}
	return l.n.ID(), l.n, nil
}

func (l localNodes) Catalog(ctx context.Context) (Catalog, error) {
	info, err := l.n.Info(ctx)
	if err != nil {
		return Catalog{}, err
	}
	c := Catalog{Templates: map[string]bool{}, Network: info.NetworkEnabled}
	for _, t := range info.Templates {
		c.Templates[t] = true
	}
	c.Regions = scheduler.Policy{}.Regions([]scheduler.Candidate{{
		ID: info.ID, Region: info.Region, Templates: info.Templates, NetworkEnabled: info.NetworkEnabled, DiskLow: info.DiskLow,
		Capacity:  scheduler.Resources(info.Capacity),
		Allocated: scheduler.Resources(info.Allocated),
	}})
	ns := NodeState{ID: info.ID, Region: info.Region, Version: info.Version, State: NodeAlive,
		Capacity: scheduler.Resources(info.Capacity), Allocated: scheduler.Resources(info.Allocated), HeartbeatAt: time.Now().UTC()}
	if info.DiskLow {
		ns.State = NodeDiskLow
	}
	for _, n := range info.Warm {
		ns.Warm += n
	}
	c.Nodes = []NodeState{ns}
	return c, nil
}

// HasTemplate reports whether a catalog has the template built.
func (c Catalog) HasTemplate(name string) bool { return c.Templates[name] }

// Live reports whether any node is alive.
func (c Catalog) Live() bool {
	for _, r := range c.Regions {
		if r.Alive > 0 {
			return true
		}
	}
	return false
}

// RegionNames lists the catalog's regions.
func (c Catalog) RegionNames() []string {
	var out []string
	for _, r := range c.Regions {
		out = append(out, r.Name)
	}
	slices.Sort(out)
	return out
}

// NoNodes is a server without a runtime (tests of the console and the
// key paths): nothing is built, nothing can be placed.
type NoNodes struct{}

func (NoNodes) Node(context.Context, string) (nodeapi.Node, error) {
	return nil, fmt.Errorf("%w: this server runs no nodes", nodeapi.ErrUnreachable)
}
func (NoNodes) Place(context.Context, Placement) (string, nodeapi.Node, error) {
	return "", nil, fmt.Errorf("%w: this server runs no nodes", ErrNoCapacity)
}
func (NoNodes) Catalog(context.Context) (Catalog, error) {
	return Catalog{Templates: map[string]bool{}}, nil
}
