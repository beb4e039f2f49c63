package pool_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/pool"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/fake"
)

// The tests in this file run the pool over the in-memory fake driver
// (package runtime/fake): no root, no sandboxes, part of `make test-unit`.
// pool_test.go runs the same behaviours against gVisor.

var fakeSmall = runtime.Resources{CPU: 0.5, MemoryBytes: 512 << 20, PIDs: 512}

type fakeEnv struct {
	host *fake.Host
	d    *fake.Driver
	p    *pool.Pool
	key  pool.Key
	spec runtime.Spec
}

// fakeSetup is a pool over a fake driver with target sandboxes ready; when
// the test ends the pool is closed and nothing may be left on the host.
func fakeSetup(t *testing.T, target int) *fakeEnv {
	t.Helper()
	h := fake.NewHost(fake.Options{})
	d := h.NewDriver()
	p := pool.New(d, slog.New(slog.NewTextHandler(io.Discard, nil)))
	e := &fakeEnv{host: h, d: d, p: p, key: pool.Key{Template: "fake", Size: "small"},
		spec: runtime.Spec{Template: "fake", Rootfs: t.TempDir(), Resources: fakeSmall}}
	t.Cleanup(func() {
		if err := p.Close(context.Background()); err != nil {
			t.Error(err)
		}
		if err := d.Close(context.Background(), true); err != nil {
			t.Error(err)
		}
		if left := h.Running(); len(left) > 0 {
			t.Errorf("sandboxes left on the host: %v", left)
		}
	})
	if target > 0 {
		p.SetTarget(e.key, e.spec, target)
		e.waitFull(t)
	}
	return e
}

func (e *fakeEnv) waitFull(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.p.WaitFull(ctx); err != nil {
		t.Fatalf("pool never filled: %v (depths %+v)", err, e.p.Depths())
	}
}

// claimResult is how one of claimAtOnce's claims went.
type claimResult struct {
	warm bool
	took time.Duration
}

// claimAtOnce makes n claims at once, destroys what they got and says how
// each went.
func (e *fakeEnv) claimAtOnce(t *testing.T, n int) []claimResult {
	t.Helper()
	out := make([]claimResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			sb, warm, err := e.p.Claim(context.Background(), e.key, e.spec, runtime.Claim{})
			if err != nil {
				t.Error(err)
				return
			}
			out[i] = claimResult{warm: warm, took: time.Since(t0)}
			_ = sb.Destroy(context.Background())
		}()
	}
	wg.Wait()
	return out
}

func (e *fakeEnv) claim(t *testing.T, c runtime.Claim) (runtime.Sandbox, bool) {
	t.Helper()
	sb, warm, err := e.p.Claim(context.Background(), e.key, e.spec, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Destroy(context.Background()) })
	return sb, warm
}

func fakeOutput(t *testing.T, sb runtime.Sandbox, cmd string) string {
	t.Helper()
	var out bytes.Buffer
	res, err := sb.Exec(context.Background(), runtime.ExecRequest{Command: cmd, Stdout: &out, Stderr: &out})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%q: %v %+v %s", cmd, err, res, out.String())
	}
	return out.String()
}

// waitFor polls cond (the pool works in the background).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFakeClaimIsWarmAndCarriesOnlyItsClaim(t *testing.T) {
	e := fakeSetup(t, 2)
	infos, _ := e.d.List(context.Background())
	if len(infos) != 2 {
		t.Fatalf("%d sandboxes for a target of 2", len(infos))
	}
	for _, i := range infos {
		if !i.Pooled || i.Labels["pool"] != e.key.String() || i.Labels["owner"] != "" {
			t.Fatalf("pooled sandbox %+v", i)
		}
	}
	medium := runtime.Resources{CPU: 1, MemoryBytes: 256 << 20, PIDs: 300}
	sb, warm := e.claim(t, runtime.Claim{Env: map[string]string{"SECRET_TOKEN": "s3cr3t"}, Labels: map[string]string{"owner": "acct_1"}, Resources: medium})
	if !warm {
		t.Fatal("a claim from a full pool was cold")
	}
	if got := fakeOutput(t, sb, `printf %s "$SECRET_TOKEN"`); got != "s3cr3t" {
		t.Fatalf("env at claim: %q", got)
	}
	if st, _ := sb.Stats(context.Background()); st.MemoryLimitBytes != 256<<20 || st.CPUQuotaMicros != 100000 || st.PIDsLimit != 300 {
		t.Fatalf("limits at claim: %+v", st)
	}
	if i := sb.Info(); i.Pooled || i.Labels["owner"] != "acct_1" || i.Labels["pool"] != "" {
		t.Fatalf("labels at claim: %+v", i)
	}
	// The pool refills behind the claim, with a sandbox that knows nothing of it.
	e.waitFull(t)
	if c := e.host.Counts(); c.Creates != 3 {
		t.Fatalf("creates after one claim: %d, want 3", c.Creates)
	}
	sb2, warm := e.claim(t, runtime.Claim{})
	if !warm || sb2.ID() == sb.ID() {
		t.Fatalf("second claim: warm %v, id %s (first %s)", warm, sb2.ID(), sb.ID())
	}
	if got := fakeOutput(t, sb2, `printf %s "${SECRET_TOKEN}"`); got != "" {
		t.Fatalf("another claim's env in a pooled sandbox: %q", got)
	}
}

func TestFakeConcurrentClaimsNeverShare(t *testing.T) {
	e := fakeSetup(t, 5)
	const n = 40
	var wg sync.WaitGroup
	var mu sync.Mutex
	ids := map[string]int{}
	warm := 0
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sb, w, err := e.p.Claim(context.Background(), e.key, e.spec, runtime.Claim{Env: map[string]string{"N": fmt.Sprint(i)}})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			ids[sb.ID()]++
			if w {
				warm++
			}
			mu.Unlock()
			if got := fakeOutput(t, sb, `printf %s "$N"`); got != fmt.Sprint(i) {
				t.Errorf("claim %d sees N=%q", i, got)
			}
			_ = sb.Destroy(context.Background())
		}()
	}
	wg.Wait()
	if len(ids) != n {
		t.Fatalf("%d claims got %d distinct sandboxes", n, len(ids))
	}
	if warm < 5 {
		t.Fatalf("%d of %d claims were warm with 5 ready", warm, n)
	}
}

func TestFakeZeroTargetIsColdStart(t *testing.T) {
	e := fakeSetup(t, 0)
	e.p.SetTarget(e.key, e.spec, 0)
	sb, warm := e.claim(t, runtime.Claim{Env: map[string]string{"A": "b"}})
	if warm {
		t.Fatal("a claim from a disabled pool was warm")
	}
	if got := fakeOutput(t, sb, `printf %s "$A"`); got != "b" {
		t.Fatalf("env on a cold start: %q", got)
	}
	if i := sb.Info(); i.Pooled || len(i.Labels) != 0 {
		t.Fatalf("a cold start carries pool labels: %+v", i)
	}
	if c := e.host.Counts(); c.Creates != 1 {
		t.Fatalf("a disabled pool started sandboxes: %d creates", c.Creates)
	}
}

func TestFakeShrinkAndCloseDestroyPooled(t *testing.T) {
	e := fakeSetup(t, 4)
	e.p.SetTarget(e.key, e.spec, 1)
	waitFor(t, "the pool to shrink to 1", func() bool { return len(e.host.Running()) == 1 && e.p.Ready(e.key) == 1 })
	claimed, _ := e.claim(t, runtime.Claim{})
	e.waitFull(t)
	if err := e.p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if left := e.host.Running(); !slices.Equal(left, []string{claimed.ID()}) {
		t.Fatalf("after close: %v running, want only the claimed %s", left, claimed.ID())
	}
	if _, _, err := e.p.Claim(context.Background(), e.key, e.spec, runtime.Claim{}); !errors.Is(err, pool.ErrClosed) {
		t.Fatalf("claim after close: %v", err)
	}
}

func TestFakeDeadPooledSandboxIsReplaced(t *testing.T) {
	e := fakeSetup(t, 1)
	infos, _ := e.d.List(context.Background())
	victim, _ := e.d.Get(infos[0].ID)
	victim.(*fake.Sandbox).Kill(runtime.ErrOutOfMemory)
	_ = victim.Destroy(context.Background())
	waitFor(t, "a replacement", func() bool {
		l, _ := e.d.List(context.Background())
		return len(l) == 1 && l[0].ID != victim.ID() && e.p.Ready(e.key) == 1
	})
	sb, warm := e.claim(t, runtime.Claim{})
	if !warm || sb.ID() == victim.ID() {
		t.Fatalf("claim got warm=%v id=%s (the dead one %s)", warm, sb.ID(), victim.ID())
	}
}

// TestFakeCreateFailures: while creates fail the pool keeps trying (with
// back-off) and a claim fails with the driver's error; once creates work the
// pool fills again.
func TestFakeCreateFailures(t *testing.T) {
	e := fakeSetup(t, 0)
	boom := errors.New("template is broken")
	var attempts atomic.Int64
	e.host.SetFaults(fake.Faults{Create: func(runtime.Spec) error { attempts.Add(1); return boom }})
	e.p.SetTarget(e.key, e.spec, 2)
	waitFor(t, "repeated start attempts", func() bool { return attempts.Load() >= 2 })
	if _, _, err := e.p.Claim(context.Background(), e.key, e.spec, runtime.Claim{}); !errors.Is(err, boom) {
		t.Fatalf("claim while creates fail: %v", err)
	}
	if e.p.Ready(e.key) != 0 || len(e.host.Running()) != 0 {
		t.Fatal("failed creates left sandboxes")
	}
	e.host.SetFaults(fake.Faults{})
	e.waitFull(t)
	if r := e.p.Ready(e.key); r != 2 {
		t.Fatalf("ready after recovery: %d", r)
	}
}

// TestFakeClaimThatFailsConfigure: a warm sandbox that cannot take its claim
// is destroyed and never handed out; the claim moves on.
func TestFakeClaimThatFailsConfigure(t *testing.T) {
	e := fakeSetup(t, 2)
	var mu sync.Mutex
	refused := ""
	e.host.SetFaults(fake.Faults{Configure: func(id string, c runtime.Claim) error {
		mu.Lock()
		defer mu.Unlock()
		if refused == "" {
			refused = id
			return errors.New("agent refused the claim")
		}
		return nil
	}})
	sb, warm := e.claim(t, runtime.Claim{Labels: map[string]string{"owner": "x"}})
	if !warm {
		t.Fatal("the claim did not move on to the next warm sandbox")
	}
	mu.Lock()
	id := refused
	mu.Unlock()
	if id == "" || sb.ID() == id {
		t.Fatalf("refused %q, claimed %s", id, sb.ID())
	}
	waitFor(t, "the refused sandbox to be destroyed", func() bool { return !slices.Contains(e.host.Running(), id) })
	// A cold start whose claim fails is destroyed as well.
	e.p.SetTarget(e.key, e.spec, 0)
	e.host.SetFaults(fake.Faults{Configure: func(string, runtime.Claim) error { return errors.New("no") }})
	before := e.host.Counts().Destroys
	if _, _, err := e.p.Claim(context.Background(), e.key, e.spec, runtime.Claim{}); err == nil {
		t.Fatal("a claim whose configure fails succeeded")
	}
	if e.host.Counts().Destroys <= before {
		t.Fatal("the cold start whose claim failed was not destroyed")
	}
}

// TestFakeClaimRefusedForWhatItAsks: a claim any sandbox would refuse (a
// bad variable name) is answered with ErrInvalidRequest at once. It costs
// the one warm sandbox it took, not the whole pool and a cold start.
func TestFakeClaimRefusedForWhatItAsks(t *testing.T) {
	e := fakeSetup(t, 3)
	before := e.host.Counts()
	_, _, err := e.p.Claim(context.Background(), e.key, e.spec, runtime.Claim{Env: map[string]string{"A=B": "x"}})
	if !errors.Is(err, runtime.ErrInvalidRequest) {
		t.Fatalf("a claim with a bad variable name: %v, want ErrInvalidRequest", err)
	}
	if c := e.host.Counts(); c.Creates != before.Creates {
		t.Errorf("the refused claim started %d sandboxes", c.Creates-before.Creates)
	}
	if n := e.p.Ready(e.key); n != 2 {
		t.Errorf("%d warm sandboxes left after a refused claim, want 2 of 3", n)
	}
	waitFor(t, "the taken sandbox to be destroyed", func() bool { return e.host.Counts().Destroys == before.Destroys+1 })
}

// TestFakePoolFollowsDemand: claims that find the pool empty double its
// target up to Max, within Budget; idle, it halves back to its base.
func TestFakePoolFollowsDemand(t *testing.T) {
	e := fakeSetup(t, 1)
	e.p.SetDemand(pool.Demand{Max: 8, Budget: 6, IdleShrink: time.Second})
	target := func() (ready, target int) {
		for _, d := range e.p.Depths() {
			if d.Key == e.key {
				return d.Ready, d.Target
			}
		}
		return 0, 0
	}
	// The pool's own starts wait while four claims come in: one is warm,
	// three find the pool empty and each doubles its target (1, 2, 4),
	// the last within the budget (6, not 8).
	held := make(chan struct{})
	e.host.SetFaults(fake.Faults{Create: func(s runtime.Spec) error {
		if s.Labels["pool"] != "" {
			<-held
		}
		return nil
	}})
	e.claimAtOnce(t, 4)
	if _, tg := target(); tg != 6 {
		t.Fatalf("target after three claims found the pool empty: %d, want 6 (the budget; max 8)", tg)
	}
	close(held)
	e.waitFull(t)
	if r, _ := target(); r != 6 {
		t.Fatalf("the grown pool holds %d", r)
	}
	// Idle, it shrinks back to the base and destroys what it no longer needs.
	waitFor(t, "the idle pool to shrink to its base", func() bool { r, tg := target(); return tg == 1 && r == 1 })
	waitFor(t, "extra sandboxes to be destroyed", func() bool { return len(e.host.Running()) == 1 })
}

// TestFakeClaimWaitsForARefillUnderWay: a claim that finds the pool empty
// while a refill of it is under way takes that refill when it is ready,
// instead of a cold start beside it; claims beyond the refills under way
// start their own at once; a refill that takes far longer than the pool's
// starts do is waited for only that long, then the claim starts its own
// sandbox.
func TestFakeClaimWaitsForARefillUnderWay(t *testing.T) {
	e := fakeSetup(t, 0)
	const startTakes = 150 * time.Millisecond
	var cold atomic.Int64
	held := make(chan struct{})
	var hold atomic.Bool
	e.host.SetFaults(fake.Faults{Create: func(s runtime.Spec) error {
		if s.Labels["pool"] == "" {
			cold.Add(1)
			return nil
		}
		if hold.Load() {
			<-held
		}
		time.Sleep(startTakes)
		return nil
	}})
	e.p.SetTarget(e.key, e.spec, 1)
	e.waitFull(t) // the pool learns how long its starts take

	if _, warm := e.claim(t, runtime.Claim{}); !warm {
		t.Fatal("the claim of a full pool was cold")
	}
	// The refill behind that claim is under way: the next claim waits for it.
	t0 := time.Now()
	_, warm := e.claim(t, runtime.Claim{})
	if !warm || cold.Load() != 0 {
		t.Fatalf("a claim during a refill: warm %v, %d cold starts; want the refill", warm, cold.Load())
	}
	if took := time.Since(t0); took > 2*startTakes {
		t.Fatalf("the claim took %v waiting for a refill of %v", took, startTakes)
	}

	// Each refill under way is waited for by one claim: of three claims at
	// once, one waits for it and two start their own at once.
	e.waitFull(t)
	if _, warm := e.claim(t, runtime.Claim{}); !warm {
		t.Fatal("the claim of a full pool was cold")
	}
	coldBefore := cold.Load()
	claims := e.claimAtOnce(t, 3)
	warmN := 0
	for _, c := range claims {
		if c.warm {
			warmN++
		} else if c.took >= startTakes {
			t.Errorf("a claim beyond the refill under way started cold only after %v: it waited", c.took)
		}
	}
	if c := cold.Load() - coldBefore; warmN != 1 || c != 2 {
		t.Fatalf("three claims during one refill: %d took it, %d started cold; want 1 and 2", warmN, c)
	}
	cold.Store(0)

	// A refill stuck far past the usual start time is not waited for.
	e.waitFull(t)
	hold.Store(true)
	defer close(held)
	if _, warm := e.claim(t, runtime.Claim{}); !warm {
		t.Fatal("the claim of a full pool was cold")
	}
	t0 = time.Now()
	_, warm = e.claim(t, runtime.Claim{})
	took := time.Since(t0)
	if warm || cold.Load() != 1 {
		t.Fatalf("a claim during a stuck refill: warm %v, %d cold starts; want one cold start", warm, cold.Load())
	}
	if took < startTakes/2 || took > 10*startTakes {
		t.Fatalf("the claim gave up on the stuck refill after %v; want about the pool's start time (%v)", took, startTakes)
	}
}

// A claim that leaves sandboxes in its pool holds its refill back for
// refillDefer (the claimed sandbox's first command runs without a start
// beside it); a claim that empties the pool starts the refill at once.
func TestFakeRefillWaitsUnlessThePoolIsEmpty(t *testing.T) {
	const deferFor = 2 * time.Second
	t.Cleanup(pool.SetRefillDefer(deferFor))
	e := fakeSetup(t, 0)
	var mu sync.Mutex
	var starts []time.Time
	e.host.SetFaults(fake.Faults{Create: func(s runtime.Spec) error {
		if s.Labels["pool"] != "" {
			mu.Lock()
			starts = append(starts, time.Now())
			mu.Unlock()
		}
		return nil
	}})
	startsSince := func(t0 time.Time) []time.Duration {
		mu.Lock()
		defer mu.Unlock()
		var out []time.Duration
		for _, s := range starts {
			if s.After(t0) {
				out = append(out, s.Sub(t0))
			}
		}
		return out
	}
	e.p.SetTarget(e.key, e.spec, 2)
	e.waitFull(t)

	t0 := time.Now()
	if _, warm := e.claim(t, runtime.Claim{}); !warm {
		t.Fatal("the claim of a full pool was cold")
	}
	time.Sleep(deferFor / 2)
	if got := startsSince(t0); len(got) != 0 {
		t.Fatalf("a claim that left a sandbox ready: refill started %v after it, want none before %v", got, deferFor)
	}
	e.waitFull(t)
	if got := startsSince(t0); len(got) != 1 || got[0] < deferFor {
		t.Fatalf("a claim that left a sandbox ready: refills started %v after it, want one after %v", got, deferFor)
	}

	// Two claims: the second empties the pool, and its refills start at
	// once, the first's deferral notwithstanding.
	t1 := time.Now()
	for range 2 {
		if _, warm := e.claim(t, runtime.Claim{}); !warm {
			t.Fatal("the claim of a full pool was cold")
		}
	}
	e.waitFull(t)
	got := startsSince(t1)
	if len(got) < 2 || got[0] >= deferFor/2 {
		t.Fatalf("claims that emptied the pool: refills started %v after them, want two at once", got)
	}
}

// The refills of claims made while a deferral runs wait for that deferral,
// not for one each claim pushes later: under a steady trickle of claims
// the pool still refills.
func TestFakeRefillDeferralIsNotPushedBack(t *testing.T) {
	const deferFor = 2 * time.Second
	t.Cleanup(pool.SetRefillDefer(deferFor))
	e := fakeSetup(t, 0)
	var mu sync.Mutex
	var first time.Time
	e.host.SetFaults(fake.Faults{Create: func(s runtime.Spec) error {
		mu.Lock()
		if s.Labels["pool"] != "" && first.IsZero() {
			first = time.Now()
		}
		mu.Unlock()
		return nil
	}})
	e.p.SetTarget(e.key, e.spec, 3)
	e.waitFull(t)
	mu.Lock()
	first = time.Time{}
	mu.Unlock()

	t0 := time.Now()
	if _, warm := e.claim(t, runtime.Claim{}); !warm {
		t.Fatal("the claim of a full pool was cold")
	}
	time.Sleep(deferFor * 3 / 4)
	if _, warm := e.claim(t, runtime.Claim{}); !warm {
		t.Fatal("the second claim, with a sandbox left, was cold")
	}
	e.waitFull(t)
	mu.Lock()
	got := first.Sub(t0)
	mu.Unlock()
	// Pushed back by the second claim, the first refill would start
	// 3.5 s in; held by the first claim's deferral, 2 s in.
	if got < deferFor || got >= deferFor*3/4+deferFor {
		t.Fatalf("the first refill started %v after the first claim; want from %v, before the second claim's deferral would end", got, deferFor)
	}
}
