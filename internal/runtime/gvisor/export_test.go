package gvisor

import "context"

// PingForTest round-trips the agent channel without running a process.
func PingForTest(ctx context.Context, sb any) error { return sb.(*sandbox).ch.Ping(ctx) }
