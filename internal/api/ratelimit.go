package api

import (
	"math"
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
