// Command runsc is gVisor's runsc, unchanged but for the Go garbage
// collector's target, which it sets before anything else runs.
//
// Every sandbox costs the host two Go processes of runsc's (the Sentry
// and the gofer), each holding a heap of its own, and runsc starts both
// with an empty environment, so GOGC cannot reach them. Their heaps are
// small and mostly live; at the default target (100) a heap may grow to
// twice what is live before a collection, which is about 1 MiB per idle
// sandbox more than a target of 50 (docs/benchmarks.md, "runsc's heaps").
// The Sentry and the gofer are this binary, run again by runsc itself, so
// the target reaches them too.
package main

import (
	"runtime/debug"

	"gvisor.dev/gvisor/runsc/cli/maincli"
	"gvisor.dev/gvisor/runsc/version"
)

// gcPercent is the collector's target for every runsc process.
const gcPercent = 50

// version.Version is set by runsc's own build; linked in as runsc's main
// does.
var _ = version.Version()

func main() {
	debug.SetGCPercent(gcPercent)
	maincli.Main()
}
