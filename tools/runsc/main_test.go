package main

import (
	"testing"
	"time"
)

// feed gives w one look per entry of deltas (what the process allocated
// since the look before) and returns the looks, counted from 1, that
// released the heap.
func feed(w *quietWatch, deltas []uint64) []int {
	var at []int
	counter := w.last
	for i, d := range deltas {
		counter += d
		if w.look(counter) {
			at = append(at, i+1)
			counter += 4096 // what the release allocates is not work
			w.released(counter)
		}
	}
	return at
}

func TestQuietWatchReleasesOncePerQuietSpell(t *testing.T) {
	const busy, idle = 8 << 20, 160
	cases := []struct {
		name   string
		deltas []uint64
		want   []int
	}{
		{"start-up, then idle for good", []uint64{busy, idle, idle, idle, idle, 0, 0, 0, idle}, []int{4}},
		{"never quiet for three periods", []uint64{busy, idle, idle, busy, idle, idle, busy, 0, 0}, nil},
		{"work after a release starts a new spell", []uint64{busy, 0, 0, 0, 0, busy, 0, 0, 0, 0}, []int{4, 9}},
		{"just under the line is quiet", []uint64{quietAllocs - 1, quietAllocs - 1, quietAllocs - 1}, []int{3}},
		{"at the line is work", []uint64{quietAllocs, quietAllocs, quietAllocs, 0, 0}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := &quietWatch{}
			got := feed(w, c.deltas)
			if len(got) != len(c.want) {
				t.Fatalf("released at looks %v, want %v", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("released at looks %v, want %v", got, c.want)
				}
			}
		})
	}
}

func TestQuietWatchLooksLessOftenOnceReleased(t *testing.T) {
	w := &quietWatch{}
	if got := w.next(); got != quietPeriod {
		t.Fatalf("before a release: next look in %v, want %v", got, quietPeriod)
	}
	feed(w, []uint64{0, 0, 0})
	if got := w.next(); got != releasedLook {
		t.Fatalf("released: next look in %v, want %v", got, releasedLook)
	}
	feed(w, []uint64{quietAllocs})
	if got := w.next(); got != quietPeriod {
		t.Fatalf("after work: next look in %v, want %v", got, quietPeriod)
	}
	if releasedLook <= quietPeriod*quietPeriods {
		t.Fatalf("a released process (%v) should look less often than a quiet spell lasts (%v)", releasedLook, time.Duration(quietPeriods)*quietPeriod)
	}
}
