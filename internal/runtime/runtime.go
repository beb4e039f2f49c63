// Package runtime defines the seam between orkestr and the isolation
// technology that runs sandboxes: a Driver creates, restores, lists and
// reconciles sandboxes on one host, and a Sandbox runs commands and moves
// files through the agent inside it.
//
// gVisor (package gvisor) is the implementation today; a micro-VM driver for
// hosts with hardware KVM belongs behind the same interfaces and must pass
// the same test suite: the conformance suite of package runtimetest, which
// the in-memory driver of package fake passes too.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"
)

// Resources are the limits a sandbox's size maps to.
type Resources struct {
	CPU         float64 // vCPUs; becomes a CFS quota of CPU × period
	MemoryBytes int64
	// PIDs caps the tasks (processes and threads) of the sandbox's
	// commands, inside the sandbox: past it fork and clone fail there. The
	// host limit of the sandbox is larger (gVisor needs host tasks of its
	// own per sandbox process; see gvisor.HostTasks).
	PIDs int64
	// DiskBytes caps what the sandbox can write to its root filesystem
	// (its copy-on-write layer, /workspace included); 0: no cap. Fixed
	// when the sandbox starts: a claim or SetResources cannot change it.
	DiskBytes int64 `json:",omitempty"`
}

func (r Resources) String() string {
	return fmt.Sprintf("%.2g vCPU, %d MiB, %d pids, %d MiB disk", r.CPU, r.MemoryBytes>>20, r.PIDs, r.DiskBytes>>20)
}

// Spec describes a sandbox to create.
type Spec struct {
	Template string // catalog name, recorded for restore and listing
	// TemplateDigest names the template's build (template.Record.Identity);
	// a snapshot records it so a restore elsewhere can check it has the
	// same template.
	TemplateDigest string
	Rootfs         string // absolute path of the template's read-only root filesystem
	Resources      Resources
	Labels         map[string]string // recorded with the sandbox; survive a host restart
	// Networked gives the sandbox a network interface whose policy denies
	// everything until a claim sets a mode; without it the sandbox has
	// loopback only (network "off") and can never be given more.
	Networked bool
}

// Network modes of a claim (API.md `network`).
const (
	NetworkOff        = "off"
	NetworkRestricted = "restricted"
	NetworkOpen       = "open"
)

// Claim binds a started sandbox to its owner. Nothing in it is known before
// the claim, so pooled sandboxes never carry another owner's data.
type Claim struct {
	Env       map[string]string
	Hostname  string
	Resources Resources
	Labels    map[string]string
	// Network is the policy of a networked sandbox ("restricted" or
	// "open"); "off" or empty for one without a network.
	Network string
	// NetworkAllow adds names to the operator's allow-list of a
	// restricted sandbox.
	NetworkAllow []string
}

// BlockedConnection is a connection (or a DNS name) the network policy
// refused.
type BlockedConnection struct {
	Time time.Time
	Host string // the name when the sandbox's resolver knows it, else the address
	Port int    // 0 for a refused DNS name
}

// ExecRequest is one command for /bin/sh -c.
type ExecRequest struct {
	Command string
	Env     map[string]string // added to the sandbox's env for this call
	Cwd     string            // default /workspace
	Timeout time.Duration     // 0: none; at the deadline the whole process tree is killed
	Stdin   io.Reader
	Stdout  io.Writer // written as output is produced
	Stderr  io.Writer
	Signals <-chan syscall.Signal
	User    string // "root" (default) or "user"; see process.go
	// Buffered: Stdout and Stderr are only read once the command ends
	// (the API's /exec), so output may be held back until then: a remote
	// node sends it with the result, in one write, instead of each piece
	// as it comes.
	Buffered bool
}

// ExecResult is how a command ended.
type ExecResult struct {
	ExitCode int
	Signal   int
	Duration time.Duration
	TimedOut bool
	// Blocked lists what the network policy refused while the command
	// ran (empty for a sandbox without a network).
	Blocked []BlockedConnection
	// OOMKilled: a process of the command was killed because the sandbox
	// reached its memory limit (the sandbox keeps running).
	OOMKilled bool
}

// FileInfo describes a file inside a sandbox.
type FileInfo struct {
	Name     string
	Path     string
	IsDir    bool
	Size     int64
	Mode     uint32
	Modified time.Time
	Symlink  bool
}

// Stats is a reading of a sandbox's cgroups.
type Stats struct {
	CPUNanos         uint64 // cumulative CPU time
	MemoryBytes      uint64 // working set: usage minus reclaimable (inactive file) cache
	MemoryLimitBytes uint64
	MemoryFailures   uint64 // times the limit was hit
	OOMKills         uint64 // the host kernel's kills (each ends the sandbox)
	// ProcessOOMKills counts the sandbox's processes killed at its memory
	// limit so that the sandbox could live on.
	ProcessOOMKills uint64
	PIDs            uint64
	PIDsLimit       uint64
	CPUQuotaMicros  int64
	CPUPeriodMicros uint64
	ReadAt          time.Time
}

// Usage is what metering reads every second: a cheaper subset of Stats.
type Usage struct {
	CPUNanos         uint64 // cumulative CPU time
	MemoryBytes      uint64 // working set
	MemoryLimitBytes uint64
}

// Disk is a reading of a sandbox's writable layer.
type Disk struct {
	UsedBytes  uint64 // host disk the sandbox's writes hold now
	LimitBytes uint64 // its quota; 0: none
}

// DiskReader is implemented by sandboxes that can tell their disk use.
type DiskReader interface {
	Disk() (Disk, error)
}

// UsageReader is implemented by sandboxes that can read Usage more
// cheaply than Stats.
type UsageReader interface {
	Usage(ctx context.Context) (Usage, error)
}

// State of a sandbox as the driver sees it.
type State string

const (
	StateRunning State = "running"
	StateStopped State = "stopped" // exited or killed (e.g. out of memory)
	StateUnknown State = "unknown"
)

// Info describes a sandbox known to a driver.
type Info struct {
	ID        string
	Template  string
	Resources Resources
	Labels    map[string]string
	State     State
	CreatedAt time.Time
	Pooled    bool   // started for the warm pool and not yet claimed
	Network   string // "off", "restricted", "open", or "deny" while pooled
}

// Snapshot describes a checkpoint written to a directory. It names no
// host path: a snapshot restores on any host that has its template (by
// name and TemplateDigest) and the agent build it was taken with.
type Snapshot struct {
	Dir            string
	Bytes          int64
	Template       string
	TemplateDigest string
	Resources      Resources
	Labels         map[string]string
	CreatedAt      time.Time
}

// Sandbox is one running sandbox.
type Sandbox interface {
	ID() string
	Info() Info
	// Configure applies a claim: env and hostname to the agent, limits to
	// the cgroups, labels to the record.
	Configure(ctx context.Context, c Claim) error
	Exec(ctx context.Context, r ExecRequest) (ExecResult, error)
	// ReadFile streams a file into w; w receives nothing if it cannot be opened.
	ReadFile(ctx context.Context, path string, w io.Writer) (FileInfo, error)
	// WriteFile streams r into path, creating parents, replacing atomically.
	WriteFile(ctx context.Context, path string, mode uint32, r io.Reader) (int64, error)
	List(ctx context.Context, path string) ([]FileInfo, error)
	Stat(ctx context.Context, path string) (FileInfo, error)
	Remove(ctx context.Context, path string, recursive bool) error
	MkdirAll(ctx context.Context, path string, mode uint32) error
	Stats(ctx context.Context) (Stats, error)
	SetResources(r Resources) error
	// Checkpoint writes the sandbox's memory, processes and files to dir and
	// stops it; the Sandbox is destroyed afterwards. Restore brings it back.
	Checkpoint(ctx context.Context, dir string) (Snapshot, error)
	// Destroy stops the sandbox and removes every host resource it held.
	// It is idempotent.
	Destroy(ctx context.Context) error
	// Done is closed when the sandbox stops for any reason.
	Done() <-chan struct{}
	// Err says why the sandbox stopped (e.g. ErrOutOfMemory); nil while
	// it runs.
	Err() error
}

// BackgroundConfigurer is implemented by sandboxes that can take a claim
// at once and apply it behind the caller: ConfigureBehind refuses what
// Configure would refuse for the claim itself (ErrInvalidRequest) or for
// the sandbox's state, and otherwise returns at once with the claim taken
// (Info shows it); every operation on the sandbox begun after it waits
// until the claim is applied. A claim that then cannot be applied (the
// host or the agent failed) stops the sandbox, and Err says why. A warm
// claim answers so while its environment, limits and cgroups are still
// being applied, which a caller in another process (the control plane,
// its client) would otherwise wait out on top of its own round trips.
type BackgroundConfigurer interface {
	ConfigureBehind(c Claim) error
}

// LiveCheckpointer is implemented by sandboxes that can write a
// checkpoint and keep running (the source of a fork): the checkpoint
// restores into independent clones while the sandbox goes on.
type LiveCheckpointer interface {
	CheckpointLive(ctx context.Context, dir string) (Snapshot, error)
}

// InPlaceRestorer is implemented by drivers that can restore a snapshot
// under the id of the sandbox it was taken of (which its checkpoint
// destroyed): a pause whose snapshot cannot be kept is undone so.
type InPlaceRestorer interface {
	RestoreAs(ctx context.Context, id, dir, rootfs string, labels map[string]string) (Sandbox, error)
}

// SnapshotReader is implemented by drivers that can describe a snapshot
// directory without restoring it (template, its digest, size).
type SnapshotReader interface {
	ReadSnapshot(dir string) (Snapshot, error)
}

// Archiver is implemented by sandboxes that move directory trees as tar
// streams.
type Archiver interface {
	// Untar extracts a tar (plain, gzip or zstd) into dir inside the
	// sandbox, creating dir; limit bounds the file content written.
	Untar(ctx context.Context, dir string, limit int64, r io.Reader) (Extracted, error)
	// Tar streams dir as a tar ("", "gzip" or "zstd") into w; w receives
	// nothing if dir cannot be opened.
	Tar(ctx context.Context, dir, compression string, w io.Writer) error
}

// Extracted says what an Untar created.
type Extracted struct {
	Entries int
	Bytes   int64
}

// Driver runs sandboxes on one host.
type Driver interface {
	Name() string
	Create(ctx context.Context, s Spec) (Sandbox, error)
	// Restore starts a new sandbox from a checkpoint written by Checkpoint,
	// on this host or another. rootfs must hold the same template.
	Restore(ctx context.Context, dir, rootfs string, labels map[string]string) (Sandbox, error)
	Get(id string) (Sandbox, bool)
	List(ctx context.Context) ([]Info, error)
	// Reconcile runs once at start, after a crash or a clean stop: it
	// re-adopts every leftover sandbox for which keep returns true and
	// destroys every other leftover resource (processes, cgroups, mounts,
	// sockets, directories). A pooled sandbox is never adopted (its pool
	// went with the process that filled it); a nil keep adopts nothing.
	Reconcile(ctx context.Context, keep func(Info) bool) (ReconcileReport, error)
	// Close releases the driver's own resources. With destroy set every
	// sandbox is destroyed as well; otherwise they keep running for the
	// next process to adopt.
	Close(ctx context.Context, destroy bool) error
}

// ReconcileReport says what Reconcile found.
type ReconcileReport struct {
	Adopted   []string
	Destroyed []string
	Removed   []string // stray resources with no sandbox (cgroups, runtime state)
}

// Errors drivers return; callers test them with errors.Is.
var (
	ErrNotFound       = errors.New("sandbox not found")
	ErrStopped        = errors.New("sandbox is not running")
	ErrOutOfMemory    = errors.New("sandbox was killed because it exceeded its memory limit")
	ErrFileNotFound   = errors.New("file not found")
	ErrInvalidPath    = errors.New("invalid path")
	ErrIsDir          = errors.New("is a directory")
	ErrNotDir         = errors.New("not a directory")
	ErrNotEmpty       = errors.New("directory not empty")
	ErrNoSpace        = errors.New("no space left in the sandbox")
	ErrInvalidRequest = errors.New("invalid request")
	ErrPermission     = errors.New("permission denied")
	ErrAgent          = errors.New("sandbox agent unavailable")
	// File errors the caller causes (issue 16): each becomes a 4xx.
	ErrReadOnly  = errors.New("read-only file system")
	ErrFileBusy  = errors.New("file busy (a mount point or in use)")
	ErrIO        = errors.New("file cannot be read")
	ErrFileLimit = errors.New("file operation over its bounds")
	// ErrAgentFailed: the agent answered but could not do what was asked
	// for a reason it has no code for (its message says which).
	ErrAgentFailed    = errors.New("the sandbox agent failed the request")
	ErrBusy           = errors.New("sandbox is busy")
	ErrNoNetwork      = errors.New("networking is not available on this host")
	ErrInvalidArchive = errors.New("invalid archive")
	ErrTooLarge       = errors.New("too large")
)
