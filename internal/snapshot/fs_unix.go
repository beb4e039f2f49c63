package snapshot

import "syscall"

// errNotDir: a key whose parent is an object, not a directory.
var errNotDir = syscall.ENOTDIR
