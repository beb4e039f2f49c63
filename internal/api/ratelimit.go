package api

import (
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// limiter is a token bucket per API key, sized by the key's plan. It sets
// the RateLimit-* headers on every authenticated response.
type limiter struct {
	now     func() time.Time
	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
	rate   float64
	burst  float64
}

func newLimiter(now func() time.Time) *limiter {
	return &limiter{now: now, buckets: map[string]*bucket{}}
}

// allow takes a token for p's key and writes the headers. When it refuses,
// it also sets Retry-After (seconds) and Retry-After-Ms (for the body).
func (l *limiter) allow(w http.ResponseWriter, p *principal) bool {
	rate, burst := p.plan.RateLimit.RequestsPerSecond, float64(p.plan.RateLimit.Burst)
	now := l.now()
	l.mu.Lock()
	b, ok := l.buckets[p.key.ID]
	if !ok || b.rate != rate || b.burst != burst {
		b = &bucket{tokens: burst, last: now, rate: rate, burst: burst}
		l.buckets[p.key.ID] = b
	}
	b.tokens = math.Min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	allowed := b.tokens >= 1
	if allowed {
		b.tokens--
	}
	tokens := b.tokens
	l.mu.Unlock()

	h := w.Header()
	h.Set("RateLimit-Limit", strconv.Itoa(int(burst)))
	h.Set("RateLimit-Remaining", strconv.Itoa(int(math.Floor(tokens))))
	h.Set("RateLimit-Reset", strconv.Itoa(int(math.Ceil((burst-tokens)/rate))))
	if !allowed {
		wait := time.Duration((1 - tokens) / rate * float64(time.Second))
		h.Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		h.Set("Retry-After-Ms", strconv.FormatInt(int64(math.Ceil(float64(wait)/float64(time.Millisecond))), 10))
	}
	return allowed
}

// Failed authentications are limited per client address, before any key
// is looked up: a client guessing or replaying keys costs the store one
// lookup per token, and is then told to wait. Keys already known (cached)
// are not affected.
const (
	authFailureRate  = 5.0  // failed attempts per second, sustained
	authFailureBurst = 20.0 // failed attempts in a row before 429
	// authFailureClients bounds the table; beyond it, idle (full) buckets
	// are dropped, and if none is idle every new address shares one.
	authFailureClients = 16384
)

// failLimiter is a token bucket of failed authentications per client
// address (the TCP peer; forwarded-for headers are not trusted).
type failLimiter struct {
	now     func() time.Time
	mu      sync.Mutex
	buckets map[string]*bucket
}

func newFailLimiter(now func() time.Time) *failLimiter {
	return &failLimiter{now: now, buckets: map[string]*bucket{}}
}

// clientAddr is the peer's IP address without the port.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// refill brings addr's bucket up to date; l.mu is held.
func (l *failLimiter) refill(addr string, now time.Time) *bucket {
	b, ok := l.buckets[addr]
	if !ok {
		if len(l.buckets) >= authFailureClients {
			for k, o := range l.buckets {
				if o.tokens+now.Sub(o.last).Seconds()*o.rate >= o.burst {
					delete(l.buckets, k)
				}
			}
		}
		if len(l.buckets) >= authFailureClients {
			addr = "overflow"
			if b, ok = l.buckets[addr]; ok {
				return l.refill(addr, now)
			}
		}
		b = &bucket{tokens: authFailureBurst, last: now, rate: authFailureRate, burst: authFailureBurst}
		l.buckets[addr] = b
	}
	b.tokens = math.Min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	return b
}

// wait says how long addr must wait before its next attempt; 0 means it
// may try now.
func (l *failLimiter) wait(addr string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.refill(addr, l.now())
	if b.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
}

// fail records a failed attempt of addr.
func (l *failLimiter) fail(addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.refill(addr, l.now())
	b.tokens = math.Max(b.tokens-1, 0)
}
