// Package store is the durable record of accounts, API keys, sandboxes and
// the fleet's nodes and leases. Every state change the API acknowledges is
// committed here first. The implementations (package sqlstore: SQLite,
// the embedded default, and PostgreSQL) share one schema and one test
// suite.
package store

import (
	"context"
	"errors"
	"time"
)

// Errors returned by every implementation; test with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("already exists")
	// ErrLimit: a conditional write was refused because the account is at
	// a limit (concurrent sandboxes, snapshots).
	ErrLimit = errors.New("limit reached")
	// ErrStale: the row changed since it was read (optimistic update lost).
	ErrStale = errors.New("changed concurrently")
	// ErrBadCursor: a list cursor that no list returned.
	ErrBadCursor = errors.New("invalid cursor")
)

// Account owns keys and sandboxes.
type Account struct {
	ID        string // "acc_" + ULID
	Name      string // unique, operator-chosen
	Plan      string // "free", "pro", "team", or an operator's plan name
	CreatedAt time.Time
}

// Scopes.
const (
	ScopeSandboxesRead  = "sandboxes:read"
	ScopeSandboxesWrite = "sandboxes:write"
)

// APIKey is stored by hash only; the plaintext is shown once at creation.
type APIKey struct {
	ID         string // "key_" + ULID
	AccountID  string
	Prefix     string // the first 12 characters of the key, e.g. "ork_AbCdEfGh", for listing
	Hash       string // hex SHA-256 of the whole key
	Scopes     []string
	CreatedAt  time.Time
	ExpiresAt  *time.Time
	RevokedAt  *time.Time
	LastUsedAt *time.Time
}

// Status of a sandbox.
type Status string

const (
	StatusStarting   Status = "starting"
	StatusRunning    Status = "running"
	StatusPaused     Status = "paused"
	StatusTerminated Status = "terminated"
	StatusError      Status = "error"
)

// Why a sandbox ended, as its record keeps it (Sandbox.ErrorMessage).
const (
	EndTerminated  = "terminated by request"
	EndExpired     = "timeout reached"
	EndOutOfMemory = "the sandbox was killed because it exceeded its memory limit"
	EndStopped     = "the sandbox stopped unexpectedly"
	EndNodeLost    = "node_lost: the node running the sandbox stopped answering"
	EndCutOff      = "the server restarted while this sandbox was being created or resumed"
)

// Sandbox is the durable record of one sandbox. Env values are never
// stored: they live only inside the sandbox (and its snapshots).
type Sandbox struct {
	ID             string // "sbx_" + ULID
	AccountID      string
	Status         Status
	Template       string
	Size           string
	CPU            float64
	MemoryMB       int
	Network        string
	Region         string
	TimeoutSeconds int
	// Deadline bookkeeping: while running, ExpiresAt is when it ends;
	// while paused, RemainingMS is what is left of the running time.
	ExpiresAt     *time.Time
	RemainingMS   int64
	EnvKeys       []string
	Metadata      map[string]string
	Node          string // which node runs it (or holds its snapshot)
	RuntimeID     string // the runtime's id on that node while running
	SnapshotDir   string // while paused
	SnapshotBytes int64
	ErrorMessage  string
	CreatedAt     time.Time
	UpdatedAt     time.Time
	PausedAt      *time.Time
	TerminatedAt  *time.Time
	Version       int64 // incremented by every update; used for optimistic concurrency
}

// ListFilter selects a page of an account's sandboxes, newest first.
type ListFilter struct {
	Status Status // empty: any
	Limit  int    // 1..200
	Cursor string // opaque, from a previous page; empty for the first
}

type unflushedKey struct{}

// Unflushed marks the writes made with the returned context as ones a
// crash of the database may lose because what they record is healed
// without them (a create's record of its sandbox running: the sandbox's
// node adopts the row it finds still starting, see fleet.Sweep).
// PostgreSQL commits them without waiting for its disk, which is most of
// a write's time there; SQLite's commits (synchronous=NORMAL, in WAL
// mode) never wait for one. UpdateSandbox with a limit, a transaction of
// several statements, ignores the mark.
func Unflushed(ctx context.Context) context.Context {
	return context.WithValue(ctx, unflushedKey{}, true)
}

// IsUnflushed reports whether ctx marks its writes as Unflushed.
func IsUnflushed(ctx context.Context) bool {
	v, _ := ctx.Value(unflushedKey{}).(bool)
	return v
}

// Store is the persistence seam.
type Store interface {
	CreateAccount(ctx context.Context, a Account) error // ErrConflict on a taken name
	AccountByID(ctx context.Context, id string) (Account, error)
	AccountByName(ctx context.Context, name string) (Account, error)
	ListAccounts(ctx context.Context) ([]Account, error)
	SetAccountPlan(ctx context.Context, id, plan string) error

	CreateKey(ctx context.Context, k APIKey) error
	KeyByHash(ctx context.Context, hash string) (APIKey, error)
	ListKeys(ctx context.Context, accountID string) ([]APIKey, error)
	// RevokeKey revokes the account's key whose ID or Prefix is idOrPrefix.
	RevokeKey(ctx context.Context, accountID, idOrPrefix string, at time.Time) error
	// TouchKey records a use; implementations may coalesce writes.
	TouchKey(ctx context.Context, id string, at time.Time) error

	// CreateSandbox inserts s unless the account already has maxActive or
	// more sandboxes in starting or running status (ErrLimit). The count
	// and the insert are atomic with respect to other creates of the same
	// account. maxActive <= 0 means no limit.
	CreateSandbox(ctx context.Context, s Sandbox, maxActive int) error
	// CreateSandboxes inserts all of ss (one account's) or none: ErrLimit
	// if they do not all fit under maxActive (0: no limit) in one
	// transaction with the count.
	CreateSandboxes(ctx context.Context, ss []Sandbox, maxActive int) error
	// GetSandbox returns the account's sandbox; another account's sandbox
	// is ErrNotFound, exactly like a missing one.
	GetSandbox(ctx context.Context, accountID, id string) (Sandbox, error)
	ListSandboxes(ctx context.Context, accountID string, f ListFilter) (page []Sandbox, nextCursor string, err error)
	// UpdateSandbox writes s if its Version still matches the stored one
	// (ErrStale otherwise) and increments Version. With limit > 0 the
	// write is refused with ErrLimit when the account already has limit
	// other sandboxes in the same class as s.Status: paused (the snapshot
	// cap), or starting and running (the concurrency limit). The count and
	// the write are one transaction, so concurrent requests cannot both
	// take the last slot.
	UpdateSandbox(ctx context.Context, s Sandbox, limit int) (Sandbox, error)
	// SandboxesByStatus returns every sandbox (of all accounts) in one of
	// the statuses, for reconciliation and the deadline sweeper.
	SandboxesByStatus(ctx context.Context, statuses ...Status) ([]Sandbox, error)

	UsageStore
	MemberStore
	NodeStore
	LeaseStore

	Close() error
}
