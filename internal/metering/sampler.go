// Package metering samples every running sandbox's cgroups once per
// interval: a short ring of samples for live metrics, and lifetime totals
// (CPU seconds, MB·seconds of memory held, running seconds) for metering.
package metering

import (
	"context"
	"sync"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// Sample is one reading.
type Sample struct {
	T          time.Time
	CPUPercent float64 // of the allocated cores
	CPUCores   float64
	MemBytes   uint64
	MemLimit   uint64
}

// Lifetime totals of one sandbox, across pauses.
type Lifetime struct {
	CPUSeconds     float64
	MemMBSeconds   int64
	RunningSeconds int64
}

type series struct {
	sb      runtime.Sandbox
	cores   float64
	memMB   int
	ring    []Sample
	next    int
	full    bool
	lastCPU uint64
	lastAt  time.Time
	started bool
	life    Lifetime
	runFrac time.Duration // running time not yet counted in whole seconds
}

// Sampler keeps the series of every tracked sandbox.
type Sampler struct {
	interval time.Duration
	size     int

	mu      sync.Mutex
	tracked map[string]*series
	stopped map[string]Lifetime // paused or terminated: totals only
}

// NewSampler samples every interval and keeps size samples per sandbox.
func NewSampler(interval time.Duration, size int) *Sampler {
	return &Sampler{interval: interval, size: size, tracked: map[string]*series{}, stopped: map[string]Lifetime{}}
}

// Interval is the sampling interval.
func (s *Sampler) Interval() time.Duration { return s.interval }

// Track starts sampling sandbox id (running on sb) from the given totals.
func (s *Sampler) Track(id string, sb runtime.Sandbox, cores float64, memMB int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	life := s.stopped[id]
	delete(s.stopped, id)
	s.tracked[id] = &series{sb: sb, cores: cores, memMB: memMB, ring: make([]Sample, s.size), life: life}
}

// Untrack stops sampling id (paused or terminated), taking one last reading
// first, and returns its totals.
func (s *Sampler) Untrack(id string) Lifetime {
	s.mu.Lock()
	se, ok := s.tracked[id]
	s.mu.Unlock()
	if ok {
		s.sample(se, time.Now())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ok {
		delete(s.tracked, id)
		s.stopped[id] = se.life
		return se.life
	}
	return s.stopped[id]
}

// Window returns the samples newer than since (oldest first), the latest
// sample, and the totals. running is false for an untracked sandbox.
func (s *Sampler) Window(id string, since time.Time) (samples []Sample, latest *Sample, life Lifetime, running bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	se, ok := s.tracked[id]
	if !ok {
		return nil, nil, s.stopped[id], false
	}
	n := se.next
	if se.full {
		n = s.size
	}
	samples = []Sample{}
	for i := 0; i < n; i++ {
		idx := i
		if se.full {
			idx = (se.next + i) % s.size
		}
		if sm := se.ring[idx]; sm.T.After(since) {
			samples = append(samples, sm)
		}
	}
	if n > 0 {
		l := se.ring[(se.next-1+s.size)%s.size]
		latest = &l
	}
	return samples, latest, se.life, true
}

// Run samples until ctx ends.
func (s *Sampler) Run(ctx context.Context) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.mu.Lock()
			all := make([]*series, 0, len(s.tracked))
			for _, se := range s.tracked {
				all = append(all, se)
			}
			s.mu.Unlock()
			for _, se := range all {
				s.sample(se, now)
			}
		}
	}
}

func (s *Sampler) sample(se *series, now time.Time) {
	st, err := se.sb.Stats(context.Background())
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !se.started {
		se.started, se.lastCPU, se.lastAt = true, st.CPUNanos, now
		return
	}
	dt := now.Sub(se.lastAt)
	if dt <= 0 {
		return
	}
	dcpu := float64(st.CPUNanos-se.lastCPU) / 1e9
	cores := dcpu / dt.Seconds()
	sm := Sample{T: now.UTC().Truncate(time.Millisecond), CPUCores: cores, MemBytes: st.MemoryBytes, MemLimit: st.MemoryLimitBytes}
	if se.cores > 0 {
		sm.CPUPercent = cores / se.cores * 100
	}
	se.ring[se.next] = sm
	se.next = (se.next + 1) % s.size
	if se.next == 0 {
		se.full = true
	}
	se.life.CPUSeconds += dcpu
	se.runFrac += dt
	whole := int64(se.runFrac / time.Second)
	se.runFrac -= time.Duration(whole) * time.Second
	se.life.RunningSeconds += whole
	se.life.MemMBSeconds += whole * int64(se.memMB)
	se.lastCPU, se.lastAt = st.CPUNanos, now
}
