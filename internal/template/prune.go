package template

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	imagesDir     = ".images" // unpacked images, one per manifest digest
	ociDir        = ".oci"    // the layer cache: blobs/sha256/<hex>
	imageMetaFile = "image.json"
	lockFile      = ".lock"
)

// imageMeta is <store>/.images/sha256-<hex>/image.json.
type imageMeta struct {
	Ref    string   `json:"ref"`
	Digest string   `json:"digest"`
	Layers []string `json:"layers"`
}

// lock takes the store's lock: shared for a build, exclusive (and without
// waiting) for a prune, so a prune never removes what a build is about to
// install.
func (s Store) lock(exclusive bool) (func(), error) {
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(s.Dir, lockFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX | unix.LOCK_NB
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("a template build is running in %s; prune again when it is done", s.Dir)
		}
		return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

// Pruned says what Prune removed and kept, with paths relative to the
// store.
type Pruned struct {
	Removed []string // unpacked images, cached layers, leftovers of interrupted builds
	Bytes   int64    // the disk space they took
	// InUse are unpacked images no template names that a process on this
	// host (a running sandbox) has as its root; they are kept.
	InUse []string
	// BlobsKept, if set, says why no cached layer was removed.
	BlobsKept string
}

// Prune removes the unpacked images under .images that no built template
// uses and that no process on this host runs in, the cached layers under
// .oci that no kept image needs, and what interrupted builds left there.
// It refuses to run while a build is running.
func (s Store) Prune() (Pruned, error) {
	var out Pruned
	unlock, err := s.lock(true)
	if err != nil {
		return out, err
	}
	defer unlock()
	used, err := s.imagesInUse()
	if err != nil {
		return out, err
	}
	roots, err := processRoots()
	if err != nil {
		return out, err
	}
	remove := func(rel string) error {
		p := filepath.Join(s.Dir, rel)
		n := treeSize(p)
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("prune: %w", err)
		}
		out.Removed = append(out.Removed, rel)
		out.Bytes += n
		return nil
	}

	needed := map[string]bool{} // layer digests of the kept images
	var unknown []string        // kept images that do not say their layers
	ents, err := os.ReadDir(filepath.Join(s.Dir, imagesDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return out, err
	}
	for _, e := range ents {
		rel := filepath.Join(imagesDir, e.Name())
		switch {
		case strings.HasPrefix(e.Name(), ".unpack-"):
			if err := remove(rel); err != nil {
				return out, err
			}
			continue
		case !strings.HasPrefix(e.Name(), "sha256-"):
			continue
		}
		if !used[rel] {
			var st unix.Stat_t
			if unix.Stat(filepath.Join(s.Dir, rel, "rootfs"), &st) == nil && roots[devIno{st.Dev, st.Ino}] {
				out.InUse = append(out.InUse, rel)
			} else {
				if err := remove(rel); err != nil {
					return out, err
				}
				continue
			}
		}
		var m imageMeta
		b, err := os.ReadFile(filepath.Join(s.Dir, rel, imageMetaFile))
		if err == nil {
			err = json.Unmarshal(b, &m)
		}
		if err != nil {
			unknown = append(unknown, rel)
			continue
		}
		for _, l := range m.Layers {
			needed[strings.TrimPrefix(l, "sha256:")] = true
		}
	}

	blobDir := filepath.Join(ociDir, "blobs", "sha256")
	blobs, err := os.ReadDir(filepath.Join(s.Dir, blobDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return out, err
	}
	if len(unknown) > 0 {
		out.BlobsKept = fmt.Sprintf("%s do not list their layers (unpacked by an older orkestrd); rebuild their templates with --force to let prune remove cached layers", strings.Join(unknown, ", "))
	}
	for _, e := range blobs {
		leftover := strings.HasPrefix(e.Name(), ".part-")
		if leftover || (len(unknown) == 0 && !needed[e.Name()]) {
			if err := remove(filepath.Join(blobDir, e.Name())); err != nil {
				return out, err
			}
		}
	}
	return out, nil
}

// imagesInUse returns the unpacked images (".images/sha256-…") that built
// templates use. A template whose template.json cannot be read stops the
// prune: what it uses is unknown.
func (s Store) imagesInUse() (map[string]bool, error) {
	used := map[string]bool{}
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return used, nil
	}
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if !e.IsDir() || ValidName(e.Name()) != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.Dir, e.Name(), "template.json"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		var r Record
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err != nil {
			return nil, fmt.Errorf("template %s: cannot read template.json, so prune cannot tell which image it uses (rebuild it with `orkestrd admin template build --force %s`): %w", e.Name(), e.Name(), err)
		}
		if r.Rootfs != "" {
			used[filepath.Dir(filepath.Clean(r.Rootfs))] = true
		}
	}
	return used, nil
}

type devIno struct{ dev, ino uint64 }

// processRoots returns the root directories of the processes on this host:
// runsc's gofer runs in its sandbox's template rootfs, so an image a
// running sandbox uses is among them, whichever server started it. Only
// root sees other users' processes' roots, so prune must run as root;
// processes even root may not inspect (another container's) are skipped.
func processRoots() (map[devIno]bool, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("prune must run as root: only root sees which images running sandboxes use")
	}
	roots := map[devIno]bool{}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing processes to find the images sandboxes run in: %w", err)
	}
	for _, p := range procs {
		if p.Name()[0] < '0' || p.Name()[0] > '9' {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc", p.Name(), "root"), &st) == nil {
			roots[devIno{st.Dev, st.Ino}] = true
		}
	}
	return roots, nil
}

// treeSize is the disk space the files under p take, each inode once (an
// image's hard links share theirs).
func treeSize(p string) int64 {
	var n int64
	seen := map[devIno]bool{}
	_ = filepath.WalkDir(p, func(q string, _ fs.DirEntry, err error) error {
		var st unix.Stat_t
		if err != nil || unix.Lstat(q, &st) != nil || seen[devIno{st.Dev, st.Ino}] {
			return nil
		}
		seen[devIno{st.Dev, st.Ino}] = true
		n += st.Blocks * 512
		return nil
	})
	return n
}
