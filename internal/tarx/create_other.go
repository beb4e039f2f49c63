//go:build !linux

package tarx

import (
	"io/fs"
	"os"
)

// createFile creates base, a single name, in parent.
func createFile(_ *dirCache, _ string, parent *os.Root, base string, perm fs.FileMode) (entryFile, error) {
	f, err := parent.OpenFile(base, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

type osFile struct{ f *os.File }

func (o osFile) Write(p []byte) (int, error) { return o.f.Write(p) }
func (o osFile) chmod(mode uint32) error {
	m := fs.FileMode(mode & 0o777)
	if mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return o.f.Chmod(m)
}
func (o osFile) Close() error { return o.f.Close() }
