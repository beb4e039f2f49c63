package store

import (
	"context"
	"time"
)

// NodeCapacity is an amount of a node's resources: its total (what it can
// hold) or what its sandboxes are allocated (their sizes, not their use).
type NodeCapacity struct {
	CPUs        float64
	MemoryBytes int64
	DiskBytes   int64
	Slots       int // sandboxes
}

// Node is a host of the fleet as its last heartbeat described it.
type Node struct {
	ID         string
	Region     string
	Address    string // base URL of its node API; "" for the one-box server's node
	Version    string // orkestrd build version
	APIVersion int
	Capacity   NodeCapacity
	Allocated  NodeCapacity
	Running    int
	// Templates are the built templates; Warm the warm sandboxes ready per
	// template.
	Templates      []string
	Warm           map[string]int
	NetworkEnabled bool
	DiskLow        bool
	// RegisteredAt is the first heartbeat, HeartbeatAt the last, both by
	// the database's clock. HeartbeatAge is how long ago the last one was
	// when ListNodes read it, also by the database's clock, so that
	// control-plane replicas with skewed clocks agree on a node's liveness.
	// Heartbeat ignores all three.
	RegisteredAt time.Time
	HeartbeatAt  time.Time
	HeartbeatAge time.Duration
}

// NodeStore keeps the fleet's nodes and the sandboxes they run.
type NodeStore interface {
	// Heartbeat records n (everything but the times) as the node's current
	// state, registering it on its first heartbeat, and sets its
	// HeartbeatAt to the database's now. An empty ID or Region, a negative
	// or non-finite figure is refused.
	Heartbeat(ctx context.Context, n Node) error
	// ListNodes returns every registered node, by id, with HeartbeatAge.
	ListNodes(ctx context.Context) ([]Node, error)
	// RemoveNode deletes a node's record (ErrNotFound if there is none).
	// Its sandboxes' rows keep naming it.
	RemoveNode(ctx context.Context, id string) error

	// EndSandbox records that a sandbox stopped on its own: if it is
	// starting or running with runtime id runtimeID, it becomes status
	// (StatusError or StatusTerminated) with reason as its ErrorMessage,
	// its runtime id and expiry cleared, TerminatedAt now and Version
	// bumped, and true is returned. A sandbox that no longer matches
	// (paused, ended, on another runtime, missing) is left alone: false.
	EndSandbox(ctx context.Context, sandboxID, runtimeID string, status Status, reason string) (bool, error)
	// LoseNode ends, in one transaction, every starting or running sandbox
	// of the node like EndSandbox with StatusError and reason, and returns
	// them as stored. Paused sandboxes (their snapshots) are left alone.
	LoseNode(ctx context.Context, nodeID, reason string) ([]Sandbox, error)
	// LoseNodeIfLapsed is LoseNode if the node's last heartbeat is older
	// than lapse by the database's clock (or it has no record), decided in
	// the same transaction with the node's row locked, so a heartbeat that
	// arrives meanwhile either comes first (nothing is lost, lapsed false)
	// or waits and finds its sandboxes ended. For the node-loss sweeper,
	// which read the ages a moment earlier.
	LoseNodeIfLapsed(ctx context.Context, nodeID string, lapse time.Duration, reason string) (lost []Sandbox, lapsed bool, err error)
	// SandboxesOnNode returns the node's sandboxes (of all accounts) in
	// one of the statuses, or in any status if none is given, oldest
	// first.
	SandboxesOnNode(ctx context.Context, nodeID string, statuses ...Status) ([]Sandbox, error)
}

// LeaseStore grants named, expiring leases, so that exactly one of several
// control-plane replicas runs each singleton loop (deadlines, node loss).
// Expiry is judged by the database's clock.
type LeaseStore interface {
	// TryLease takes the lease name for holder for ttl if it is free,
	// expired or already holder's (then it is renewed), and reports
	// whether holder holds it now. Atomic: two holders never both get it.
	TryLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error)
	// ReleaseLease gives the lease up if holder holds it; otherwise (or if
	// there is none) it does nothing.
	ReleaseLease(ctx context.Context, name, holder string) error
}
