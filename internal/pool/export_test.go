package pool

import "time"

// SetRefillDefer sets refillDefer for a test and returns what restores it.
func SetRefillDefer(d time.Duration) (restore func()) {
	old := refillDefer
	refillDefer = d
	return func() { refillDefer = old }
}
