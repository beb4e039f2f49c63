// Package scheduler is the placement of sandboxes on nodes: given the
// fleet's nodes as their last heartbeats describe them and what a sandbox
// needs, it picks the node to start it on, or says why none can. It is
// pure (no I/O, no clock): the control plane reads the nodes from the
// store and passes them in, so a decision is a function of its inputs.
//
// # Filters
//
// A node is a candidate when it is alive (its heartbeat is at most
// Policy.Lapse old), in the request's region, not excluded by the request
// (nodes that just failed this create), has the template built, has
// networking if the sandbox needs it, is not short of disk (DiskLow), and
// has room: a free sandbox slot, the size's memory and disk free (never
// overcommitted), and the size's cores within capacity × CPUOvercommit.
// A node whose report cannot be right (NaN or negative figures) is never a
// candidate.
//
// # Choice
//
// Among the candidates, the nodes with a warm sandbox of the template are
// preferred (a claim skips the boot). Within that set, Place samples K
// nodes at random (K = 2 by default: "power of two choices") and takes the
// one with the most room after placement, room being the smaller of its
// free memory fraction and its free slot fraction (the dimensions that are
// never overcommitted), ties by id.
//
// Why sampled and not least loaded: several control-plane replicas place
// at once from the same store reads, and allocations only change in the
// store with the nodes' next heartbeats. Least loaded sends every create
// of that window to the same node (herding) until it is full; two random
// choices spread them while still keeping the load close to even (the
// most loaded node is only O(log log n) above the mean, against O(log n)
// for one random choice). K >= the number of candidates is least loaded.
package scheduler

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
)

// Errors of Place; the message wrapping each says what is missing and
// where.
var (
	// ErrRegionUnavailable: the region has no node alive (or no node at
	// all: an unknown region).
	ErrRegionUnavailable = errors.New("region unavailable")
	// ErrTemplateUnavailable: the region is alive but no live node in it
	// has the template built.
	ErrTemplateUnavailable = errors.New("template not built in the region")
	// ErrNoCapacity: live nodes have the template, but none can take the
	// sandbox now (full, short of disk, without networking, excluded).
	ErrNoCapacity = errors.New("no capacity")
	// ErrInvalidRequest: the request or the policy is malformed (a bug of
	// the caller, not a state of the fleet).
	ErrInvalidRequest = errors.New("invalid placement request")
)

// Resources is an amount of a node's resources.
type Resources struct {
	CPUs        float64 `json:"cpus"`
	MemoryBytes int64   `json:"memory_bytes"`
	DiskBytes   int64   `json:"disk_bytes"`
	Slots       int     `json:"slots"`
}

// Candidate is a node as placement sees it.
type Candidate struct {
	ID      string
	Region  string
	Address string // carried for the caller; placement ignores it
	// HeartbeatAge is how old the node's last heartbeat is.
	HeartbeatAge time.Duration
	// Capacity is the node's total, Allocated the sum of its sandboxes'
	// sizes (Slots: how many sandboxes).
	Capacity  Resources
	Allocated Resources
	Templates []string
	// Warm: warm sandboxes ready per template.
	Warm           map[string]int
	NetworkEnabled bool
	DiskLow        bool
}

// FromNode is the candidate a store record describes.
func FromNode(n store.Node) Candidate {
	res := func(c store.NodeCapacity) Resources {
		return Resources{CPUs: c.CPUs, MemoryBytes: c.MemoryBytes, DiskBytes: c.DiskBytes, Slots: c.Slots}
	}
	return Candidate{
		ID: n.ID, Region: n.Region, Address: n.Address, HeartbeatAge: n.HeartbeatAge,
		Capacity: res(n.Capacity), Allocated: res(n.Allocated), Templates: n.Templates, Warm: n.Warm,
		NetworkEnabled: n.NetworkEnabled, DiskLow: n.DiskLow,
	}
}

// Request is what a sandbox needs.
type Request struct {
	// Region: "" is Policy.DefaultRegion ("" there too: any region).
	Region   string
	Template string
	// Size: cores, memory and disk of the sandbox's size (Slots ignored:
	// a sandbox takes one).
	Size      Resources
	Networked bool
	// Exclude: nodes not to use (they just failed this create).
	Exclude map[string]bool
}

// Defaults of Policy's zero fields.
const (
	DefaultLapse  = 15 * time.Second
	DefaultSample = 2
)

// Policy is the operator's placement settings. The zero value is usable:
// no default region, 15 s lapse, no CPU overcommit, two choices, the
// process's random source.
type Policy struct {
	// DefaultRegion is the region of a request that names none.
	DefaultRegion string
	// Lapse: a node whose heartbeat is older is dead (0: DefaultLapse).
	Lapse time.Duration
	// CPUOvercommit: a node's sandboxes may be allocated up to its cores
	// × this (0: 1, none). Memory, disk and slots are never overcommitted.
	CPUOvercommit float64
	// Sample is K, the candidates compared per decision (0: DefaultSample).
	Sample int
	// Rand returns a uniform int in [0, n); nil is math/rand/v2's IntN.
	// Must be safe for concurrent use if Place is called concurrently.
	Rand func(n int) int
}

// Validate reports a setting out of range.
func (p Policy) Validate() error {
	switch {
	case p.Lapse < 0:
		return fmt.Errorf("%w: heartbeat lapse %v is negative", ErrInvalidRequest, p.Lapse)
	case math.IsNaN(p.CPUOvercommit) || math.IsInf(p.CPUOvercommit, 0) || p.CPUOvercommit < 0 ||
		(p.CPUOvercommit > 0 && p.CPUOvercommit < 1):
		return fmt.Errorf("%w: CPU overcommit %v must be a finite factor >= 1 (or 0 for none)", ErrInvalidRequest, p.CPUOvercommit)
	case p.Sample < 0:
		return fmt.Errorf("%w: sample size %d is negative", ErrInvalidRequest, p.Sample)
	}
	return nil
}

func (p Policy) lapse() time.Duration {
	if p.Lapse == 0 {
		return DefaultLapse
	}
	return p.Lapse
}

func (p Policy) overcommit() float64 {
	if p.CPUOvercommit == 0 {
		return 1
	}
	return p.CPUOvercommit
}

func (p Policy) sample() int {
	if p.Sample == 0 {
		return DefaultSample
	}
	return p.Sample
}

func (p Policy) intN(n int) int {
	if p.Rand == nil {
		return rand.IntN(n)
	}
	// A broken source must not index out of range.
	v := p.Rand(n)
	if v < 0 || v >= n {
		v = ((v % n) + n) % n
	}
	return v
}

// Alive reports whether c's heartbeat is recent enough (a negative age,
// from clock skew, is recent).
func (p Policy) Alive(c Candidate) bool { return c.HeartbeatAge <= p.lapse() }

func validAmount(r Resources) bool {
	return !math.IsNaN(r.CPUs) && !math.IsInf(r.CPUs, 0) && r.CPUs >= 0 &&
		r.MemoryBytes >= 0 && r.DiskBytes >= 0 && r.Slots >= 0
}

// sane: a report placement can compute with.
func sane(c Candidate) bool { return validAmount(c.Capacity) && validAmount(c.Allocated) }

func hasTemplate(c Candidate, t string) bool {
	for _, x := range c.Templates {
		if x == t {
			return true
		}
	}
	return false
}

// fits reports whether size fits c's free room. Both amounts are sane, so
// the subtractions cannot overflow.
func fits(c Candidate, size Resources, overcommit float64) bool {
	return c.Allocated.Slots < c.Capacity.Slots &&
		size.MemoryBytes <= c.Capacity.MemoryBytes-c.Allocated.MemoryBytes &&
		size.DiskBytes <= c.Capacity.DiskBytes-c.Allocated.DiskBytes &&
		c.Allocated.CPUs+size.CPUs <= c.Capacity.CPUs*overcommit*(1+1e-9)
}

// room is c's free fraction after placing size: the smaller of memory and
// slots. Only called on nodes size fits, so capacities are positive where
// it matters.
func room(c Candidate, size Resources) float64 {
	slots := float64(c.Capacity.Slots-c.Allocated.Slots-1) / float64(c.Capacity.Slots)
	mem := 1.0
	if c.Capacity.MemoryBytes > 0 {
		mem = float64(c.Capacity.MemoryBytes-c.Allocated.MemoryBytes-size.MemoryBytes) / float64(c.Capacity.MemoryBytes)
	}
	return min(slots, mem)
}

func (r Request) check() error {
	if r.Template == "" {
		return fmt.Errorf("%w: no template", ErrInvalidRequest)
	}
	if !validAmount(r.Size) {
		return fmt.Errorf("%w: size %+v has a negative or non-finite figure", ErrInvalidRequest, r.Size)
	}
	return nil
}

// Place picks the node for req among nodes (see the package comment), or
// returns an error wrapping ErrRegionUnavailable, ErrTemplateUnavailable,
// ErrNoCapacity or ErrInvalidRequest that says why.
func (p Policy) Place(nodes []Candidate, req Request) (Candidate, error) {
	if err := p.Validate(); err != nil {
		return Candidate{}, err
	}
	if err := req.check(); err != nil {
		return Candidate{}, err
	}
	region := req.Region
	if region == "" {
		region = p.DefaultRegion
	}
	over := p.overcommit()
	var (
		inRegion, alive, excluded, insane, withTemplate int
		noNetwork, diskLow, full                        int
		eligible, warm                                  []int
	)
	for i := range nodes {
		c := &nodes[i]
		if region != "" && c.Region != region {
			continue
		}
		inRegion++
		if !p.Alive(*c) {
			continue
		}
		alive++
		if req.Exclude[c.ID] {
			excluded++
			continue
		}
		if !sane(*c) {
			insane++
			continue
		}
		if !hasTemplate(*c, req.Template) {
			continue
		}
		withTemplate++
		switch {
		case req.Networked && !c.NetworkEnabled:
			noNetwork++
		case c.DiskLow:
			diskLow++
		case !fits(*c, req.Size, over):
			full++
		default:
			eligible = append(eligible, i)
			if c.Warm[req.Template] > 0 {
				warm = append(warm, i)
			}
		}
	}
	where := "region " + quote(region)
	if region == "" {
		where = "any region"
	}
	switch {
	case inRegion == 0:
		return Candidate{}, fmt.Errorf("%w: %s has no nodes%s", ErrRegionUnavailable, where, knownRegions(nodes))
	case alive == 0:
		return Candidate{}, fmt.Errorf("%w: none of the %d nodes of %s has sent a heartbeat in the last %v; retry later or choose another region",
			ErrRegionUnavailable, inRegion, where, p.lapse())
	case withTemplate == 0 && excluded == 0 && insane == 0:
		return Candidate{}, fmt.Errorf("%w: template %q is not built on any live node of %s%s",
			ErrTemplateUnavailable, req.Template, where, builtIn(nodes, req.Template, region))
	case len(eligible) == 0:
		var why []string
		add := func(n int, what string) {
			if n > 0 {
				why = append(why, fmt.Sprintf("%d %s", n, what))
			}
		}
		add(full, "without room for the size")
		add(diskLow, "short of disk")
		add(noNetwork, "without networking")
		add(excluded, "excluded after failing this create")
		add(insane, "with an invalid capacity report")
		return Candidate{}, fmt.Errorf("%w: no live node of %s can take a %s sandbox now (%s); retry later",
			ErrNoCapacity, where, quote(req.Template), strings.Join(why, ", "))
	}
	pool := eligible
	if len(warm) > 0 {
		pool = warm
	}
	return nodes[p.pick(nodes, pool, req.Size)], nil
}

// pick returns the index, among pool (indexes into nodes), of the best of
// K sampled without replacement. pool is reordered.
func (p Policy) pick(nodes []Candidate, pool []int, size Resources) int {
	k := min(p.sample(), len(pool))
	if k < len(pool) {
		// Partial Fisher-Yates: pool[:k] becomes a uniform sample.
		for i := range k {
			j := i + p.intN(len(pool)-i)
			pool[i], pool[j] = pool[j], pool[i]
		}
		pool = pool[:k]
	}
	best, bestRoom := pool[0], room(nodes[pool[0]], size)
	for _, i := range pool[1:] {
		r := room(nodes[i], size)
		if r > bestRoom || (r == bestRoom && nodes[i].ID < nodes[best].ID) {
			best, bestRoom = i, r
		}
	}
	return best
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

// knownRegions lists the regions that do exist, for an unknown one.
func knownRegions(nodes []Candidate) string {
	seen := map[string]bool{}
	var names []string
	for _, c := range nodes {
		if !seen[c.Region] {
			seen[c.Region] = true
			names = append(names, c.Region)
		}
	}
	if len(names) == 0 {
		return " (no node is registered at all)"
	}
	sort.Strings(names)
	if len(names) > 10 {
		names = append(names[:10], "...")
	}
	return " (regions with nodes: " + strings.Join(names, ", ") + ")"
}

// builtIn says where else the template is built, if anywhere.
func builtIn(nodes []Candidate, template, region string) string {
	seen := map[string]bool{}
	var names []string
	for _, c := range nodes {
		if c.Region != region && !seen[c.Region] && hasTemplate(c, template) {
			seen[c.Region] = true
			names = append(names, c.Region)
		}
	}
	if len(names) == 0 {
		return " (nor anywhere else: build it with `orkestrd admin template build`)"
	}
	sort.Strings(names)
	return " (it is built in: " + strings.Join(names, ", ") + ")"
}

// Region states.
const (
	RegionAvailable   = "available"   // every node alive and not short of disk
	RegionDegraded    = "degraded"    // some are not, at least one is
	RegionUnavailable = "unavailable" // none is
)

// RegionState is a region's summary for GET /v1/regions. Capacity and
// Allocated sum the usable nodes (alive, not short of disk, sane report).
type RegionState struct {
	Name      string    `json:"name"`
	State     string    `json:"state"`
	Nodes     int       `json:"nodes"`
	Alive     int       `json:"nodes_alive"`
	Capacity  Resources `json:"capacity"`
	Allocated Resources `json:"allocated"`
}

// Regions summarizes nodes by region, by name. The default region is
// listed even without nodes (unavailable), so a fleet whose nodes have not
// registered yet says so.
func (p Policy) Regions(nodes []Candidate) []RegionState {
	by := map[string]*RegionState{}
	if p.DefaultRegion != "" {
		by[p.DefaultRegion] = &RegionState{Name: p.DefaultRegion}
	}
	usable := map[string]int{}
	for _, c := range nodes {
		r := by[c.Region]
		if r == nil {
			r = &RegionState{Name: c.Region}
			by[c.Region] = r
		}
		r.Nodes++
		if !p.Alive(c) {
			continue
		}
		r.Alive++
		if c.DiskLow || !sane(c) {
			continue
		}
		usable[c.Region]++
		r.Capacity = addSat(r.Capacity, c.Capacity)
		r.Allocated = addSat(r.Allocated, c.Allocated)
	}
	out := make([]RegionState, 0, len(by))
	for name, r := range by {
		switch u := usable[name]; {
		case u == 0:
			r.State = RegionUnavailable
		case u < r.Nodes:
			r.State = RegionDegraded
		default:
			r.State = RegionAvailable
		}
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// addSat adds sane amounts, saturating instead of overflowing.
func addSat(a, b Resources) Resources {
	sat := func(x, y int64) int64 {
		if x > math.MaxInt64-y {
			return math.MaxInt64
		}
		return x + y
	}
	slots := a.Slots + b.Slots
	if a.Slots > math.MaxInt-b.Slots {
		slots = math.MaxInt
	}
	cpus := a.CPUs + b.CPUs
	if math.IsInf(cpus, 0) {
		cpus = math.MaxFloat64 // JSON has no infinity
	}
	return Resources{CPUs: cpus, MemoryBytes: sat(a.MemoryBytes, b.MemoryBytes), DiskBytes: sat(a.DiskBytes, b.DiskBytes), Slots: slots}
}
