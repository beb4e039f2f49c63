package fake

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

var _ runtime.Archiver = (*Sandbox)(nil)

// Tar implements runtime.Archiver: dir's tree as a tar, links as links.
func (sb *Sandbox) Tar(ctx context.Context, dir, compression string, w io.Writer) error {
	if err := checkPath(dir); err != nil {
		return err
	}
	switch compression {
	case "", "gzip", "zstd":
	default:
		return fmt.Errorf("%w: unknown compression %q", runtime.ErrInvalidRequest, compression)
	}
	// The tree is copied under the lock and archived outside it.
	sb.mu.Lock()
	if sb.stopErr != nil {
		defer sb.mu.Unlock()
		return sb.stopErr
	}
	wh, err := sb.st.Tree.walkFollow(dir)
	if err == nil && wh.n.Kind != kindDir {
		err = fmt.Errorf("%w: %s", runtime.ErrNotDir, dir)
	}
	var root *node
	if err == nil {
		root = wh.n.clone()
	}
	sb.mu.Unlock()
	if err != nil {
		return err
	}
	var out io.Writer = w
	closeZ := func() error { return nil }
	switch compression {
	case "gzip":
		zw := gzip.NewWriter(w)
		out, closeZ = zw, zw.Close
	case "zstd":
		zw, err := zstd.NewWriter(w, zstd.WithEncoderConcurrency(1))
		if err != nil {
			return err
		}
		out, closeZ = zw, zw.Close
	}
	tw := tar.NewWriter(out)
	var walk func(prefix string, n *node) error
	walk = func(prefix string, n *node) error {
		names := make([]string, 0, len(n.Children))
		for name := range n.Children {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			if err := ctx.Err(); err != nil {
				return err
			}
			c := n.Children[name]
			h := &tar.Header{Name: prefix + name, Mode: int64(c.Mode), ModTime: c.Modified}
			switch c.Kind {
			case kindDir:
				h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
			case kindLink:
				h.Typeflag, h.Linkname = tar.TypeSymlink, c.Target
			default:
				h.Typeflag, h.Size = tar.TypeReg, int64(len(c.Data))
			}
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			switch c.Kind {
			case kindFile:
				if _, err := tw.Write(c.Data); err != nil {
					return err
				}
			case kindDir:
				if err := walk(prefix+name+"/", c); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk("", root); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return closeZ()
}

// Untar implements runtime.Archiver: files, directories and symlinks (as
// links); names that are absolute or climb with "..", entries through a
// link, devices and fifos are refused (ErrInvalidArchive); limit bounds the
// bytes of file content (ErrTooLarge). Entries before a refused one stay.
func (sb *Sandbox) Untar(ctx context.Context, dir string, limit int64, r io.Reader) (runtime.Extracted, error) {
	var x runtime.Extracted
	if err := checkPath(dir); err != nil {
		return x, err
	}
	if err := sb.MkdirAll(ctx, dir, 0o755); err != nil {
		return x, err
	}
	zr, err := decompressed(r)
	if err != nil {
		return x, err
	}
	tr := tar.NewReader(zr)
	for {
		if err := ctx.Err(); err != nil {
			return x, err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return x, nil
		}
		if err != nil {
			return x, fmt.Errorf("%w: not a valid tar after %d entries: %v", runtime.ErrInvalidArchive, x.Entries, err)
		}
		name, err := entryName(h.Name)
		if err != nil {
			return x, err
		}
		x.Entries++
		if name == "." {
			continue
		}
		var data []byte
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeRegA:
			if limit > 0 && x.Bytes+h.Size > limit {
				return x, fmt.Errorf("%w: the archive expands past the limit of %d bytes (at %s)", runtime.ErrTooLarge, limit, name)
			}
			if data, err = io.ReadAll(io.LimitReader(tr, h.Size)); err != nil || int64(len(data)) != h.Size {
				return x, fmt.Errorf("%w: the archive ends inside %s", runtime.ErrInvalidArchive, name)
			}
		case tar.TypeDir, tar.TypeSymlink:
		case tar.TypeXGlobalHeader:
			x.Entries--
			continue
		default:
			return x, fmt.Errorf("%w: entry %s has type %q; archives may hold only files, directories and symlinks", runtime.ErrInvalidArchive, name, h.Typeflag)
		}
		if err := sb.extractEntry(path.Join(dir, name), h, data); err != nil {
			return x, err
		}
		x.Bytes += int64(len(data))
	}
}

// extractEntry creates one entry at p, refusing to go through a link.
func (sb *Sandbox) extractEntry(p string, h *tar.Header, data []byte) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if sb.stopErr != nil {
		return sb.stopErr
	}
	t := sb.st.Tree
	parent := path.Dir(p)
	w, err := t.resolve(parent, false)
	if err != nil {
		return err
	}
	if w.n != nil && w.n.Kind == kindLink {
		return fmt.Errorf("%w: entry %s would be created through a symlink", runtime.ErrInvalidArchive, h.Name)
	}
	now := time.Now().UTC()
	mode := uint32(h.Mode) & 0o7777
	switch h.Typeflag {
	case tar.TypeDir:
		d, _, err := t.mkdirAll(p, mode, 0, func(abs string) { sb.emitLocked("create", abs, true, "") })
		if err == nil && mode != 0 {
			d.Mode = mode
		}
		return err
	case tar.TypeSymlink:
		if h.Linkname == "" || strings.ContainsRune(h.Linkname, 0) {
			return fmt.Errorf("%w: symlink %s has an empty or invalid target", runtime.ErrInvalidArchive, h.Name)
		}
		dirNode, dirAbs, err := t.mkdirAll(parent, 0o755, 0, nil)
		if err != nil {
			return err
		}
		name := path.Base(p)
		if old := dirNode.Children[name]; old != nil {
			if old.Kind == kindDir {
				return fmt.Errorf("%w: %s", runtime.ErrIsDir, p)
			}
			t.Used -= bytesIn(old)
		}
		dirNode.Children[name] = &node{Kind: kindLink, Mode: 0o777, Target: h.Linkname, Modified: now}
		sb.emitLocked("create", path.Join(dirAbs, name), false, "")
		return nil
	}
	return sb.writeLocked(p, data, mode, false, 0)
}

func entryName(n string) (string, error) {
	if n == "" || strings.ContainsRune(n, 0) {
		return "", fmt.Errorf("%w: an entry has an empty or invalid name", runtime.ErrInvalidArchive)
	}
	if strings.HasPrefix(n, "/") {
		return "", fmt.Errorf("%w: entry %q is absolute", runtime.ErrInvalidArchive, n)
	}
	for _, el := range strings.Split(n, "/") {
		if el == ".." {
			return "", fmt.Errorf("%w: entry %q climbs out of the target directory", runtime.ErrInvalidArchive, n)
		}
	}
	return path.Clean(n), nil
}

// decompressed detects gzip and zstd by their magic bytes.
func decompressed(r io.Reader) (io.Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%w: not valid gzip: %v", runtime.ErrInvalidArchive, err)
		}
		return zr, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("%w: not valid zstd: %v", runtime.ErrInvalidArchive, err)
		}
		return zr.IOReadCloser(), nil
	}
	return br, nil
}
