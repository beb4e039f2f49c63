package scheduler_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/scheduler"
	"github.com/orkestr-eu/orkestr/internal/store"
)

const gib = int64(1) << 30

// node is a live node of region fsn1 with debian-12 built, networking, 8
// cores, 16 GiB, 100 GiB disk, 10 slots and nothing allocated.
func node(id string, change ...func(*scheduler.Candidate)) scheduler.Candidate {
	c := scheduler.Candidate{
		ID: id, Region: "fsn1", HeartbeatAge: time.Second,
		Capacity:  scheduler.Resources{CPUs: 8, MemoryBytes: 16 * gib, DiskBytes: 100 * gib, Slots: 10},
		Templates: []string{"debian-12"}, NetworkEnabled: true,
	}
	for _, f := range change {
		f(&c)
	}
	return c
}

func region(r string) func(*scheduler.Candidate) {
	return func(c *scheduler.Candidate) { c.Region = r }
}

func dead(c *scheduler.Candidate) { c.HeartbeatAge = time.Minute }

func allocated(cpus float64, mem int64, slots int) func(*scheduler.Candidate) {
	return func(c *scheduler.Candidate) {
		c.Allocated = scheduler.Resources{CPUs: cpus, MemoryBytes: mem, Slots: slots}
	}
}

func warm(n int) func(*scheduler.Candidate) {
	return func(c *scheduler.Candidate) { c.Warm = map[string]int{"debian-12": n} }
}

// small is a 1-core, 1 GiB, 5 GiB-disk sandbox of debian-12 in fsn1.
func small() scheduler.Request {
	return scheduler.Request{Region: "fsn1", Template: "debian-12",
		Size: scheduler.Resources{CPUs: 1, MemoryBytes: gib, DiskBytes: 5 * gib}}
}

func TestPlace(t *testing.T) {
	nan := math.NaN()
	cases := []struct {
		name   string
		policy scheduler.Policy
		nodes  []scheduler.Candidate
		req    func(*scheduler.Request)
		want   string // node id, or "" with err
		err    error
		msg    string // in the error
	}{
		{name: "empty list", err: scheduler.ErrRegionUnavailable, msg: "no node is registered"},
		{name: "all dead", nodes: []scheduler.Candidate{node("a", dead), node("b", dead)},
			err: scheduler.ErrRegionUnavailable, msg: `none of the 2 nodes of region "fsn1" has sent a heartbeat in the last 15s`},
		{name: "lapse is the policy's", policy: scheduler.Policy{Lapse: 2 * time.Minute},
			nodes: []scheduler.Candidate{node("a", dead)}, want: "a"},
		{name: "negative age (clock skew) is alive", nodes: []scheduler.Candidate{node("a", func(c *scheduler.Candidate) { c.HeartbeatAge = -time.Hour })}, want: "a"},
		{name: "unknown region", nodes: []scheduler.Candidate{node("a"), node("b", region("nbg1"))},
			req: func(r *scheduler.Request) { r.Region = "mars" }, err: scheduler.ErrRegionUnavailable,
			msg: `region "mars" has no nodes (regions with nodes: fsn1, nbg1)`},
		{name: "region filter", nodes: []scheduler.Candidate{node("a"), node("b", region("nbg1"))},
			req: func(r *scheduler.Request) { r.Region = "nbg1" }, want: "b"},
		{name: "default region", policy: scheduler.Policy{DefaultRegion: "nbg1"},
			nodes: []scheduler.Candidate{node("a"), node("b", region("nbg1"))},
			req:   func(r *scheduler.Request) { r.Region = "" }, want: "b"},
		{name: "no region anywhere: any region", nodes: []scheduler.Candidate{node("b", region("nbg1"))},
			req: func(r *scheduler.Request) { r.Region = "" }, want: "b"},
		{name: "template built only elsewhere", nodes: []scheduler.Candidate{node("a"), node("b", region("nbg1"), func(c *scheduler.Candidate) { c.Templates = []string{"node-22"} })},
			req: func(r *scheduler.Request) { r.Template = "node-22" }, err: scheduler.ErrTemplateUnavailable,
			msg: `template "node-22" is not built on any live node of region "fsn1" (it is built in: nbg1)`},
		{name: "template built nowhere", nodes: []scheduler.Candidate{node("a")},
			req: func(r *scheduler.Request) { r.Template = "windows" }, err: scheduler.ErrTemplateUnavailable, msg: "nor anywhere else"},
		{name: "template only on a dead node", nodes: []scheduler.Candidate{node("a", dead, func(c *scheduler.Candidate) { c.Templates = []string{"x"} }), node("b")},
			req: func(r *scheduler.Request) { r.Template = "x" }, err: scheduler.ErrTemplateUnavailable},
		{name: "networking needed", nodes: []scheduler.Candidate{node("a", func(c *scheduler.Candidate) { c.NetworkEnabled = false })},
			req: func(r *scheduler.Request) { r.Networked = true }, err: scheduler.ErrNoCapacity, msg: "1 without networking"},
		{name: "networking not needed", nodes: []scheduler.Candidate{node("a", func(c *scheduler.Candidate) { c.NetworkEnabled = false })}, want: "a"},
		{name: "networking picks the node that has it", nodes: []scheduler.Candidate{node("a", func(c *scheduler.Candidate) { c.NetworkEnabled = false }), node("b", allocated(7, 14*gib, 9))},
			req: func(r *scheduler.Request) { r.Networked = true }, want: "b"},
		{name: "disk low", nodes: []scheduler.Candidate{node("a", func(c *scheduler.Candidate) { c.DiskLow = true })},
			err: scheduler.ErrNoCapacity, msg: "1 short of disk"},
		{name: "slots full", nodes: []scheduler.Candidate{node("a", allocated(0, 0, 10))}, err: scheduler.ErrNoCapacity, msg: "1 without room"},
		{name: "memory full", nodes: []scheduler.Candidate{node("a", allocated(0, 15*gib+1, 1))}, err: scheduler.ErrNoCapacity},
		{name: "memory exactly enough", nodes: []scheduler.Candidate{node("a", allocated(0, 15*gib, 1))}, want: "a"},
		{name: "disk full", nodes: []scheduler.Candidate{node("a", func(c *scheduler.Candidate) { c.Allocated.DiskBytes = 96 * gib })}, err: scheduler.ErrNoCapacity},
		{name: "cpu full", nodes: []scheduler.Candidate{node("a", allocated(7.5, 0, 1))}, err: scheduler.ErrNoCapacity},
		{name: "cpu overcommit", policy: scheduler.Policy{CPUOvercommit: 2}, nodes: []scheduler.Candidate{node("a", allocated(15, 0, 1))}, want: "a"},
		{name: "cpu overcommit bound", policy: scheduler.Policy{CPUOvercommit: 2}, nodes: []scheduler.Candidate{node("a", allocated(15.5, 0, 1))}, err: scheduler.ErrNoCapacity},
		{name: "zero capacity node", nodes: []scheduler.Candidate{node("a", func(c *scheduler.Candidate) { c.Capacity = scheduler.Resources{} })}, err: scheduler.ErrNoCapacity},
		{name: "excluded", nodes: []scheduler.Candidate{node("a"), node("b", allocated(7, 14*gib, 9))},
			req: func(r *scheduler.Request) { r.Exclude = map[string]bool{"a": true} }, want: "b"},
		{name: "all excluded", nodes: []scheduler.Candidate{node("a")},
			req: func(r *scheduler.Request) { r.Exclude = map[string]bool{"a": true} }, err: scheduler.ErrNoCapacity, msg: "1 excluded after failing"},
		{name: "reasons are counted", nodes: []scheduler.Candidate{node("a", allocated(0, 0, 10)), node("b", allocated(0, 0, 10)), node("c", func(c *scheduler.Candidate) { c.DiskLow = true }), node("d", dead)},
			err: scheduler.ErrNoCapacity, msg: `no live node of region "fsn1" can take a "debian-12" sandbox now (2 without room for the size, 1 short of disk); retry later`},
		{name: "NaN capacity is skipped", nodes: []scheduler.Candidate{node("a", func(c *scheduler.Candidate) { c.Capacity.CPUs = nan }), node("b", allocated(7, 14*gib, 9))}, want: "b"},
		{name: "only insane nodes", nodes: []scheduler.Candidate{
			node("a", func(c *scheduler.Candidate) { c.Capacity.CPUs = nan }),
			node("b", func(c *scheduler.Candidate) { c.Allocated.MemoryBytes = -gib }),
			node("c", func(c *scheduler.Candidate) { c.Capacity.Slots = -1 }),
			node("d", func(c *scheduler.Candidate) { c.Allocated.CPUs = math.Inf(-1) }),
		}, err: scheduler.ErrNoCapacity, msg: "4 with an invalid capacity report"},
		{name: "huge capacity", nodes: []scheduler.Candidate{node("a", func(c *scheduler.Candidate) {
			c.Capacity = scheduler.Resources{CPUs: math.MaxFloat64, MemoryBytes: math.MaxInt64, DiskBytes: math.MaxInt64, Slots: math.MaxInt}
		})}, want: "a"},
		{name: "huge capacity, all allocated", nodes: []scheduler.Candidate{node("a", func(c *scheduler.Candidate) {
			c.Capacity = scheduler.Resources{CPUs: math.MaxFloat64, MemoryBytes: math.MaxInt64, DiskBytes: math.MaxInt64, Slots: math.MaxInt}
			c.Allocated = scheduler.Resources{CPUs: 0, MemoryBytes: math.MaxInt64, DiskBytes: 0, Slots: 1}
		})}, err: scheduler.ErrNoCapacity},
		{name: "huge request", nodes: []scheduler.Candidate{node("a")},
			req: func(r *scheduler.Request) { r.Size.MemoryBytes = math.MaxInt64 }, err: scheduler.ErrNoCapacity},
		{name: "warm preferred over room", nodes: []scheduler.Candidate{node("a"), node("b", allocated(6, 12*gib, 8), warm(1))}, want: "b"},
		{name: "warm of another template ignored", nodes: []scheduler.Candidate{node("a"), node("b", allocated(6, 12*gib, 8), func(c *scheduler.Candidate) { c.Warm = map[string]int{"node-22": 3} })}, want: "a"},
		{name: "warm but full is not a candidate", nodes: []scheduler.Candidate{node("a"), node("b", allocated(0, 0, 10), warm(1))}, want: "a"},
		{name: "warm on a dead node ignored", nodes: []scheduler.Candidate{node("a"), node("b", dead, warm(4))}, want: "a"},
		{name: "empty template", nodes: []scheduler.Candidate{node("a")}, req: func(r *scheduler.Request) { r.Template = "" }, err: scheduler.ErrInvalidRequest},
		{name: "NaN size", nodes: []scheduler.Candidate{node("a")}, req: func(r *scheduler.Request) { r.Size.CPUs = nan }, err: scheduler.ErrInvalidRequest},
		{name: "negative size", nodes: []scheduler.Candidate{node("a")}, req: func(r *scheduler.Request) { r.Size.MemoryBytes = -1 }, err: scheduler.ErrInvalidRequest},
		{name: "bad overcommit", policy: scheduler.Policy{CPUOvercommit: 0.5}, nodes: []scheduler.Candidate{node("a")}, err: scheduler.ErrInvalidRequest},
		{name: "NaN overcommit", policy: scheduler.Policy{CPUOvercommit: nan}, nodes: []scheduler.Candidate{node("a")}, err: scheduler.ErrInvalidRequest},
		{name: "negative lapse", policy: scheduler.Policy{Lapse: -time.Second}, nodes: []scheduler.Candidate{node("a")}, err: scheduler.ErrInvalidRequest},
		{name: "negative sample", policy: scheduler.Policy{Sample: -1}, nodes: []scheduler.Candidate{node("a")}, err: scheduler.ErrInvalidRequest},
		{name: "broken random source", policy: scheduler.Policy{Rand: func(n int) int { return -7 * n }},
			nodes: []scheduler.Candidate{node("a"), node("b"), node("c")}, want: "a"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := small()
			if c.req != nil {
				c.req(&req)
			}
			before := fmt.Sprintf("%#v", c.nodes)
			got, err := c.policy.Place(c.nodes, req)
			if after := fmt.Sprintf("%#v", c.nodes); after != before {
				t.Fatalf("Place changed its input:\n%s\n%s", before, after)
			}
			if c.err != nil {
				if !errors.Is(err, c.err) || !strings.Contains(fmt.Sprint(err), c.msg) {
					t.Fatalf("got %q (node %q), want %v with %q", err, got.ID, c.err, c.msg)
				}
				for _, other := range []error{scheduler.ErrRegionUnavailable, scheduler.ErrTemplateUnavailable, scheduler.ErrNoCapacity, scheduler.ErrInvalidRequest} {
					if other != c.err && errors.Is(err, other) {
						t.Fatalf("%v is also %v", err, other)
					}
				}
				return
			}
			if err != nil || got.ID != c.want {
				t.Fatalf("got node %q, %v; want %q", got.ID, err, c.want)
			}
		})
	}
}

// seeded is a deterministic random source.
func seeded(seed uint64) func(int) int {
	return rand.New(rand.NewPCG(seed, 1)).IntN
}

// rooms: ten nodes, n<i> with i slots of 10 allocated (n0 has the most
// room, n9 the least).
func rooms() []scheduler.Candidate {
	var nodes []scheduler.Candidate
	for i := range 10 {
		nodes = append(nodes, node(fmt.Sprintf("n%d", i), allocated(0, int64(i)*gib, i)))
	}
	return nodes
}

func TestPlaceBestOfK(t *testing.T) {
	nodes := rooms()
	count := func(p scheduler.Policy, n int) map[string]int {
		got := map[string]int{}
		for range n {
			c, err := p.Place(nodes, small())
			if err != nil {
				t.Fatal(err)
			}
			got[c.ID]++
		}
		return got
	}
	// K = 2: the worst node is never chosen (it loses to whichever it is
	// sampled with), the best is chosen most, and the choice is spread.
	two := count(scheduler.Policy{Rand: seeded(1)}, 2000)
	if two["n9"] != 0 {
		t.Fatalf("best of two chose the fullest node %d times", two["n9"])
	}
	for i := 1; i < 9; i++ {
		if two["n0"] <= two[fmt.Sprintf("n%d", i)] {
			t.Fatalf("best of two: n0 chosen %d times, n%d %d times: %v", two["n0"], i, two[fmt.Sprintf("n%d", i)], two)
		}
	}
	if len(two) < 5 {
		t.Fatalf("best of two concentrated on %d nodes: %v", len(two), two)
	}
	// K >= candidates: least loaded, always.
	all := count(scheduler.Policy{Sample: 10, Rand: seeded(1)}, 50)
	if all["n0"] != 50 {
		t.Fatalf("best of all: %v", all)
	}
	// K = 1: uniform; the fullest node is chosen too.
	one := count(scheduler.Policy{Sample: 1, Rand: seeded(1)}, 2000)
	if one["n9"] < 100 || one["n0"] > 300 {
		t.Fatalf("best of one is not uniform: %v", one)
	}
	// The same source gives the same decisions.
	if a, b := count(scheduler.Policy{Rand: seeded(7)}, 300), count(scheduler.Policy{Rand: seeded(7)}, 300); !reflect.DeepEqual(a, b) {
		t.Fatalf("same seed, different choices: %v, %v", a, b)
	}
	// Ties go to the smaller id whatever the sample order.
	tie := []scheduler.Candidate{node("z"), node("y"), node("x")}
	for seed := range uint64(20) {
		if c, _ := (scheduler.Policy{Sample: 3, Rand: seeded(seed)}).Place(tie, small()); c.ID != "x" {
			t.Fatalf("tie went to %s", c.ID)
		}
	}
	// The default source works (and is safe to share).
	if _, err := (scheduler.Policy{}).Place(nodes, small()); err != nil {
		t.Fatal(err)
	}
}

// TestPlaceSpreadsStaleReads is the reason for sampling: placements made
// from one read of the store (several replicas, heartbeats not yet
// updated) all go to one node when least loaded, and spread with best of
// two.
func TestPlaceSpreadsStaleReads(t *testing.T) {
	var nodes []scheduler.Candidate
	for i := range 50 {
		nodes = append(nodes, node(fmt.Sprintf("n%02d", i), allocated(0, int64(i%5)*gib, i%5)))
	}
	distinct := func(p scheduler.Policy) int {
		seen := map[string]bool{}
		for range 20 {
			c, err := p.Place(nodes, small())
			if err != nil {
				t.Fatal(err)
			}
			seen[c.ID] = true
		}
		return len(seen)
	}
	if n := distinct(scheduler.Policy{Sample: 1000, Rand: seeded(3)}); n != 1 {
		t.Fatalf("least loaded spread 20 stale placements over %d nodes, want 1 (herding)", n)
	}
	if n := distinct(scheduler.Policy{Rand: seeded(3)}); n < 10 {
		t.Fatalf("best of two put 20 stale placements on only %d nodes", n)
	}
}

// TestPlaceKeepsLoadEven: 900 placements into 50 nodes of 20 slots, each
// recorded before the next (fresh reads): best of two fills them evenly.
func TestPlaceKeepsLoadEven(t *testing.T) {
	var nodes []scheduler.Candidate
	for i := range 50 {
		nodes = append(nodes, node(fmt.Sprintf("n%02d", i), func(c *scheduler.Candidate) {
			c.Capacity = scheduler.Resources{CPUs: 64, MemoryBytes: 64 * gib, DiskBytes: 1 << 50, Slots: 20}
		}))
	}
	p := scheduler.Policy{Rand: seeded(11)}
	idx := map[string]int{}
	for i, c := range nodes {
		idx[c.ID] = i
	}
	for range 900 {
		c, err := p.Place(nodes, small())
		if err != nil {
			t.Fatal(err)
		}
		a := &nodes[idx[c.ID]].Allocated
		a.Slots++
		a.MemoryBytes += gib
		a.CPUs++
	}
	lo, hi := math.MaxInt, 0
	for _, c := range nodes {
		lo, hi = min(lo, c.Allocated.Slots), max(hi, c.Allocated.Slots)
	}
	// The mean is 18; one random choice would leave nodes at 10 and full ones.
	if lo < 15 || hi > 20 {
		t.Fatalf("after 900 placements the least loaded node has %d sandboxes and the most %d", lo, hi)
	}
	// Then the fleet is full: 1000 slots, 900 used; 100 more fit and no more.
	for i := range 100 {
		c, err := p.Place(nodes, small())
		if err != nil {
			t.Fatalf("placement %d of the last 100: %v", i, err)
		}
		nodes[idx[c.ID]].Allocated.Slots++
		nodes[idx[c.ID]].Allocated.MemoryBytes += gib
	}
	if _, err := p.Place(nodes, small()); !errors.Is(err, scheduler.ErrNoCapacity) {
		t.Fatalf("a full fleet: %v", err)
	}
}

func TestRegions(t *testing.T) {
	p := scheduler.Policy{}
	if got := p.Regions(nil); len(got) != 0 {
		t.Fatalf("no nodes: %+v", got)
	}
	huge := func(c *scheduler.Candidate) {
		c.Capacity = scheduler.Resources{CPUs: math.MaxFloat64, MemoryBytes: math.MaxInt64, DiskBytes: math.MaxInt64, Slots: math.MaxInt}
	}
	nodes := []scheduler.Candidate{
		node("a", allocated(1, gib, 1)), node("b", allocated(2, 2*gib, 2)), // fsn1: available
		node("c", region("nbg1")), node("d", region("nbg1"), dead), // nbg1: degraded
		node("e", region("hel1"), dead),                                             // hel1: unavailable
		node("f", region("ash"), func(c *scheduler.Candidate) { c.DiskLow = true }), // ash: unavailable
		node("g", region("big"), huge), node("h", region("big"), huge),              // big: sums saturate
		node("i", region("odd"), func(c *scheduler.Candidate) { c.Capacity.CPUs = math.NaN() }), node("j", region("odd")), // odd: degraded
	}
	got := p.Regions(nodes)
	byName := map[string]scheduler.RegionState{}
	var names []string
	for _, r := range got {
		byName[r.Name] = r
		names = append(names, r.Name)
	}
	if want := []string{"ash", "big", "fsn1", "hel1", "nbg1", "odd"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("regions %v, want %v", names, want)
	}
	fsn := byName["fsn1"]
	want := scheduler.RegionState{Name: "fsn1", State: "available", Nodes: 2, Alive: 2,
		Capacity:  scheduler.Resources{CPUs: 16, MemoryBytes: 32 * gib, DiskBytes: 200 * gib, Slots: 20},
		Allocated: scheduler.Resources{CPUs: 3, MemoryBytes: 3 * gib, Slots: 3}}
	if !reflect.DeepEqual(fsn, want) {
		t.Fatalf("fsn1:\n got %+v\nwant %+v", fsn, want)
	}
	for name, st := range map[string]string{"nbg1": "degraded", "hel1": "unavailable", "ash": "unavailable", "big": "available", "odd": "degraded"} {
		if byName[name].State != st {
			t.Errorf("%s: %s, want %s", name, byName[name].State, st)
		}
	}
	if r := byName["nbg1"]; r.Nodes != 2 || r.Alive != 1 || r.Capacity.Slots != 10 {
		t.Errorf("nbg1 counts the dead node's capacity or miscounts: %+v", r)
	}
	if r := byName["ash"]; r.Alive != 1 || r.Capacity.Slots != 0 {
		t.Errorf("ash: %+v", r)
	}
	if r := byName["big"]; r.Capacity.MemoryBytes != math.MaxInt64 || r.Capacity.Slots != math.MaxInt || r.Capacity.CPUs != math.MaxFloat64 {
		t.Errorf("big did not saturate: %+v", r)
	}
	if _, err := json.Marshal(got); err != nil {
		t.Fatalf("regions do not encode: %v", err)
	}
	// The default region is listed without nodes.
	want = scheduler.RegionState{Name: "fsn1", State: "unavailable"}
	if got := (scheduler.Policy{DefaultRegion: "fsn1"}).Regions(nil); len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Fatalf("default region without nodes: %+v", got)
	}
	if got := (scheduler.Policy{DefaultRegion: "fsn1"}).Regions(nodes); len(got) != 6 || !reflect.DeepEqual(got[2], fsn) {
		t.Fatalf("default region with nodes: %+v", got)
	}
}

func TestFromNode(t *testing.T) {
	n := store.Node{ID: "a", Region: "fsn1", Address: "https://a", HeartbeatAge: 3 * time.Second,
		Capacity:  store.NodeCapacity{CPUs: 4, MemoryBytes: 8, DiskBytes: 9, Slots: 10},
		Allocated: store.NodeCapacity{CPUs: 1, MemoryBytes: 2, DiskBytes: 3, Slots: 4},
		Templates: []string{"t"}, Warm: map[string]int{"t": 1}, NetworkEnabled: true, DiskLow: true}
	want := scheduler.Candidate{ID: "a", Region: "fsn1", Address: "https://a", HeartbeatAge: 3 * time.Second,
		Capacity:  scheduler.Resources{CPUs: 4, MemoryBytes: 8, DiskBytes: 9, Slots: 10},
		Allocated: scheduler.Resources{CPUs: 1, MemoryBytes: 2, DiskBytes: 3, Slots: 4},
		Templates: []string{"t"}, Warm: map[string]int{"t": 1}, NetworkEnabled: true, DiskLow: true}
	if got := scheduler.FromNode(n); !reflect.DeepEqual(got, want) {
		t.Fatalf("FromNode:\n got %+v\nwant %+v", got, want)
	}
}
