package testenv

import (
	"sync"
	"time"
)

// Clock is the wall clock moved by an offset a test sets: it keeps ticking
// (samplers and deadlines need time to pass) and can be advanced or made to
// read a given time, e.g. past a lockout or into next month.
type Clock struct {
	mu  sync.Mutex
	off time.Duration
}

// Now is the moved wall clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off += d
}

// JumpTo moves the clock so that it reads t now.
func (c *Clock) JumpTo(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off = time.Until(t)
}
