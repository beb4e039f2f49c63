package gvisor

import (
	"testing"
	"time"
)

// TestOOMDecision: a process dies when anonymous memory reaches the size;
// another only if memory grows again past its lowest since that kill, by
// more than a forking shell adds while gVisor gives the victim's memory
// back, and after the grace period unless the headroom is half gone.
func TestOOMDecision(t *testing.T) {
	const mib = 1 << 20
	limit := uint64(512 * mib)
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	type poll struct {
		ms   int
		anon uint64
		kill bool
	}
	for _, tc := range []struct {
		name  string
		polls []poll
	}{
		{"under the size", []poll{{0, limit - 1, false}, {20, limit - mib, false}}},
		{"at the size", []poll{{0, limit - 1, false}, {20, limit, true}}},
		{"the victim's memory slow to go: no second victim for a shell's forks", []poll{
			{0, limit + mib, true},
			{20, limit + mib, false},
			{600, limit + mib + 200<<10, false},
			{1500, limit + 2*mib, false},
			{3000, limit + 3*mib, false},
		}},
		{"still growing after the grace: a second victim", []poll{
			{0, limit + mib, true},
			{100, limit + 40*mib, false}, // in the grace period
			{520, limit + 80*mib, true},
			{540, limit + 81*mib, false}, // grew, but not past regrowth since this kill
		}},
		{"memory given back, then a new bomb", []poll{
			{0, limit, true},
			{300, 100 * mib, false},
			{2000, limit - mib, false},
			{2020, limit + mib, true}, // 400 MiB past the low
		}},
		{"half the headroom gone: no grace", []poll{
			{0, limit, true},
			{100, limit + 130*mib, true}, // urgent: limit + 256 MiB / 2
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newOOMDecision(limit, uint64(HostMemory(int64(limit))))
			for _, p := range tc.polls {
				if got := d.kill(p.anon, at(p.ms)); got != p.kill {
					t.Fatalf("at %d ms, %d MiB: kill %v, want %v", p.ms, p.anon/mib, got, p.kill)
				}
			}
		})
	}
}
