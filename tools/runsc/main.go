// Command runsc is gVisor's runsc, unchanged but for how its Go runtime
// keeps memory: a lower garbage collector target, set before anything
// else runs, and the heap handed back to the host once a process goes
// quiet.
//
// Every sandbox costs the host two Go processes of runsc's (the Sentry
// and the gofer), each holding a heap of its own, and runsc starts both
// with an empty environment, so GOGC cannot reach them. Their heaps are
// small and mostly live; at the default target (100) a heap may grow to
// twice what is live before a collection, which is about 1 MiB per idle
// sandbox more than a target of 50 (docs/benchmarks.md, "runsc's heaps").
// The Sentry and the gofer are this binary, run again by runsc itself, so
// both settings reach them too.
package main

import (
	"runtime/debug"
	"runtime/metrics"
	"time"

	"gvisor.dev/gvisor/runsc/cli/maincli"
	"gvisor.dev/gvisor/runsc/version"
)

// gcPercent is the collector's target for every runsc process.
const gcPercent = 50

// A process that allocated less than quietAllocs in each of quietPeriods
// periods of quietPeriod in a row has gone quiet. An idle sandbox's Sentry
// and gofer allocate next to nothing (0-160 bytes per 5 s here); one
// that runs a command allocates far more. A sandbox that works more often
// than every 15 s is never released: the release would cost it more CPU
// than the memory is worth.
const (
	quietPeriod  = 5 * time.Second
	quietPeriods = 3
	quietAllocs  = 1 << 20
	releasedLook = time.Minute
)

// version.Version is set by runsc's own build; linked in as runsc's main
// does.
var _ = version.Version()

func main() {
	debug.SetGCPercent(gcPercent)
	go releaseWhenQuiet()
	maincli.Main()
}

// releaseWhenQuiet collects the heap and returns every free page of it to
// the host once the process has gone quiet, once per quiet spell.
//
// Go's background scavenger keeps what the heap grew to while the sandbox
// started (and while it last worked) for as long as the heap goal allows,
// a few MiB per process that an idle sandbox never uses again
// (docs/benchmarks.md, "runsc's heaps handed back once quiet"). A quiet
// process gets one collection and scavenge (a few milliseconds of CPU),
// then nothing until it has worked and gone quiet again.
func releaseWhenQuiet() {
	allocs := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	read := func() uint64 {
		metrics.Read(allocs)
		if allocs[0].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return allocs[0].Value.Uint64()
	}
	w := quietWatch{last: read()}
	for {
		time.Sleep(w.next())
		if w.look(read()) {
			debug.FreeOSMemory()
			w.released(read())
		}
	}
}

// quietWatch decides, one look at the process's allocation counter at a
// time, when the process has gone quiet and its heap should be released.
type quietWatch struct {
	last       uint64 // the counter at the last look
	quiet      int    // quiet periods in a row
	isReleased bool   // released since the last work
}

// next is how long to wait before the next look. Once released, a look a
// minute is enough to notice the work that ends the spell; every wakeup
// costs an idle sandbox CPU.
func (w *quietWatch) next() time.Duration {
	if w.isReleased {
		return releasedLook
	}
	return quietPeriod
}

// look takes the counter now and reports whether to release the heap.
func (w *quietWatch) look(allocs uint64) bool {
	if allocs-w.last >= quietAllocs {
		w.quiet, w.isReleased = 0, false
	} else {
		w.quiet++
	}
	w.last = allocs
	return w.quiet >= quietPeriods && !w.isReleased
}

// released records a release; allocs is the counter after it, so that
// what the release itself allocated does not count as work.
func (w *quietWatch) released(allocs uint64) {
	w.isReleased, w.last = true, allocs
}
