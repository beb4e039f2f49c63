// Package nodeapi is the contract between the control plane and the hosts
// that run sandboxes. Node is everything the control plane may ask of a
// host; the one-box server calls a node in process (package node implements
// Node), a fleet's control plane calls it over HTTP (Client, served by
// Handler on every `orkestrd node`). Versioned: a request names the API
// version it speaks and a node answers any version in
// [MinAPIVersion, APIVersion], so a control plane and a node one version
// apart still talk.
package nodeapi

import (
	"context"
	"errors"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/store"
)

// API versions this build speaks.
const (
	APIVersion    = 1
	MinAPIVersion = 1
)

// Capacity is what a node can hold (or holds).
type Capacity struct {
	CPUs        float64 `json:"cpus"`
	MemoryBytes int64   `json:"memory_bytes"`
	DiskBytes   int64   `json:"disk_bytes"`
	Slots       int     `json:"slots"` // sandboxes
}

// Info describes a node: what it is, what it can take, what it has built.
type Info struct {
	ID         string `json:"id"`
	Region     string `json:"region"`
	Address    string `json:"address"` // base URL of its node API; "" in process
	Version    string `json:"version"` // orkestrd build version
	APIVersion int    `json:"api_version"`
	// Capacity is the node's total; Allocated the sum over the sandboxes
	// it runs (their sizes, not their use), Running how many.
	Capacity  Capacity `json:"capacity"`
	Allocated Capacity `json:"allocated"`
	Running   int      `json:"running"`
	// Templates are the built templates; Warm the warm sandboxes ready per
	// template (any size).
	Templates      []string       `json:"templates"`
	Warm           map[string]int `json:"warm,omitempty"`
	NetworkEnabled bool           `json:"network_enabled"`
	// DiskLow: free disk is under the node's reserve; it takes no new
	// running sandbox (create, restore) until it is not.
	DiskLow bool `json:"disk_low"`
}

// CreateRequest starts a sandbox for a store row.
type CreateRequest struct {
	SandboxID string        `json:"sandbox_id"`
	AccountID string        `json:"account_id"`
	Template  string        `json:"template"`
	Size      string        `json:"size"`
	Claim     runtime.Claim `json:"claim"`
}

// RestoreRequest brings a checkpointed sandbox back on this node.
type RestoreRequest struct {
	SandboxID string `json:"sandbox_id"`
	AccountID string `json:"account_id"`
	Snapshot  string `json:"snapshot"` // a Snapshot.ID from Checkpoint
	Template  string `json:"template"`
	Size      string `json:"size"`
}

// CheckpointRequest names the snapshot a checkpoint writes.
type CheckpointRequest struct {
	Snapshot string `json:"snapshot"`
}

// Snapshot names a checkpoint a node keeps. ID is opaque to the control
// plane (no host path): only the node maps it to storage.
type Snapshot struct {
	ID    string `json:"id"`
	Bytes int64  `json:"bytes"`
}

// Keep is what the store says a node owns, for Reconcile: every other
// sandbox and snapshot on the node is destroyed.
type Keep struct {
	Sandboxes map[string]string `json:"sandboxes"` // runtime id -> sandbox id
	Snapshots []string          `json:"snapshots"` // snapshot ids
}

// Sample is one metrics reading of a running sandbox.
type Sample struct {
	T          time.Time `json:"t"`
	CPUPercent float64   `json:"cpu_percent"` // of the allocated cores
	CPUCores   float64   `json:"cpu_cores"`
	MemBytes   uint64    `json:"mem_bytes"`
	MemLimit   uint64    `json:"mem_limit"`
}

// Metrics is a running sandbox's recent samples (oldest first, newer than
// the since asked for) and disk reading.
type Metrics struct {
	Samples         []Sample      `json:"samples"`
	Latest          *Sample       `json:"latest,omitempty"`
	IntervalSeconds int           `json:"interval_seconds"`
	Disk            *runtime.Disk `json:"disk,omitempty"`
	// Lifetime is the sandbox's usage over its whole life, flushed or
	// not yet (exact: the node adds what it has not written).
	Lifetime *store.Usage `json:"lifetime,omitempty"`
}

// Node is one host as the control plane sees it. Sandboxes it returns
// implement runtime.Sandbox and the optional interfaces the host's driver
// has (runtime.FileOps, runtime.UserFiles, runtime.Processes,
// runtime.TerminalOpener, runtime.Archiver, runtime.DiskReader).
//
// The node meters what it runs: it samples every sandbox it runs and adds
// the usage to the store itself, and records in the store a sandbox that
// stopped on its own (store.Store.EndSandbox), so the control plane holds
// no per-sandbox state.
type Node interface {
	Info(ctx context.Context) (Info, error)
	// Create claims a warm sandbox or starts one. ErrTemplateNotBuilt,
	// ErrUnknownSize, runtime.ErrNoNetwork, ErrDiskLow, ErrNoCapacity.
	// Idempotent by SandboxID: while that sandbox runs (or starts) on the
	// node, a create for it answers with it (another account's:
	// runtime.ErrExists), so a call repeated after a lost answer starts
	// nothing more.
	Create(ctx context.Context, r CreateRequest) (runtime.Sandbox, error)
	// Sandbox is a running sandbox of this node (runtime.ErrNotFound).
	Sandbox(ctx context.Context, runtimeID string) (runtime.Sandbox, error)
	// Checkpoint snapshots a running sandbox into snapshot id snapshotID
	// and stops it. The control plane names the snapshot (the sandbox's
	// id, "-", a fresh ULID) and records the name before it asks, so that
	// a crash after the checkpoint finds the snapshot instead of losing it.
	Checkpoint(ctx context.Context, runtimeID, snapshotID string) (Snapshot, error)
	// CheckpointLive snapshots a running sandbox into snapshot id
	// snapshotID (named as for Checkpoint) and leaves it running: the
	// source of a fork. Its calls in flight are drained first and its
	// attached streams end. runtime.ErrInvalidRequest if the node's
	// runtime cannot.
	CheckpointLive(ctx context.Context, runtimeID, snapshotID string) (Snapshot, error)
	// Restore starts a sandbox from a snapshot this node holds
	// (ErrSnapshotNotFound). The snapshot stays until RemoveSnapshot.
	// Idempotent by SandboxID, as Create.
	Restore(ctx context.Context, r RestoreRequest) (runtime.Sandbox, error)
	// RemoveSnapshot deletes a snapshot; a missing one is no error.
	RemoveSnapshot(ctx context.Context, id string) error
	// Destroy stops a sandbox and frees everything it held; a missing one
	// is no error.
	Destroy(ctx context.Context, runtimeID string) error
	// Reconcile adopts what keep lists and destroys every other sandbox
	// and snapshot of the node.
	Reconcile(ctx context.Context, keep Keep) (runtime.ReconcileReport, error)
	// Metrics of a running sandbox since a time (zero: all kept).
	Metrics(ctx context.Context, runtimeID string, since time.Time) (Metrics, error)
}

// Errors of the contract; the HTTP transport carries each as a code and
// the client returns the same value, so errors.Is works across it. The
// runtime's errors (runtime.Err*) travel the same way.
var (
	ErrTemplateNotBuilt = errors.New("template not built on this node")
	ErrUnknownSize      = errors.New("unknown size")
	ErrDiskLow          = errors.New("node disk under its reserve")
	ErrNoCapacity       = errors.New("node has no room for another sandbox")
	ErrSnapshotNotFound = errors.New("snapshot not found on this node")
	// ErrSnapshotStoreUnavailable: the snapshot store could not be reached
	// to put or get a snapshot; a pause left the sandbox running, a
	// restore left it paused.
	ErrSnapshotStoreUnavailable = errors.New("the snapshot store is unavailable")
	// ErrSnapshotCorrupt: the stored snapshot failed its verification
	// (a flipped byte, a truncation, another key); it is not restored.
	ErrSnapshotCorrupt = errors.New("the stored snapshot is corrupt")
	// ErrUnreachable: the node did not answer (network, down, wrong
	// credentials or an API version it does not speak).
	ErrUnreachable = errors.New("node unreachable")
)
