//go:build linux

package tarx

import (
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// createFile creates base, a single name, in the directory dir of the
// cache (opened through parent, so beneath the target) with one openat on
// the directory's descriptor: O_EXCL never follows a link at base and
// O_NOFOLLOW is said too, so nothing is created outside the directory.
// Inside gVisor this is half the time of os.Root.OpenFile per file, whose
// *os.File also registers every file with the poller (a trapped syscall).
func createFile(c *dirCache, dir string, parent *os.Root, base string, perm fs.FileMode) (entryFile, error) {
	dfd, err := c.fd(dir, parent)
	if err != nil {
		return nil, err
	}
	for {
		fd, err := unix.Openat(dfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "openat", Path: base, Err: err}
		}
		return rawFile(fd), nil
	}
}

// rawFile is a file being extracted, by its descriptor.
type rawFile int

func (f rawFile) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Write(int(f), p[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, &fs.PathError{Op: "write", Path: "", Err: err}
		}
		n += m
	}
	return n, nil
}

func (f rawFile) chmod(mode uint32) error { return unix.Fchmod(int(f), mode) }

func (f rawFile) Close() error { return unix.Close(int(f)) }
