package gvisor

import (
	"context"
	"time"
)

// The sandbox kernel (gVisor's sentry) has no OOM killer: a program that
// allocates past the sandbox's memory used to reach the host cgroup's limit,
// whose OOM killer then killed the sentry, and so the whole sandbox. Now the
// host cgroup's limit has headroom above the size (HostMemory), and the
// kernel signals an eventfd when the sandbox's usage crosses its size; the
// host then asks the agent to kill the command process holding the most
// memory, as a kernel's OOM killer would (exit 137, the exec says
// oom_killed). Killing a host process of the sandbox instead is not an
// option: gVisor ends the sandbox when any of its stub processes dies.

// memoryPoll is how often usage is re-read while it is above the size, near
// the limit and well under it.
const (
	memoryPollNear = 20 * time.Millisecond
	memoryPollFar  = 250 * time.Millisecond
)

// watchMemory arms the threshold event of a started sandbox. Without it
// (no memory cgroup events on this host) a sandbox over its size is still
// held by the host limit, as a whole.
func (sb *sandbox) watchMemory() {
	limit := sb.m.Resources.MemoryBytes
	if limit <= 0 {
		return
	}
	f, err := sb.d.cgroup(sb.m.ID).MemoryThreshold(limit)
	if err != nil {
		sb.d.log.Warn("cannot watch the sandbox's memory; a program over its size ends the whole sandbox", "sandbox", sb.m.ID, "err", err)
		return
	}
	sb.mu.Lock()
	sb.memEvents = f
	sb.mu.Unlock()
	// One goroutine both waits and relieves: the eventfd counts crossings
	// made while it relieves, so the next Read returns at once and usage is
	// looked at again. (Relieving on a goroutine of its own, skipping events
	// while one ran, lost the crossing up that came just before it gave up
	// on a crossing down, and left a sandbox over its size unwatched until
	// the host limit ended it.)
	go func() {
		buf := make([]byte, 8)
		for {
			if _, err := f.Read(buf); err != nil {
				return // closed: the sandbox stopped
			}
			sb.relieveMemory(uint64(limit))
		}
	}()
}

// unwatchMemory closes the threshold event.
func (sb *sandbox) unwatchMemory() {
	sb.mu.Lock()
	f := sb.memEvents
	sb.memEvents = nil
	sb.mu.Unlock()
	if f != nil {
		_ = f.Close()
	}
}

// relieveMemory runs while the sandbox's usage is at or above its size,
// killing processes as oomDecision says.
func (sb *sandbox) relieveMemory(limit uint64) {
	crossed := time.Now()
	g := sb.d.cgroup(sb.m.ID)
	decide := newOOMDecision(limit, uint64(HostMemory(int64(limit))))
	for sb.stopped() == nil {
		usage, anon, err := g.MemoryAnon()
		if err != nil || usage < limit {
			sb.d.log.Debug("sandbox memory back under its size", "sandbox", sb.m.ID, "usage_bytes", usage, "anon_bytes", anon, "err", err)
			return
		}
		if decide.kill(anon, time.Now()) {
			asked := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			v, err := sb.ch.OOMKill(ctx)
			cancel()
			switch {
			case err != nil:
				sb.d.log.Warn("asking the agent to kill a process at the memory limit failed", "sandbox", sb.m.ID, "err", err)
			case v.PID == 0:
				sb.d.log.Warn("sandbox at its memory limit has no command process to kill", "sandbox", sb.m.ID, "anon_bytes", anon)
			default:
				sb.oomKills.Add(1)
				sb.d.oomKills.Add(1)
				sb.d.log.Info("killed a sandbox process at the memory limit", "sandbox", sb.m.ID, "pid", v.PID, "comm", v.Comm, "rss_bytes", v.RSSBytes, "limit_bytes", limit,
					"anon_bytes", anon, "since_crossing", asked.Sub(crossed), "kill_took", time.Since(asked))
			}
		}
		wait := memoryPollFar
		if anon >= limit*9/10 {
			wait = memoryPollNear
		}
		time.Sleep(wait)
	}
}

// oomDecision decides, from the sandbox's anonymous memory (programs and
// tmpfs) read every poll, when a process dies for it. The usage the
// threshold watches also counts the page cache of the sandbox's disk,
// which the kernel reclaims by itself, so a process is killed only when
// anonymous memory reaches the size. A killed process's memory takes
// gVisor from a few hundred milliseconds to seconds on a loaded host to
// give back, and meanwhile the sandbox's other processes add a little (a
// shell forking its next command): another process dies only once
// anonymous memory has grown by regrowth past its lowest since the last
// kill — something still allocates — and after a grace period, unless
// the sandbox is already halfway into its headroom.
type oomDecision struct {
	limit, urgent, regrowth uint64
	grace                   time.Duration
	killedAt                time.Time
	low                     uint64 // the lowest anonymous memory since killedAt
}

func newOOMDecision(limit, hostLimit uint64) *oomDecision {
	d := &oomDecision{limit: limit, urgent: limit, regrowth: limit / 32, grace: 500 * time.Millisecond}
	if hostLimit > limit {
		d.urgent = limit + (hostLimit-limit)/2
	}
	return d
}

// kill reports whether a process is to be killed now, anon being the
// sandbox's anonymous memory at now; a true answer counts as the kill.
func (d *oomDecision) kill(anon uint64, now time.Time) bool {
	if !d.killedAt.IsZero() {
		d.low = min(d.low, anon)
	}
	switch {
	case anon < d.limit:
		return false
	case d.killedAt.IsZero():
	case anon <= d.low+d.regrowth:
		return false
	case now.Sub(d.killedAt) < d.grace && anon < d.urgent:
		return false
	}
	d.killedAt, d.low = now, anon
	return true
}

// OOMKills is how many sandbox processes the driver killed at their
// sandbox's memory limit since it started.
func (d *Driver) OOMKills() uint64 { return d.oomKills.Load() }
