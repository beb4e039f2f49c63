package runtime

import (
	"context"
	"errors"
	"io"
	"time"
)

// FSRequest names the paths of a file operation.
type FSRequest struct {
	Path      string
	Dest      string // Rename: the new path
	Parents   bool   // Mkdir: make missing parents too
	Overwrite bool   // Rename: replace an existing Dest
	Recursive bool   // Watch: subdirectories too
	Mode      uint32 // Mkdir: permission bits (0: 0755)
	User      string // UserRoot (default) or UserUser: whose permissions decide, who owns what is made
}

// Stat describes one path inside a sandbox.
type Stat struct {
	Exists   bool
	Name     string
	Path     string
	Type     string // file, dir, symlink, fifo, socket, char_device, block_device
	Size     int64
	Mode     uint32 // permission bits with setuid, setgid and sticky
	UID, GID uint32
	Owner    string // name of UID in the sandbox's /etc/passwd, if any
	Group    string
	Accessed time.Time
	Modified time.Time
	Changed  time.Time
	Target   string // a symlink's target
}

// WatchEvent is one change under a watched directory; paths are relative
// to it ("" is the directory itself).
type WatchEvent struct {
	Type  string // create, write, remove, rename, chmod, overflow, limit
	Path  string
	From  string // rename: the old path
	IsDir bool
}

// FileOps is implemented by sandboxes with the extended file calls.
type FileOps interface {
	StatPath(ctx context.Context, r FSRequest) (Stat, error)
	// Exists answers Stat{Exists: false} for a missing path, not an error.
	Exists(ctx context.Context, r FSRequest) (Stat, error)
	Mkdir(ctx context.Context, r FSRequest) (Stat, error)
	Rename(ctx context.Context, r FSRequest) (Stat, error)
	// Watch calls started once the watch holds, then onEvent for every
	// change until ctx ends, the watched directory goes (nil), or the
	// sandbox pauses or stops (ErrDetached).
	Watch(ctx context.Context, r FSRequest, started func(dirs int), onEvent func(WatchEvent) error) error
}

// UserFiles is implemented by sandboxes whose read, write, list and remove
// can be done as a user other than root ("" or UserRoot is root): that
// user's permissions decide, and what it writes belongs to it.
type UserFiles interface {
	ReadFileAs(ctx context.Context, user, path string, w io.Writer) (FileInfo, error)
	WriteFileAs(ctx context.Context, user, path string, mode uint32, r io.Reader) (int64, error)
	ListAs(ctx context.Context, user, path string) ([]FileInfo, error)
	RemoveAs(ctx context.Context, user, path string, recursive bool) error
}

// Errors of the extended file calls.
var (
	ErrExists      = errors.New("file exists")
	ErrCrossDevice = errors.New("source and destination are on different filesystems")
)
