// Package pool keeps started sandboxes waiting per (template, size, whether
// networked), so that
// creating a sandbox is a claim of one that already runs instead of a cold
// start. Nothing about the owner is known to a pooled sandbox: env, limits
// and labels are applied when it is claimed, and each one is handed out once.
package pool

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"os"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// Key names one pool. Networked pools hold sandboxes whose network
// namespace and interface are made and deny everything until the claim
// sets their mode.
type Key struct {
	Template  string
	Size      string
	Networked bool
}

func (k Key) String() string {
	s := k.Template + "/" + k.Size
	if k.Networked {
		s += "/net"
	}
	return s
}

// Pool is a set of warm pools over one driver.
type Pool struct {
	driver runtime.Driver
	log    *slog.Logger

	mu       sync.Mutex
	pools    map[Key]*bucket
	closed   bool
	wg       sync.WaitGroup
	demand   Demand
	starting int // starts in flight over all pools
	starts   int // most starts in flight over all pools (Demand.Starts or the host's)
}

// Demand makes pools follow demand: a pool that a claim finds empty, or
// leaves empty, doubles its target, up to Max and within Budget over all
// pools; a pool above its base target that sees no claim for IdleShrink
// halves it again. The zero Demand keeps every pool at the target SetTarget
// gave it.
//
// Refills run concurrently, up to Starts at a time over all pools. A claim
// that empties its pool starts its refill at once; one that leaves
// sandboxes ready starts it refillDefer later (see refillDefer).
type Demand struct {
	Max        int           // most sandboxes one pool may be kept at
	Budget     int           // most pooled sandboxes over all pools (the operator's memory budget)
	IdleShrink time.Duration // default 2 min
	// Starts bounds the sandboxes being started at once over all pools;
	// 0: HostStarts().
	Starts int
}

// SetDemand sets how pools follow demand (see Demand).
func (p *Pool) SetDemand(d Demand) {
	if d.IdleShrink <= 0 {
		d.IdleShrink = 2 * time.Minute
	}
	p.mu.Lock()
	p.demand = d
	p.starts = d.Starts
	if p.starts <= 0 {
		p.starts = HostStarts()
	}
	for _, b := range p.pools {
		b.poke()
	}
	p.mu.Unlock()
}

// startMemory is what one sandbox being started may take of the host's
// memory before it settles (runsc's boot and the agent's start; a settled
// small sandbox holds about 18 MiB, docs/benchmarks.md), with room to
// spare.
const startMemory = 128 << 20

// HostStarts is how many sandboxes this host starts at once by default:
// one per CPU, at least 1, and no more than the available memory holds at
// startMemory each. Not two per CPU, as before: runsc and a sandbox's boot
// take a core while they run, and four refills on two cores slowed the
// first command of the sandboxes claimed beside them (20 creates in a
// row: p95/p50 1.7-2.2 against 1.5-1.6, docs/benchmarks.md). A burst of
// claims is not bounded by it: a claim the pool cannot serve starts its
// own sandbox.
func HostStarts() int {
	n := goruntime.NumCPU()
	if avail := memAvailable(); avail > 0 {
		n = min(n, int(avail/startMemory))
	}
	return max(n, 1)
}

// memAvailable is /proc/meminfo's MemAvailable in bytes; 0 if unknown.
func memAvailable() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

type bucket struct {
	key    Key
	spec   runtime.Spec
	base   int // the target SetTarget gave; demand moves target above it
	target int
	// lastClaim is when the pool last handed out (or missed) a sandbox.
	lastClaim time.Time
	ready     []runtime.Sandbox
	filling   int // starts in progress
	// settled is closed (and replaced) whenever one of b's starts ends,
	// waking claims that wait for a refill under way.
	settled chan struct{}
	waiting int // claims waiting for one of the starts in progress
	// startTook is how long b's starts take (a moving average of those
	// that succeeded; 0 before the first): how long a claim that finds
	// the pool empty waits for a refill under way before it starts a
	// sandbox itself.
	startTook time.Duration
	kick      chan struct{}
	stop      chan struct{}
	fails     int
	retryAt   time.Time // after a failed start, no new one before this
	// refillAt: while sandboxes are ready, no refill starts before this
	// (a claim's refillDefer; zero when none is pending).
	refillAt time.Time
}

// refillDefer is how long a claim that leaves sandboxes in its pool holds
// back the refill it causes. A refill's start is the heaviest thing a host
// does (runsc's processes, the Sentry's boot, the agent and its shell).
// Started at the claim, it ran beside the claimed sandbox's configuration
// and first command, which are what the user waits for. The pool still has
// a sandbox for the next claim meanwhile. A claim that empties its pool
// does not wait: its demand outpaces the refills.
//
// Measured in the fleet benchmark (one process, p50): create 11.0 → 5.1
// ms, its first exec 10.5 → 6.7 ms (docs/benchmarks.md, "A refill waits
// for the claim's first command").
var refillDefer = 50 * time.Millisecond

// New returns an empty pool set; SetTarget starts filling.
func New(d runtime.Driver, log *slog.Logger) *Pool {
	return &Pool{driver: d, log: log, pools: map[Key]*bucket{}, starts: HostStarts()}
}

// SetTarget sets how many started sandboxes of spec to keep for key. Zero
// disables the pool and destroys what it holds.
func (p *Pool) SetTarget(key Key, spec runtime.Spec, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	b, ok := p.pools[key]
	if !ok {
		b = &bucket{key: key, kick: make(chan struct{}, 1), stop: make(chan struct{}), settled: make(chan struct{})}
		p.pools[key] = b
		p.wg.Add(1)
		go p.fill(b)
	}
	spec.Labels = map[string]string{"pool": key.String()}
	spec.Networked = key.Networked
	b.spec = spec
	b.base, b.target = n, n
	var extra []runtime.Sandbox
	for len(b.ready) > n {
		extra = append(extra, b.ready[len(b.ready)-1])
		b.ready = b.ready[:len(b.ready)-1]
	}
	go destroyAll(extra)
	b.poke()
}

func (b *bucket) poke() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

func destroyAll(sbs []runtime.Sandbox) {
	for _, sb := range sbs {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = sb.Destroy(ctx)
		cancel()
	}
}

// fill keeps b at its target: it launches a start for every missing
// sandbox while the pool set has fewer than p.starts in flight (a burst of
// claims is refilled in parallel, not one cold start after another), and
// otherwise sleeps until a claim, a finished start or a shrink wakes it.
func (p *Pool) fill(b *bucket) {
	defer p.wg.Done()
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return
		}
		need := b.target - len(b.ready) - b.filling
		wait := time.Until(b.retryAt)
		if len(b.ready) > 0 {
			wait = max(wait, time.Until(b.refillAt))
		}
		if need > 0 && wait <= 0 && p.starting < p.starts {
			b.filling++
			p.starting++
			spec := b.spec
			p.wg.Add(1)
			p.mu.Unlock()
			go p.start(b, spec)
			continue
		}
		// Only a pool grown above its base waits on a timer, to shrink,
		// and only a failed start on one to retry: an idle pool at its
		// base wakes nothing.
		var shrink, retry <-chan time.Time
		if b.target > b.base {
			shrink = time.After(max(time.Until(b.lastClaim.Add(p.demand.IdleShrink)), time.Millisecond))
		}
		if need > 0 && wait > 0 {
			retry = time.After(wait)
		}
		p.mu.Unlock()
		select {
		case <-b.kick:
		case <-retry:
		case <-shrink:
			p.mu.Lock()
			extra := p.shrinkLocked(b)
			p.mu.Unlock()
			destroyAll(extra)
		case <-b.stop:
			return
		}
	}
}

// start starts one sandbox for b and adds it to b's ready list, or
// destroys it when b no longer wants it.
func (p *Pool) start(b *bucket, spec runtime.Spec) {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t0 := time.Now()
	sb, err := p.driver.Create(ctx, spec)
	took := time.Since(t0)
	cancel()
	p.mu.Lock()
	b.filling--
	p.starting--
	// Claims waiting for this start wake once p.mu is free again, and by
	// then the sandbox is on the ready list (or b does not want it).
	b.settle()
	// A start slot is free: any pool may be waiting for one.
	for _, o := range p.pools {
		o.poke()
	}
	if err != nil {
		b.fails++
		// Back off so a broken template does not spin the CPU.
		b.retryAt = time.Now().Add(time.Duration(min(b.fails, 6)) * 500 * time.Millisecond)
		p.mu.Unlock()
		p.log.Warn("warm pool start failed", "pool", b.key.String(), "err", err)
		return
	}
	b.fails = 0
	if b.startTook == 0 {
		b.startTook = took
	} else {
		b.startTook = (3*b.startTook + took) / 4
	}
	if p.closed || len(b.ready) >= b.target {
		p.mu.Unlock()
		destroyAll([]runtime.Sandbox{sb})
		return
	}
	b.ready = append(b.ready, sb)
	p.mu.Unlock()
	go p.evictOnStop(b, sb)
}

// settle wakes the claims waiting for one of b's starts (p.mu held).
func (b *bucket) settle() {
	close(b.settled)
	b.settled = make(chan struct{})
}

// evictOnStop drops a pooled sandbox that dies while waiting.
func (p *Pool) evictOnStop(b *bucket, sb runtime.Sandbox) {
	<-sb.Done()
	p.mu.Lock()
	for i, r := range b.ready {
		if r == sb {
			b.ready = append(b.ready[:i], b.ready[i+1:]...)
			b.poke()
			break
		}
	}
	p.mu.Unlock()
}

// take removes one ready sandbox from key's pool, if any. If there is none
// but a refill of the pool is under way that no other claim waits for
// yet, the claim may wait for it: take counts it as waiting and returns a
// channel closed when one of the pool's starts ends and how long to wait
// at most (nil and 0 when there is nothing to wait for). waiting says
// whether this claim is counted as waiting already; take stops counting
// it when it returns a sandbox or nothing to wait for, and stopWaiting
// when the claim gives up.
func (p *Pool) take(key Key, waiting bool) (runtime.Sandbox, <-chan struct{}, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, ok := p.pools[key]
	if !ok {
		return nil, nil, 0
	}
	if len(b.ready) == 0 {
		if !waiting {
			b.lastClaim = time.Now()
			p.growLocked(b)
		}
		// Refills under way, or one due: the filler starts it as soon as
		// it runs, if a start slot is free.
		refills := b.filling
		if refills == 0 && b.target > 0 && p.starting < p.starts && !time.Now().Before(b.retryAt) {
			refills = 1
		}
		// Each refill is waited for by one claim at most: a burst of
		// claims starts the rest itself at once, as before.
		if waiting {
			b.waiting--
		}
		if b.waiting < refills && b.startTook > 0 && !p.closed {
			b.waiting++
			// Half as long again as a start takes: the refill may have
			// begun just now, and a start's time varies.
			return nil, b.settled, b.startTook * 3 / 2
		}
		return nil, nil, 0
	}
	if waiting {
		b.waiting--
	}
	b.lastClaim = time.Now()
	// Oldest first: its start is the longest settled.
	sb := b.ready[0]
	b.ready = b.ready[1:]
	if len(b.ready) == 0 {
		// Drained: claims outpace the refills, so grow before the next
		// claim has to miss.
		p.growLocked(b)
	} else if !b.refillAt.After(b.lastClaim) {
		// The refills of later claims wait for the deferral under
		// way, not for one that every claim pushes later.
		b.refillAt = b.lastClaim.Add(refillDefer)
	}
	b.poke()
	return sb, nil, 0
}

// stopWaiting stops counting a claim take counted as waiting.
func (p *Pool) stopWaiting(key Key) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if b, ok := p.pools[key]; ok && b.waiting > 0 {
		b.waiting--
	}
}

// growLocked doubles b's target after a claim found it empty or left it
// empty, within the demand's limits.
func (p *Pool) growLocked(b *bucket) {
	d := p.demand
	if d.Max <= b.target || b.base <= 0 {
		return
	}
	others := 0
	for _, o := range p.pools {
		if o != b {
			others += o.target
		}
	}
	want := min(max(b.target*2, b.target+1), d.Max)
	if d.Budget > 0 {
		want = min(want, d.Budget-others)
	}
	if want > b.target {
		p.log.Info("warm pool grows with demand", "pool", b.key.String(), "from", b.target, "to", want)
		b.target = want
		b.poke()
	}
}

// shrinkLocked halves b's target back toward its base when it saw no
// claim for the demand's IdleShrink; it returns the sandboxes to destroy.
func (p *Pool) shrinkLocked(b *bucket) []runtime.Sandbox {
	if b.target <= b.base || time.Since(b.lastClaim) < p.demand.IdleShrink {
		return nil
	}
	b.target = max(b.base, b.target/2)
	b.lastClaim = time.Now() // the next halving waits a whole IdleShrink again
	p.log.Info("warm pool shrinks while idle", "pool", b.key.String(), "to", b.target)
	var extra []runtime.Sandbox
	for len(b.ready) > b.target {
		extra = append(extra, b.ready[len(b.ready)-1])
		b.ready = b.ready[:len(b.ready)-1]
	}
	return extra
}

// ErrClosed is returned by Claim after Close.
var ErrClosed = errors.New("pool closed")

// Claim returns a running sandbox configured with claim: a warm one from
// key's pool when there is one, otherwise a cold start of spec. warm says
// which it was.
//
// A claim that finds the pool empty while a refill of it is under way,
// one no other claim waits for yet, waits for that refill, for up to one
// and a half times as long as the pool's starts take, before it starts
// one cold: the refill is already part way through its start, and a
// cold start next to it would take the CPU both need (a row of creates on
// a busy host lost its pool to that, each miss a full cold start).
func (p *Pool) Claim(ctx context.Context, key Key, spec runtime.Spec, claim runtime.Claim) (sb runtime.Sandbox, warm bool, err error) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return nil, false, ErrClosed
	}
	var waitUntil <-chan time.Time
	waiting := false
	for {
		var settled <-chan struct{}
		var wait time.Duration
		sb, settled, wait = p.take(key, waiting)
		waiting = settled != nil
		if sb == nil {
			if settled == nil {
				break
			}
			if waitUntil == nil {
				t := time.NewTimer(wait)
				defer t.Stop()
				waitUntil = t.C
			}
			select {
			case <-settled:
				continue
			case <-waitUntil:
			case <-ctx.Done():
				p.stopWaiting(key)
				return nil, false, ctx.Err()
			}
			p.stopWaiting(key)
			break
		}
		if err := configure(ctx, sb, claim); err != nil {
			// A pooled sandbox that cannot be configured is never reused.
			p.log.Warn("pooled sandbox failed its claim; destroying it", "sandbox", sb.ID(), "err", err)
			go destroyAll([]runtime.Sandbox{sb})
			if ctx.Err() != nil {
				return nil, false, ctx.Err()
			}
			if errors.Is(err, runtime.ErrInvalidRequest) {
				return nil, false, err // the claim is at fault: any sandbox would refuse it
			}
			continue
		}
		return sb, true, nil
	}
	spec.Labels = nil
	spec.Networked = key.Networked
	sb, err = p.driver.Create(ctx, spec)
	if err != nil {
		return nil, false, err
	}
	if err := sb.Configure(ctx, claim); err != nil {
		_ = sb.Destroy(context.WithoutCancel(ctx))
		return nil, false, err
	}
	return sb, false, nil
}

// configure applies a claim to a warm sandbox, behind the caller when the
// sandbox can (runtime.BackgroundConfigurer): the claim's answer then goes
// out while the sandbox's cgroups and agent are still being configured,
// and its first operation waits for them instead. A cold start is
// configured before it is answered; it has no such wait to hide.
func configure(ctx context.Context, sb runtime.Sandbox, claim runtime.Claim) error {
	if bc, ok := sb.(runtime.BackgroundConfigurer); ok {
		return bc.ConfigureBehind(claim)
	}
	return sb.Configure(ctx, claim)
}

// Ready reports how many sandboxes wait in key's pool.
func (p *Pool) Ready(key Key) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if b, ok := p.pools[key]; ok {
		return len(b.ready)
	}
	return 0
}

// WaitFull blocks until every pool holds its target or ctx ends.
func (p *Pool) WaitFull(ctx context.Context) error {
	for {
		p.mu.Lock()
		full := true
		for _, b := range p.pools {
			if len(b.ready) < b.target {
				full = false
			}
		}
		p.mu.Unlock()
		if full {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Close stops filling and destroys every unclaimed sandbox. Claimed ones are
// the caller's.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for _, b := range p.pools {
		close(b.stop)
	}
	p.mu.Unlock()
	p.wg.Wait()
	p.mu.Lock()
	var all []runtime.Sandbox
	for _, b := range p.pools {
		all = append(all, b.ready...)
		b.ready = nil
	}
	p.mu.Unlock()
	var errs []error
	for _, sb := range all {
		errs = append(errs, sb.Destroy(ctx))
	}
	return errors.Join(errs...)
}

// Depth is one pool's fill.
type Depth struct {
	Key
	Ready  int
	Target int
}

// Depths reports every pool's ready sandboxes and target.
func (p *Pool) Depths() []Depth {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Depth, 0, len(p.pools))
	for k, b := range p.pools {
		out = append(out, Depth{Key: k, Ready: len(b.ready), Target: b.target})
	}
	return out
}
