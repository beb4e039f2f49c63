package wire

// File operations added with users and watches. Each takes Request.FS and
// replies with one JSON frame, except OpWatch, which streams.
const (
	// OpStatX replies with a Stat of FS.Path (not following a final
	// symlink).
	OpStatX = "statx"
	// OpExists replies with a Stat whose Exists says whether FS.Path is
	// there; a missing path is not an error.
	OpExists = "exists"
	// OpMkdirX makes FS.Path (with FS.Parents, its missing parents too)
	// and replies with its Stat.
	OpMkdirX = "mkdirx"
	// OpRename moves FS.Path to FS.Dest (replacing it only with
	// FS.Overwrite) and replies with the Stat of FS.Dest.
	OpRename = "rename"
	// OpWatch watches the directory FS.Path (with FS.Recursive, its
	// subdirectories too): a KindJSON WatchStarted, then one KindJSON
	// WatchEvent per change until the host closes the stream.
	OpWatch = "watch"
)

// FS are the arguments of the file operations above.
type FS struct {
	Path      string `json:"path"`
	Dest      string `json:"dest,omitempty"`
	Parents   bool   `json:"parents,omitempty"`
	Overwrite bool   `json:"overwrite,omitempty"`
	Recursive bool   `json:"recursive,omitempty"`
	Mode      uint32 `json:"mode,omitempty"`
	// User does the operation as this user of /etc/passwd ("" is root):
	// its permissions decide, and what it creates is its own.
	User string `json:"user,omitempty"`
}

// Stat describes one path.
type Stat struct {
	Exists   bool   `json:"exists"`
	Name     string `json:"name,omitempty"`
	Path     string `json:"path"`
	Type     string `json:"type,omitempty"` // file, dir, symlink, fifo, socket, char_device, block_device
	Size     int64  `json:"size"`
	Mode     uint32 `json:"mode"` // permission bits with setuid, setgid and sticky
	UID      uint32 `json:"uid"`
	GID      uint32 `json:"gid"`
	Owner    string `json:"owner,omitempty"` // from /etc/passwd, if listed
	Group    string `json:"group,omitempty"` // from /etc/group, if listed
	AccessNS int64  `json:"access_ns,omitempty"`
	ModifyNS int64  `json:"modify_ns,omitempty"`
	ChangeNS int64  `json:"change_ns,omitempty"`
	Target   string `json:"target,omitempty"` // a symlink's target
}

// CodeCrossDevice: a rename between two filesystems (e.g. /tmp and
// /workspace).
const CodeCrossDevice = "cross_device"

// WatchStarted acknowledges OpWatch.
type WatchStarted struct {
	Dirs int `json:"dirs"` // directories watched
}

// WatchEvent is one change under a watched directory. Path (and From) are
// relative to the watched directory; "" is the directory itself.
type WatchEvent struct {
	Type  string `json:"type"` // create, write, remove, rename, chmod, overflow, limit
	Path  string `json:"path"`
	From  string `json:"from,omitempty"` // rename: the old path ("" when it came from outside)
	IsDir bool   `json:"is_dir,omitempty"`
}
