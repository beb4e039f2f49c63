package sqlstore_test

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
)

func testNode(id, region string) store.Node {
	return store.Node{
		ID: id, Region: region, Address: "https://10.0.0.1:7443", Version: "v0.9.0", APIVersion: 1,
		Capacity:       store.NodeCapacity{CPUs: 16, MemoryBytes: 64 << 30, DiskBytes: 500 << 30, Slots: 100},
		Allocated:      store.NodeCapacity{CPUs: 2.5, MemoryBytes: 3 << 30, DiskBytes: 10 << 30, Slots: 5},
		Running:        5,
		Templates:      []string{"debian-12", "python-3.11"},
		Warm:           map[string]int{"python-3.11": 2},
		NetworkEnabled: true,
	}
}

// reported is what a heartbeat records of n: everything but the times.
func reported(n store.Node) store.Node {
	n.RegisteredAt, n.HeartbeatAt, n.HeartbeatAge = time.Time{}, time.Time{}, 0
	return n
}

func nodeByID(t *testing.T, s *sqlstore.Store, id string) store.Node {
	t.Helper()
	all, err := s.ListNodes(bg)
	ok(t, "ListNodes", err)
	for _, n := range all {
		if n.ID == id {
			return n
		}
	}
	t.Fatalf("node %q not listed (%d nodes)", id, len(all))
	return store.Node{}
}

func TestNodesHeartbeat(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		nodes, err := s.ListNodes(bg)
		ok(t, "ListNodes empty", err)
		if len(nodes) != 0 {
			t.Fatalf("fresh store lists %d nodes", len(nodes))
		}
		a := testNode("node-a", "fsn1")
		ok(t, "first heartbeat", s.Heartbeat(bg, a))
		got := nodeByID(t, s, "node-a")
		if !reflect.DeepEqual(reported(got), a) {
			t.Fatalf("stored node:\n got %+v\nwant %+v", reported(got), a)
		}
		if got.HeartbeatAt.IsZero() || !got.RegisteredAt.Equal(got.HeartbeatAt) {
			t.Fatalf("first heartbeat: registered %v, heartbeat %v", got.RegisteredAt, got.HeartbeatAt)
		}
		// The database's clock and this process's are the same host's here.
		if skew := time.Since(got.HeartbeatAt); skew < -time.Minute || skew > time.Minute {
			t.Fatalf("heartbeat_at %v is %v from now", got.HeartbeatAt, skew)
		}
		if got.HeartbeatAge < 0 || got.HeartbeatAge > time.Minute {
			t.Fatalf("HeartbeatAge %v right after a heartbeat", got.HeartbeatAge)
		}

		// The next heartbeat replaces the report and keeps the registration.
		// Age the row first, so the new heartbeat time must differ.
		_, err = d.raw(t).Exec("UPDATE nodes SET heartbeat_at = heartbeat_at - 90000, registered_at = registered_at - 90000")
		ok(t, "age the row", err)
		old := nodeByID(t, s, "node-a")
		if old.HeartbeatAge < 90*time.Second || old.HeartbeatAge > 91*time.Second+time.Minute {
			t.Fatalf("HeartbeatAge %v after moving the heartbeat 90 s back", old.HeartbeatAge)
		}
		a2 := a
		a2.Templates, a2.Warm = []string{"node-22"}, nil
		a2.Allocated, a2.Running, a2.DiskLow, a2.NetworkEnabled = store.NodeCapacity{}, 0, true, false
		a2.Version, a2.APIVersion, a2.Region, a2.Address = "v1.0.0", 2, "nbg1", "https://10.0.0.2:7443"
		ok(t, "second heartbeat", s.Heartbeat(bg, a2))
		got = nodeByID(t, s, "node-a")
		want := a2
		want.Warm = map[string]int{} // nil is stored as empty
		if !reflect.DeepEqual(reported(got), want) {
			t.Fatalf("after the second heartbeat:\n got %+v\nwant %+v", reported(got), want)
		}
		if !got.RegisteredAt.Equal(old.RegisteredAt) {
			t.Fatalf("registration moved from %v to %v", old.RegisteredAt, got.RegisteredAt)
		}
		if !got.HeartbeatAt.After(old.HeartbeatAt) || got.HeartbeatAge > time.Minute {
			t.Fatalf("heartbeat not renewed: %v (age %v) after %v", got.HeartbeatAt, got.HeartbeatAge, old.HeartbeatAt)
		}

		// Listing is by id; nil templates read back empty.
		b := testNode("node-0", "fsn1")
		b.Templates = nil
		ok(t, "heartbeat b", s.Heartbeat(bg, b))
		nodes, err = s.ListNodes(bg)
		ok(t, "ListNodes", err)
		if len(nodes) != 2 || nodes[0].ID != "node-0" || nodes[1].ID != "node-a" {
			t.Fatalf("ListNodes order: %+v", nodes)
		}
		if nodes[0].Templates == nil || len(nodes[0].Templates) != 0 {
			t.Fatalf("nil templates read back as %#v", nodes[0].Templates)
		}

		// Nodes with the same lists get their own copies.
		c := testNode("node-c", "fsn1")
		d2 := testNode("node-d", "fsn1")
		ok(t, "heartbeat c", s.Heartbeat(bg, c))
		ok(t, "heartbeat d", s.Heartbeat(bg, d2))
		nodes, err = s.ListNodes(bg)
		ok(t, "ListNodes", err)
		nodes[2].Templates[0], nodes[2].Warm["python-3.11"] = "changed", 99
		if nodes[3].ID != "node-d" || nodes[3].Templates[0] != "debian-12" || nodes[3].Warm["python-3.11"] != 2 {
			t.Fatalf("ListNodes shares lists between nodes: %+v", nodes[3])
		}
		ok(t, "RemoveNode c", s.RemoveNode(bg, "node-c"))
		ok(t, "RemoveNode d", s.RemoveNode(bg, "node-d"))

		ok(t, "RemoveNode", s.RemoveNode(bg, "node-0"))
		isErr(t, "RemoveNode again", s.RemoveNode(bg, "node-0"), store.ErrNotFound)
		nodes, _ = s.ListNodes(bg)
		if len(nodes) != 1 || nodes[0].ID != "node-a" {
			t.Fatalf("after RemoveNode: %+v", nodes)
		}
	})
}

// A node's report is input: what cannot be right is refused with a reason
// and stores nothing; odd but valid text is stored verbatim.
func TestHeartbeatRefusesHostile(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		cases := []struct {
			name   string
			change func(*store.Node)
			want   string
		}{
			{"empty id", func(n *store.Node) { n.ID = "" }, "node id is empty"},
			{"empty region", func(n *store.Node) { n.Region = "" }, "region is empty"},
			{"long id", func(n *store.Node) { n.ID = strings.Repeat("n", 129) }, "at most 128"},
			{"control characters", func(n *store.Node) { n.ID = "node\n1" }, "control characters"},
			{"not utf-8", func(n *store.Node) { n.Region = "fsn\xff" }, "not UTF-8"},
			{"NaN cpus", func(n *store.Node) { n.Capacity.CPUs = math.NaN() }, "finite"},
			{"infinite cpus", func(n *store.Node) { n.Allocated.CPUs = math.Inf(1) }, "finite"},
			{"negative cpus", func(n *store.Node) { n.Capacity.CPUs = -1 }, "finite"},
			{"negative memory", func(n *store.Node) { n.Capacity.MemoryBytes = -1 }, "negative"},
			{"negative disk", func(n *store.Node) { n.Allocated.DiskBytes = math.MinInt64 }, "negative"},
			{"negative slots", func(n *store.Node) { n.Capacity.Slots = -5 }, "negative"},
			{"negative running", func(n *store.Node) { n.Running = -1 }, "negative"},
			{"negative warm", func(n *store.Node) { n.Warm = map[string]int{"x": -1} }, "warm"},
			{"empty template", func(n *store.Node) { n.Templates = []string{""} }, "template name is empty"},
			{"too many templates", func(n *store.Node) { n.Templates = make([]string, 2000) }, "templates"},
			{"long address", func(n *store.Node) { n.Address = strings.Repeat("a", 5000) }, "too long"},
		}
		for _, c := range cases {
			n := testNode("node-h", "fsn1")
			c.change(&n)
			err := s.Heartbeat(bg, n)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "heartbeat refused") {
				t.Errorf("%s: got %v, want an error mentioning %q", c.name, err, c.want)
			}
		}
		nodes, err := s.ListNodes(bg)
		ok(t, "ListNodes", err)
		if len(nodes) != 0 {
			t.Fatalf("refused heartbeats stored %d nodes", len(nodes))
		}
		// Quotes and SQL are just text; huge figures round-trip.
		n := testNode(`n'; DROP TABLE nodes; --`, `"region"`)
		n.Capacity = store.NodeCapacity{CPUs: math.MaxFloat64, MemoryBytes: math.MaxInt64, DiskBytes: math.MaxInt64, Slots: math.MaxInt32}
		n.Warm = map[string]int{"ünïcode/tpl": math.MaxInt32}
		ok(t, "odd heartbeat", s.Heartbeat(bg, n))
		if got := nodeByID(t, s, n.ID); !reflect.DeepEqual(reported(got), n) {
			t.Fatalf("odd node:\n got %+v\nwant %+v", reported(got), n)
		}
	})
}

func TestLeaseExclusiveAcrossStores(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		// Two pools on one database, as two control-plane replicas.
		s1, s2 := d.open(t), d.open(t)
		const holders, rounds = 8, 10
		for round := range rounds {
			name := fmt.Sprintf("loop-%d", round)
			if round%2 == 1 {
				// Half the rounds race for an existing, expired lease
				// rather than a missing row.
				held, err := s1.TryLease(bg, name, "old", time.Hour)
				ok(t, "old holder", err)
				if !held {
					t.Fatal("a fresh lease was refused")
				}
				_, err = d.raw(t).Exec("UPDATE leases SET expires_at = expires_at - 7200000 WHERE name = '" + name + "'")
				ok(t, "expire", err)
			}
			var wg sync.WaitGroup
			var mu sync.Mutex
			var winners []string
			start := make(chan struct{})
			for i := range holders {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s := s1
					if i%2 == 1 {
						s = s2
					}
					holder := fmt.Sprintf("replica-%d", i)
					<-start
					held, err := s.TryLease(bg, name, holder, time.Hour)
					if err != nil {
						t.Errorf("TryLease %s: %v", holder, err)
						return
					}
					if held {
						mu.Lock()
						winners = append(winners, holder)
						mu.Unlock()
					}
				}()
			}
			close(start)
			wg.Wait()
			if len(winners) != 1 {
				t.Fatalf("round %d: %d holders got the lease (%v), want exactly 1", round, len(winners), winners)
			}
			// The winner renews; every other holder is still refused.
			for i := range holders {
				holder := fmt.Sprintf("replica-%d", i)
				held, err := s2.TryLease(bg, name, holder, time.Hour)
				ok(t, "TryLease again", err)
				if held != (holder == winners[0]) {
					t.Fatalf("round %d: %s holds=%v, the winner is %s", round, holder, held, winners[0])
				}
			}
		}
	})
}

func TestLeaseExpiryAndRelease(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s1, s2 := d.open(t), d.open(t)
		// held tries the lease "deadlines".
		held := func(s *sqlstore.Store, holder string, ttl time.Duration) bool {
			t.Helper()
			h, err := s.TryLease(bg, "deadlines", holder, ttl)
			ok(t, "TryLease "+holder, err)
			return h
		}
		if !held(s1, "a", time.Hour) || held(s2, "b", time.Hour) {
			t.Fatal("a should hold the lease and b be refused")
		}
		acquired := func() int64 {
			var ms int64
			ok(t, "acquired_at", d.raw(t).QueryRow("SELECT acquired_at FROM leases WHERE name = 'deadlines'").Scan(&ms))
			return ms
		}
		first := acquired()
		// Expired by the database's clock: b takes it over, a has lost it.
		_, err := d.raw(t).Exec("UPDATE leases SET expires_at = expires_at - 7200000")
		ok(t, "expire", err)
		if !held(s2, "b", time.Hour) {
			t.Fatal("b did not take over an expired lease")
		}
		if held(s1, "a", time.Hour) {
			t.Fatal("a renewed a lease b took over")
		}
		if acquired() < first {
			t.Fatal("a takeover kept the old holder's acquisition time")
		}
		// A renewal keeps the acquisition time.
		takeover := acquired()
		if !held(s2, "b", time.Hour) || acquired() != takeover {
			t.Fatal("renewal changed acquired_at")
		}
		// Only the holder releases.
		ok(t, "release by a", s1.ReleaseLease(bg, "deadlines", "a"))
		if held(s1, "a", time.Hour) {
			t.Fatal("a non-holder's release freed the lease")
		}
		ok(t, "release by b", s2.ReleaseLease(bg, "deadlines", "b"))
		if !held(s1, "a", time.Hour) {
			t.Fatal("a could not take a released lease")
		}
		ok(t, "release of a missing lease", s1.ReleaseLease(bg, "nothing", "a"))

		// Real expiry by the database's clock: a 1 ms lease is over once
		// 200 ms have passed, however slow this machine is.
		h, err := s1.TryLease(bg, "short-2", "a", time.Millisecond)
		ok(t, "short lease", err)
		if !h {
			t.Fatal("short lease refused")
		}
		time.Sleep(200 * time.Millisecond)
		h, err = s2.TryLease(bg, "short-2", "b", time.Hour)
		ok(t, "take the expired short lease", err)
		if !h {
			t.Fatal("b could not take a lease whose 1 ms ttl is long over")
		}

		for _, c := range []struct {
			name, holder string
			ttl          time.Duration
		}{{"", "a", time.Second}, {"x", "", time.Second}, {"x", "a", 0}, {"x", "a", -time.Hour}, {"x", "a", time.Microsecond}, {"x\x00", "a", time.Second}} {
			if _, err := s1.TryLease(bg, c.name, c.holder, c.ttl); err == nil {
				t.Errorf("TryLease(%q, %q, %v) accepted", c.name, c.holder, c.ttl)
			}
		}
	})
}

func TestEndSandbox(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "a")
		sb := mkSandbox(t, s, newSandbox(a.ID, msNow())) // running on node-1 as rt-1

		for _, c := range []struct {
			sandbox, runtime string
			status           store.Status
		}{{sb.ID, "rt-1", store.StatusRunning}, {sb.ID, "rt-1", store.StatusPaused}, {sb.ID, "rt-1", ""}, {sb.ID, "", store.StatusError}, {"", "rt-1", store.StatusError}} {
			if _, err := s.EndSandbox(bg, c.sandbox, c.runtime, c.status, "x"); err == nil {
				t.Errorf("EndSandbox(%q, %q, %q) accepted", c.sandbox, c.runtime, c.status)
			}
		}
		ended, err := s.EndSandbox(bg, sb.ID, "rt-other", store.StatusError, "oom")
		ok(t, "EndSandbox other runtime", err)
		if ended {
			t.Fatal("ended a sandbox that runs on another runtime id")
		}
		if cur, _ := s.GetSandbox(bg, a.ID, sb.ID); cur.Version != 0 || cur.Status != store.StatusRunning {
			t.Fatalf("a refused EndSandbox changed the row: %+v", cur)
		}

		ended, err = s.EndSandbox(bg, sb.ID, "rt-1", store.StatusError, "out_of_memory")
		ok(t, "EndSandbox", err)
		if !ended {
			t.Fatal("EndSandbox did not end a running sandbox on its runtime")
		}
		cur, err := s.GetSandbox(bg, a.ID, sb.ID)
		ok(t, "GetSandbox", err)
		if cur.Status != store.StatusError || cur.ErrorMessage != "out_of_memory" || cur.RuntimeID != "" ||
			cur.ExpiresAt != nil || cur.TerminatedAt == nil || cur.Version != 1 || cur.Node != "node-1" {
			t.Fatalf("ended row: %+v", cur)
		}
		if _, err := s.UpdateSandbox(bg, sb, 0); !errors.Is(err, store.ErrStale) {
			t.Fatalf("an update from before the end: %v, want ErrStale", err)
		}
		ended, err = s.EndSandbox(bg, sb.ID, "rt-1", store.StatusTerminated, "again")
		ok(t, "EndSandbox again", err)
		if ended {
			t.Fatal("ended an ended sandbox twice")
		}

		// A starting one ends too (terminated); a paused one does not.
		st := newSandbox(a.ID, msNow())
		st.Status, st.RuntimeID = store.StatusStarting, "rt-2"
		mkSandbox(t, s, st)
		ended, err = s.EndSandbox(bg, st.ID, "rt-2", store.StatusTerminated, "")
		ok(t, "EndSandbox starting", err)
		if cur, _ := s.GetSandbox(bg, a.ID, st.ID); !ended || cur.Status != store.StatusTerminated {
			t.Fatalf("starting sandbox: ended=%v %+v", ended, cur)
		}
		p := newSandbox(a.ID, msNow())
		p.Status, p.RuntimeID = store.StatusPaused, "rt-3"
		mkSandbox(t, s, p)
		ended, err = s.EndSandbox(bg, p.ID, "rt-3", store.StatusError, "x")
		ok(t, "EndSandbox paused", err)
		if ended {
			t.Fatal("ended a paused sandbox")
		}
		ended, err = s.EndSandbox(bg, "sbx_missing", "rt-1", store.StatusError, "x")
		if err != nil || ended {
			t.Fatalf("missing sandbox: %v, %v", ended, err)
		}
	})
}

func TestLoseNode(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s1, s2 := d.open(t), d.open(t)
		a := mkAccount(t, s1, "a")
		b := mkAccount(t, s1, "b")
		base := msNow().Add(-time.Hour)
		mk := func(acc, node string, st store.Status, i int) store.Sandbox {
			sb := newSandbox(acc, base.Add(time.Duration(i)*time.Second))
			sb.Node, sb.Status, sb.RuntimeID = node, st, fmt.Sprintf("rt-%d", i)
			return mkSandbox(t, s1, sb)
		}
		var lost []string
		keep := map[string]store.Sandbox{}
		for i, c := range []struct {
			acc, node string
			st        store.Status
		}{
			{a.ID, "node-a", store.StatusRunning}, {b.ID, "node-a", store.StatusStarting},
			{a.ID, "node-a", store.StatusPaused}, {a.ID, "node-a", store.StatusTerminated},
			{a.ID, "node-a", store.StatusError}, {a.ID, "node-b", store.StatusRunning},
			{b.ID, "node-a", store.StatusRunning}, {a.ID, "", store.StatusStarting},
			{a.ID, "node-a2", store.StatusRunning},
		} {
			sb := mk(c.acc, c.node, c.st, i)
			if c.node == "node-a" && (c.st == store.StatusRunning || c.st == store.StatusStarting) {
				lost = append(lost, sb.ID)
			} else {
				keep[sb.ID] = sb
			}
		}
		_, err := s1.LoseNode(bg, "", "node_lost")
		if err == nil {
			t.Fatal("LoseNode with an empty node id accepted")
		}
		got, err := s2.LoseNode(bg, "node-a", "node_lost")
		ok(t, "LoseNode", err)
		var ids []string
		for _, sb := range got {
			ids = append(ids, sb.ID)
			if sb.Status != store.StatusError || sb.ErrorMessage != "node_lost" || sb.RuntimeID != "" ||
				sb.ExpiresAt != nil || sb.TerminatedAt == nil || sb.Version != 1 || sb.Node != "node-a" {
				t.Fatalf("lost sandbox as returned: %+v", sb)
			}
			cur, err := s1.GetSandbox(bg, sb.AccountID, sb.ID)
			ok(t, "GetSandbox", err)
			assertSame(t, "returned vs stored", sb, cur)
		}
		if !reflect.DeepEqual(ids, lost) {
			t.Fatalf("LoseNode returned %v, want %v (oldest first)", ids, lost)
		}
		for id, before := range keep {
			cur, err := s1.GetSandbox(bg, before.AccountID, id)
			ok(t, "GetSandbox kept", err)
			assertSame(t, "untouched by LoseNode", cur, before)
		}
		again, err := s1.LoseNode(bg, "node-a", "node_lost")
		ok(t, "LoseNode again", err)
		if len(again) != 0 {
			t.Fatalf("a second LoseNode ended %d more", len(again))
		}
	})
}

func TestSandboxesOnNode(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "a")
		b := mkAccount(t, s, "b")
		base := msNow().Add(-time.Hour)
		want := map[store.Status][]string{}
		var all []string
		for i, st := range []store.Status{store.StatusRunning, store.StatusPaused, store.StatusStarting, store.StatusTerminated, store.StatusRunning} {
			acc := a.ID
			if i%2 == 1 {
				acc = b.ID
			}
			sb := newSandbox(acc, base.Add(time.Duration(i)*time.Second))
			sb.Status, sb.Node = st, "node-x"
			mkSandbox(t, s, sb)
			want[st] = append(want[st], sb.ID)
			all = append(all, sb.ID)
			other := newSandbox(acc, base.Add(time.Duration(i)*time.Second))
			other.Status, other.Node = st, "node-y"
			mkSandbox(t, s, other)
		}
		ids := func(list []store.Sandbox, err error) []string {
			t.Helper()
			ok(t, "SandboxesOnNode", err)
			var out []string
			for _, sb := range list {
				if sb.Node != "node-x" {
					t.Fatalf("sandbox of %s listed", sb.Node)
				}
				out = append(out, sb.ID)
			}
			return out
		}
		if got := ids(s.SandboxesOnNode(bg, "node-x")); !reflect.DeepEqual(got, all) {
			t.Fatalf("any status: %v, want %v", got, all)
		}
		if got := ids(s.SandboxesOnNode(bg, "node-x", store.StatusRunning)); !reflect.DeepEqual(got, want[store.StatusRunning]) {
			t.Fatalf("running: %v, want %v", got, want[store.StatusRunning])
		}
		if got := ids(s.SandboxesOnNode(bg, "node-x", store.StatusPaused, store.StatusStarting)); len(got) != 2 {
			t.Fatalf("paused|starting: %v", got)
		}
		if got := ids(s.SandboxesOnNode(bg, "node-missing")); len(got) != 0 {
			t.Fatalf("unknown node: %v", got)
		}
		if got := ids(s.SandboxesOnNode(bg, "node-x' OR '1'='1")); len(got) != 0 {
			t.Fatalf("quoted node id: %v", got)
		}
	})
}

// TestConcurrentAdmissionAcrossReplicas: four stores on one database (four
// connection pools, as four control-plane replicas) race creates and
// resumes of one account against its concurrency limit; the account
// never has more active sandboxes than the limit, and exactly the free
// slots are taken.
func TestConcurrentAdmissionAcrossReplicas(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		stores := []*sqlstore.Store{d.open(t), d.open(t), d.open(t), d.open(t)}
		a := mkAccount(t, stores[0], "a")
		const limit, running, creates, resumes = 7, 2, 40, 20
		for range running {
			mkSandbox(t, stores[0], newSandbox(a.ID, msNow()))
		}
		var paused []store.Sandbox
		for range resumes {
			sb := newSandbox(a.ID, msNow())
			sb.Status, sb.ExpiresAt, sb.SnapshotDir = store.StatusPaused, nil, "snap"
			paused = append(paused, mkSandbox(t, stores[0], sb))
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		admitted, refused := 0, 0
		start := make(chan struct{})
		for i := range creates + resumes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := stores[i%len(stores)]
				<-start
				var err error
				if i < creates {
					err = s.CreateSandbox(bg, newSandbox(a.ID, msNow()), limit)
				} else {
					sb := paused[i-creates]
					sb.Status = store.StatusStarting
					_, err = s.UpdateSandbox(bg, sb, limit)
				}
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					admitted++
				case errors.Is(err, store.ErrLimit):
					refused++
				default:
					t.Errorf("op %d: %v", i, err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if admitted != limit-running || refused != creates+resumes-(limit-running) {
			t.Fatalf("%d admitted and %d refused, want %d and %d", admitted, refused, limit-running, creates+resumes-(limit-running))
		}
		active, err := stores[1].SandboxesByStatus(bg, store.StatusStarting, store.StatusRunning)
		ok(t, "SandboxesByStatus", err)
		if len(active) != limit {
			t.Fatalf("%d active sandboxes stored, want the limit %d", len(active), limit)
		}
	})
}

// TestLoseNodeIfLapsed: a node is lost only if its heartbeat is older
// than the lapse when the transaction looks, by the database's clock.
func TestLoseNodeIfLapsed(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "a")
		sb := newSandbox(a.ID, msNow())
		sb.Node = "node-a"
		mkSandbox(t, s, sb)
		ok(t, "heartbeat", s.Heartbeat(bg, testNode("node-a", "fsn1")))

		for _, lapse := range []time.Duration{0, -time.Second} {
			if _, _, err := s.LoseNodeIfLapsed(bg, "node-a", lapse, "node_lost"); err == nil {
				t.Fatalf("lapse %v accepted", lapse)
			}
		}
		if _, _, err := s.LoseNodeIfLapsed(bg, "", time.Second, "node_lost"); err == nil {
			t.Fatal("empty node id accepted")
		}
		lost, lapsed, err := s.LoseNodeIfLapsed(bg, "node-a", 15*time.Second, "node_lost")
		ok(t, "fresh node", err)
		if lapsed || len(lost) != 0 {
			t.Fatalf("a node that just sent a heartbeat was lost: %v %v", lapsed, lost)
		}
		if cur, _ := s.GetSandbox(bg, a.ID, sb.ID); cur.Status != store.StatusRunning || cur.Version != 0 {
			t.Fatalf("sandbox of a live node changed: %+v", cur)
		}
		// 20 s without a heartbeat, by the database's clock.
		_, err = d.raw(t).Exec("UPDATE nodes SET heartbeat_at = heartbeat_at - 20000")
		ok(t, "age", err)
		lost, lapsed, err = s.LoseNodeIfLapsed(bg, "node-a", time.Minute, "node_lost")
		ok(t, "under a longer lapse", err)
		if lapsed || len(lost) != 0 {
			t.Fatal("lost under a lapse it is within")
		}
		lost, lapsed, err = s.LoseNodeIfLapsed(bg, "node-a", 15*time.Second, "node_lost")
		ok(t, "lapsed node", err)
		if !lapsed || len(lost) != 1 || lost[0].ID != sb.ID || lost[0].Status != store.StatusError || lost[0].ErrorMessage != "node_lost" {
			t.Fatalf("lapsed node: %v %+v", lapsed, lost)
		}
		// A node without a record has no heartbeat: lapsed.
		other := newSandbox(a.ID, msNow())
		other.Node = "node-gone"
		mkSandbox(t, s, other)
		lost, lapsed, err = s.LoseNodeIfLapsed(bg, "node-gone", 15*time.Second, "node_lost")
		ok(t, "unregistered node", err)
		if !lapsed || len(lost) != 1 || lost[0].ID != other.ID {
			t.Fatalf("unregistered node: %v %+v", lapsed, lost)
		}
	})
}

const (
	admitURLEnv     = "ORKESTR_TEST_ADMIT_URL"
	admitAccountEnv = "ORKESTR_TEST_ADMIT_ACCOUNT"
	admitAtEnv      = "ORKESTR_TEST_ADMIT_AT" // unix ms to start at
	admitLimit      = 7
	admitPerProcess = 10
)

// TestAdmissionAcrossProcesses: separate processes (this test binary, see
// TestHelperAdmitProcess), as control-plane replicas on separate hosts
// would be, each race creates against the account's concurrency limit and
// try one lease at the same moment: together they admit exactly the
// limit, and one of them holds the lease.
func TestAdmissionAcrossProcesses(t *testing.T) {
	eachDB(t, func(t *testing.T, d testDB) {
		s := d.open(t)
		a := mkAccount(t, s, "a")
		const procs = 3
		// Start together, once every process has opened its store.
		at := time.Now().Add(2 * time.Second).UnixMilli()
		var wg sync.WaitGroup
		outs := make([][]byte, procs)
		errs := make([]error, procs)
		for i := range procs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAdmitProcess$", "-test.count=1", "-test.v")
				cmd.Env = append(os.Environ(), admitURLEnv+"="+d.url, admitAccountEnv+"="+a.ID,
					admitAtEnv+"="+strconv.FormatInt(at, 10), helperNameEnv+"="+fmt.Sprintf("proc-%d", i))
				outs[i], errs[i] = cmd.CombinedOutput()
			}()
		}
		wg.Wait()
		admitted, leases := 0, 0
		for i := range procs {
			if errs[i] != nil {
				t.Fatalf("process %d: %v\n%s", i, errs[i], outs[i])
			}
			var n, held int
			m := regexp.MustCompile(`admitted=(\d+) lease=(\d)`).FindSubmatch(outs[i])
			if m == nil {
				t.Fatalf("process %d printed no result:\n%s", i, outs[i])
			}
			n, _ = strconv.Atoi(string(m[1]))
			held, _ = strconv.Atoi(string(m[2]))
			admitted += n
			leases += held
		}
		if admitted != admitLimit || leases != 1 {
			t.Fatalf("%d processes admitted %d creates (limit %d) and %d held the lease (want 1)", procs, admitted, admitLimit, leases)
		}
		active, err := s.SandboxesByStatus(bg, store.StatusStarting, store.StatusRunning)
		ok(t, "SandboxesByStatus", err)
		if len(active) != admitLimit {
			t.Fatalf("%d active sandboxes stored, want %d", len(active), admitLimit)
		}
	})
}

// TestHelperAdmitProcess is a child of TestAdmissionAcrossProcesses; on
// its own it does nothing.
func TestHelperAdmitProcess(t *testing.T) {
	u := os.Getenv(admitURLEnv)
	if u == "" {
		t.Skip("helper process for TestAdmissionAcrossProcesses")
	}
	s, err := sqlstore.Open(bg, u)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	account, name := os.Getenv(admitAccountEnv), os.Getenv(helperNameEnv)
	at, err := strconv.ParseInt(os.Getenv(admitAtEnv), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	// Warm the pool so the race is not decided by connecting.
	if _, err := s.ListNodes(bg); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(time.UnixMilli(at)))
	var wg sync.WaitGroup
	var mu sync.Mutex
	admitted, held := 0, false
	for range admitPerProcess {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.CreateSandbox(bg, newSandbox(account, msNow()), admitLimit)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				admitted++
			case !errors.Is(err, store.ErrLimit):
				t.Errorf("CreateSandbox: %v", err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		h, err := s.TryLease(bg, "deadlines", name, time.Hour)
		if err != nil {
			t.Errorf("TryLease: %v", err)
		}
		mu.Lock()
		held = h
		mu.Unlock()
	}()
	wg.Wait()
	lease := 0
	if held {
		lease = 1
	}
	fmt.Printf("admitted=%d lease=%d\n", admitted, lease)
}
