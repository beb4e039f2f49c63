package oci

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// maxSymlinks bounds the symlinks one path walk follows, as the kernel does.
const maxSymlinks = 40

// openDir opens directory rel of the root (O_PATH; "" is the root),
// resolving symlinks as if the root were "/": the kernel keeps every step,
// however a symlink points, absolute or with "..", inside the root.
func (a *applier) openDir(rel string) (int, error) {
	if rel == "" {
		rel = "."
	}
	how := &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	}
	for {
		fd, err := unix.Openat2(a.root, rel, how)
		switch {
		case errors.Is(err, unix.EAGAIN):
			continue // a rename raced the walk; the kernel asks to retry
		case errors.Is(err, unix.ENOSYS):
			return -1, errors.New("this kernel lacks openat2, which unpacking images safely needs (Linux 5.6 or later)")
		}
		return fd, err
	}
}

// mkdirAll is openDir that creates missing directories (0755, as Docker
// does).
func (a *applier) mkdirAll(rel string) (int, error) {
	fd, err := a.openDir(rel)
	if !errors.Is(err, unix.ENOENT) {
		return fd, err
	}
	resolved, err := a.makePath(rel)
	if err != nil {
		return -1, err
	}
	return a.openDir(resolved)
}

// makePath walks rel one component at a time inside the root, following
// symlinks as the kernel would with the root as "/" and creating what is
// missing, and returns the symlink-free path it ends at. A dangling
// symlink such as lib -> usr/lib thus creates usr/lib, as in Docker,
// instead of failing.
func (a *applier) makePath(rel string) (string, error) {
	todo := strings.Split(rel, "/")
	cur := "" // symlink-free, relative to the root
	for links := 0; len(todo) > 0; {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = parentOf(cur) // the root's parent is the root
			continue
		}
		target, err := a.step(cur, c)
		if err != nil {
			return "", err
		}
		if target == "" {
			cur = path.Join(cur, c)
			continue
		}
		if links++; links > maxSymlinks {
			return "", fmt.Errorf("%s: %w", rel, unix.ELOOP)
		}
		if path.IsAbs(target) {
			cur = ""
		}
		todo = append(strings.Split(target, "/"), todo...)
	}
	return cur, nil
}

func parentOf(p string) string {
	if d := path.Dir(p); d != "." {
		return d
	}
	return ""
}

// step makes sure directory cur has an entry c, creating a directory if it
// has none, and returns c's target if c is a symlink ("" if a directory).
func (a *applier) step(cur, c string) (string, error) {
	dir, err := a.openDir(cur)
	if err != nil {
		return "", err
	}
	defer unix.Close(dir)
	var st unix.Stat_t
	err = unix.Fstatat(dir, c, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		if err := unix.Mkdirat(dir, c, 0o755); err != nil {
			return "", err
		}
		a.markSeen(path.Join(cur, c))
		return "", nil
	case err != nil:
		return "", err
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return readlinkAt(dir, c)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return "", fmt.Errorf("%s: %w", path.Join(cur, c), unix.ENOTDIR)
	}
	return "", nil
}

func readlinkAt(dir int, name string) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(dir, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// removeAt removes name from directory dirfd, with everything below it if
// it is a directory, never following a symlink. A missing name is fine.
func removeAt(dirfd int, name string) error {
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return fmt.Errorf("refusing to remove %q", name) // a bug, not a layer: callers check names
	}
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	names, err := readDirNames(fd)
	for _, n := range names {
		if err = removeAt(fd, n); err != nil {
			break
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// readDirNames lists the directory open as dirfd (which may be O_PATH).
func readDirNames(dirfd int) ([]string, error) {
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), ".")
	defer f.Close()
	return f.Readdirnames(-1)
}
