// Package metering measures running sandboxes: once per interval it reads
// every tracked sandbox's cgroups, keeps a short ring of samples for live
// metrics, and accrues usage — the size's memory for every second run, the
// CPU actually used — in integer MB·seconds, CPU milliseconds and seconds.
// Accrued usage is flushed to the store's hourly buckets every few seconds
// and whenever a sandbox stops being tracked (pause, terminate, crash), so
// the store is the one record every figure (limits, usage reports,
// lifetime totals) is summed from.
package metering

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/store"
)

// Clock tells the time the meter attributes usage to (its hour bucket) and
// stamps samples with. Tests inject one to cross an hour or a month. The
// length of an interval is always measured on the real monotonic clock, so
// a clock that jumps (a test's, or a stepped wall clock) never accrues the
// jump.
type Clock interface{ Now() time.Time }

// SystemClock is the wall clock.
type SystemClock struct{}

// Now is time.Now.
func (SystemClock) Now() time.Time { return time.Now() }

// ClockFunc adapts a function to Clock.
type ClockFunc func() time.Time

// Now calls f.
func (f ClockFunc) Now() time.Time { return f() }

// Source is what the sampler reads: a sandbox's cgroup counters
// (runtime.Sandbox is one). A Source that is also a runtime.UsageReader
// is read through that cheaper method.
type Source interface {
	Stats(ctx context.Context) (runtime.Stats, error)
}

func readUsage(src Source) (runtime.Usage, error) {
	if ur, ok := src.(runtime.UsageReader); ok {
		return ur.Usage(context.Background())
	}
	st, err := src.Stats(context.Background())
	return runtime.Usage{CPUNanos: st.CPUNanos, MemoryBytes: st.MemoryBytes, MemoryLimitBytes: st.MemoryLimitBytes}, err
}

// Sink is where accrued usage goes and lifetime totals come from
// (store.Store is one).
type Sink interface {
	AddUsage(ctx context.Context, deltas []store.UsageDelta) error
	SandboxUsage(ctx context.Context, accountID, sandboxID string) (store.Usage, error)
}

// Config configures a Sampler.
type Config struct {
	Interval   time.Duration // between readings; default 1 s
	Window     int           // samples kept per sandbox; default 60
	FlushEvery time.Duration // between flushes; default 3 s (a crash loses at most this plus one interval)
	Clock      Clock         // default SystemClock
	Sink       Sink          // required
	Log        *slog.Logger
	// OnRound, if set, is called after every sampling round with how late
	// the round finished after its tick and how many sandboxes it read.
	OnRound func(lag time.Duration, sandboxes int)
	// OnFlush, if set, is called after every flush attempt.
	OnFlush func(took time.Duration, rows int, err error)
}

// Sample is one reading.
type Sample struct {
	T          time.Time
	CPUPercent float64 // of the allocated cores
	CPUCores   float64
	MemBytes   uint64 // working set
	MemLimit   uint64
}

type series struct {
	id, account string
	src         Source
	cores       float64
	memMB       int64

	mu       sync.Mutex // one reading at a time; guards the fields below
	gone     bool
	based    bool      // a baseline reading was taken
	lastCPU  uint64    // cpuacct.usage at the last reading
	lastMono time.Time // real time of the last reading (monotonic)
	ringCPU  uint64    // the same at the last sample put in the ring
	ringMono time.Time
	cpuRem   uint64 // CPU ns read but not yet accrued as whole ms
	runRem   time.Duration

	// guarded by Sampler.mu
	ring []Sample
	next int
	full bool
}

type pendingKey struct {
	sandbox string
	hour    int64 // unix seconds of the hour's start
}

// Sampler samples and meters the tracked sandboxes of one node.
type Sampler struct {
	cfg Config

	mu      sync.Mutex
	tracked map[string]*series
	pending map[pendingKey]*store.UsageDelta

	// flushMu makes a flush (taking pending and writing it) atomic for
	// readers of lifetime totals, which add pending to the store's sums.
	flushMu sync.RWMutex

	done chan struct{} // closed when Run has returned (final flush done)
	once sync.Once
}

// New returns a sampler; Run starts it.
func New(cfg Config) *Sampler {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Window <= 0 {
		cfg.Window = 60
	}
	if cfg.FlushEvery <= 0 {
		cfg.FlushEvery = 3 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Sampler{cfg: cfg, tracked: map[string]*series{}, pending: map[pendingKey]*store.UsageDelta{}, done: make(chan struct{})}
}

// SetHooks sets Config.OnRound and Config.OnFlush; call it before Run.
func (s *Sampler) SetHooks(onRound func(lag time.Duration, sandboxes int), onFlush func(took time.Duration, rows int, err error)) {
	s.cfg.OnRound, s.cfg.OnFlush = onRound, onFlush
}

// Interval is the sampling interval.
func (s *Sampler) Interval() time.Duration { return s.cfg.Interval }

// Tracked is the number of sandboxes being sampled.
func (s *Sampler) Tracked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.tracked)
}

// Track starts metering sandbox id of account (running on src with the
// given allocation). Usage accrues from this call on: a first reading is
// taken now as the baseline, so CPU the sandbox used before (booting in
// the warm pool, a restore) is not charged.
func (s *Sampler) Track(id, account string, src Source, cores float64, memMB int) {
	se := &series{id: id, account: account, src: src, cores: cores, memMB: int64(memMB), ring: make([]Sample, s.cfg.Window)}
	se.mu.Lock()
	s.read(se)
	se.mu.Unlock()
	s.mu.Lock()
	if old, ok := s.tracked[id]; ok {
		old.mu.Lock()
		old.gone = true
		old.mu.Unlock()
	}
	s.tracked[id] = se
	s.mu.Unlock()
}

// Untrack stops metering id (paused, terminated or stopped): a last
// reading accrues the time up to now, and what the sandbox accrued is
// flushed before it returns (a failed flush is retried by the next one).
func (s *Sampler) Untrack(id string) {
	s.mu.Lock()
	se, ok := s.tracked[id]
	delete(s.tracked, id)
	s.mu.Unlock()
	if !ok {
		return
	}
	se.mu.Lock()
	s.read(se)
	se.gone = true
	se.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.flush(ctx, id); err != nil {
		s.cfg.Log.Warn("flushing metering at the end of a sandbox's run failed; retried with the next flush", "sandbox", id, "err", err)
	}
}

// read takes one reading of se (se.mu held) and accrues the interval since
// the last one.
func (s *Sampler) read(se *series) {
	if se.gone {
		return
	}
	st, err := readUsage(se.src)
	if err != nil {
		return // stopped or going away; its watcher untracks it
	}
	mono := time.Now()
	now := s.cfg.Clock.Now().UTC()
	if !se.based || st.CPUNanos < se.lastCPU {
		// First reading, or a counter that went backwards (a new
		// cgroup): this reading is the new baseline.
		se.based, se.lastCPU, se.lastMono = true, st.CPUNanos, mono
		se.ringCPU, se.ringMono = st.CPUNanos, mono
		return
	}
	dt := mono.Sub(se.lastMono)
	if dt <= 0 {
		return
	}
	dcpu := st.CPUNanos - se.lastCPU
	se.lastCPU, se.lastMono = st.CPUNanos, mono

	se.cpuRem += dcpu
	cpuMS := int64(se.cpuRem / 1e6)
	se.cpuRem -= uint64(cpuMS) * 1e6
	se.runRem += dt
	secs := int64(se.runRem / time.Second)
	se.runRem -= time.Duration(secs) * time.Second

	// A ring sample covers at least half an interval: a reading soon
	// after the last sample (a late round followed by a punctual one, the
	// last reading before a pause) would divide CPU time by a short
	// interval that CFS periods make lumpy, and read far above the quota.
	var sm *Sample
	if rdt := mono.Sub(se.ringMono); rdt >= s.cfg.Interval/2 {
		cores := float64(st.CPUNanos-se.ringCPU) / 1e9 / rdt.Seconds()
		sm = &Sample{T: now.Truncate(time.Millisecond), CPUCores: cores, MemBytes: st.MemoryBytes, MemLimit: st.MemoryLimitBytes}
		if se.cores > 0 {
			sm.CPUPercent = cores / se.cores * 100
		}
		se.ringCPU, se.ringMono = st.CPUNanos, mono
	}

	hour := now.Truncate(time.Hour)
	s.mu.Lock()
	defer s.mu.Unlock()
	if sm != nil {
		se.ring[se.next] = *sm
		se.next = (se.next + 1) % len(se.ring)
		if se.next == 0 {
			se.full = true
		}
	}
	if secs == 0 && cpuMS == 0 {
		return
	}
	k := pendingKey{se.id, hour.Unix()}
	d, ok := s.pending[k]
	if !ok {
		d = &store.UsageDelta{SandboxID: se.id, AccountID: se.account, HourStart: hour}
		s.pending[k] = d
	}
	d.MemMBSeconds += secs * se.memMB
	d.CPUMS += cpuMS
	d.RunningSeconds += secs
}

// Window returns the samples newer than since (oldest first) and the
// latest sample of a tracked sandbox; running is false for one that is not
// tracked (paused, terminated, or not yet measured).
func (s *Sampler) Window(id string, since time.Time) (samples []Sample, latest *Sample, running bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	se, ok := s.tracked[id]
	if !ok {
		return nil, nil, false
	}
	n := se.next
	if se.full {
		n = len(se.ring)
	}
	samples = []Sample{}
	for i := 0; i < n; i++ {
		idx := i
		if se.full {
			idx = (se.next + i) % len(se.ring)
		}
		if sm := se.ring[idx]; sm.T.After(since) {
			samples = append(samples, sm)
		}
	}
	if n > 0 {
		l := se.ring[(se.next-1+len(se.ring))%len(se.ring)]
		latest = &l
	}
	return samples, latest, true
}

// Lifetime is the sandbox's usage over its whole life: what the store
// holds plus what is accrued and not yet flushed.
func (s *Sampler) Lifetime(ctx context.Context, account, id string) (store.Usage, error) {
	s.flushMu.RLock()
	defer s.flushMu.RUnlock()
	u, err := s.cfg.Sink.SandboxUsage(ctx, account, id)
	if err != nil {
		return u, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, d := range s.pending {
		if k.sandbox == id && d.AccountID == account {
			u = u.Add(d.Usage)
		}
	}
	return u, nil
}

// Flush writes everything accrued to the sink. On failure it is kept for
// the next flush.
func (s *Sampler) Flush(ctx context.Context) error { return s.flush(ctx, "") }

// flush writes what sandbox accrued (every sandbox's if it is "").
func (s *Sampler) flush(ctx context.Context, sandbox string) error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	var batch []store.UsageDelta
	taken := map[pendingKey]*store.UsageDelta{}
	if sandbox == "" {
		taken = s.pending
		s.pending = map[pendingKey]*store.UsageDelta{}
	} else {
		for k, d := range s.pending {
			if k.sandbox == sandbox {
				taken[k] = d
				delete(s.pending, k)
			}
		}
	}
	for _, d := range taken {
		batch = append(batch, *d)
	}
	s.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	start := time.Now()
	err := s.cfg.Sink.AddUsage(ctx, batch)
	if s.cfg.OnFlush != nil {
		s.cfg.OnFlush(time.Since(start), len(batch), err)
	}
	if err != nil {
		s.mu.Lock()
		for k, d := range taken {
			if cur, ok := s.pending[k]; ok {
				cur.Usage = cur.Usage.Add(d.Usage)
			} else {
				s.pending[k] = d
			}
		}
		s.mu.Unlock()
		return err
	}
	return nil
}

// SampleAll takes one reading of every tracked sandbox.
func (s *Sampler) SampleAll() int {
	s.mu.Lock()
	all := make([]*series, 0, len(s.tracked))
	for _, se := range s.tracked {
		all = append(all, se)
	}
	s.mu.Unlock()
	for _, se := range all {
		se.mu.Lock()
		s.read(se)
		se.mu.Unlock()
	}
	return len(all)
}

// Run samples every interval and flushes every FlushEvery until ctx ends;
// then it takes a last reading of every sandbox and flushes once more, so
// a clean stop loses nothing. Wait blocks until that is done.
func (s *Sampler) Run(ctx context.Context) {
	defer s.once.Do(func() { close(s.done) })
	flushes := make(chan struct{}, 1)
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		for range flushes {
			fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if err := s.Flush(fctx); err != nil {
				s.cfg.Log.Warn("flushing metering to the store failed; kept for the next flush", "err", err)
			}
			cancel()
		}
	}()
	tick := time.NewTicker(s.cfg.Interval)
	defer tick.Stop()
	flush := time.NewTicker(s.cfg.FlushEvery)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			close(flushes)
			<-flushed
			s.SampleAll()
			fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := s.Flush(fctx); err != nil && !errors.Is(err, context.Canceled) {
				s.cfg.Log.Error("final metering flush failed; the usage since the last flush is lost", "err", err)
			}
			return
		case at := <-tick.C:
			n := s.SampleAll()
			if s.cfg.OnRound != nil {
				s.cfg.OnRound(time.Since(at), n)
			}
		case <-flush.C:
			select {
			case flushes <- struct{}{}:
			default: // a flush is still running; the next one takes it all
			}
		}
	}
}

// Wait blocks until Run has returned (after its final flush).
func (s *Sampler) Wait() { <-s.done }
