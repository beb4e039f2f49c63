package gvisor

import (
	"context"
	"time"

	"github.com/orkestr-eu/orkestr/internal/agent/client"
)

// PingForTest round-trips the agent channel without running a process.
func PingForTest(ctx context.Context, sb any) error { return sb.(*sandbox).ch.Ping(ctx) }

// ChannelForTest returns a sandbox's raw agent channel, which skips the
// driver's own checks, so tests can reach the agent's.
func ChannelForTest(sb any) *client.Channel { return sb.(*sandbox).ch }

// NetAddr is the sandbox's address on its veth ("" without a network).
func (sb *sandbox) NetAddr() string {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.m.Net == nil {
		return ""
	}
	return sb.m.Net.SandboxAddr.String()
}

// SetPooledIdleBootForTest changes how long a pooled sandbox starts at
// idle priority; it returns the old value.
func SetPooledIdleBootForTest(d time.Duration) time.Duration {
	old := pooledIdleBoot
	pooledIdleBoot = d
	return old
}

// PIDForTest is the host pid of the sandbox's runsc sandbox process.
func PIDForTest(sb any) int { return sb.(*sandbox).pid }
