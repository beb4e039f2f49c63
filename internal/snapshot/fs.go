package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// fsStore keeps each object as a file under its root, named by its key.
// Objects are written to a temporary file under root/.tmp (keys cannot
// start with '.') and renamed into place, so a reader never sees a partial
// object and a crash leaves at most a temporary file under .tmp, never a
// partial object.
type fsStore struct{ root string }

// NewFS returns a Store on the local filesystem under dir (created on the
// first write): the one-box default.
func NewFS(dir string) Store { return &fsStore{root: filepath.Clean(dir)} }

func (s *fsStore) path(key string) string { return filepath.Join(s.root, filepath.FromSlash(key)) }

func (s *fsStore) Put(ctx context.Context, key string, r io.Reader) error {
	return s.write(ctx, key, r, false)
}

func (s *fsStore) Create(ctx context.Context, key string, r io.Reader) error {
	return s.write(ctx, key, r, true)
}

func (s *fsStore) write(ctx context.Context, key string, r io.Reader, exclusive bool) (err error) {
	if err := ValidKey(key); err != nil {
		return err
	}
	tmpDir := filepath.Join(s.root, ".tmp")
	if err := os.MkdirAll(tmpDir, 0o700); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	f, err := os.CreateTemp(tmpDir, "put-*")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = io.Copy(f, ctxReader{ctx, r}); err != nil {
		return fmt.Errorf("snapshot: writing %s: %w", key, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("snapshot: writing %s: %w", key, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("snapshot: writing %s: %w", key, err)
	}
	dst := s.path(key)
	if err = os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return fmt.Errorf("snapshot: writing %s: %w", key, err)
	}
	if exclusive {
		// link(2) fails if dst exists: of two Creates exactly one wins.
		if err = os.Link(tmp, dst); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%w: %s", ErrExists, key)
			}
			return fmt.Errorf("snapshot: writing %s: %w", key, err)
		}
		os.Remove(tmp)
	} else if err = os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("snapshot: writing %s: %w", key, err)
	}
	// The rename is durable once the directory is.
	if d, derr := os.Open(filepath.Dir(dst)); derr == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

func (s *fsStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := ValidKey(key); err != nil {
		return nil, err
	}
	f, err := os.Open(s.path(key))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotDir) {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
		}
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return f, nil
}

func (s *fsStore) Delete(ctx context.Context, key string) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	p := s.path(key)
	fi, err := os.Lstat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotDir) {
			return nil
		}
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if !fi.Mode().IsRegular() {
		return nil // a directory of other keys, not an object
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("snapshot: deleting %s: %w", key, err)
	}
	// Drop directories the delete emptied (Remove fails on a non-empty one).
	for d := filepath.Dir(p); d != s.root && strings.HasPrefix(d, s.root+string(filepath.Separator)); d = filepath.Dir(d) {
		if os.Remove(d) != nil {
			break
		}
	}
	return nil
}

func (s *fsStore) List(ctx context.Context, prefix string) ([]Object, error) {
	if err := validPrefix(prefix); err != nil {
		return nil, err
	}
	// Walk the deepest directory the prefix names entirely.
	start := s.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = s.path(prefix[:i])
	}
	var out []Object
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(s.root, p)
		key := filepath.ToSlash(rel)
		if d.IsDir() {
			if p != s.root && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(key, prefix) || ValidKey(key) != nil {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil // deleted meanwhile
		}
		out = append(out, Object{Key: key, Size: fi.Size(), Modified: fi.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: listing %s: %v", ErrUnavailable, s.root, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}
