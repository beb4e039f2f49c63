package snapshot

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/orkestr-eu/orkestr/internal/tarx"
)

// Manifest describes a snapshot. It travels inside the stream (encrypted
// with it) and names no host path: a snapshot restores on any node that
// has (or can fetch) the template with this digest.
type Manifest struct {
	FormatVersion int    `json:"format_version"`
	SnapshotID    string `json:"snapshot_id"`
	SandboxID     string `json:"sandbox_id"`
	AccountID     string `json:"account_id"`
	// Template and TemplateDigest name the root filesystem the snapshot's
	// changes apply to; the digest is the template's content digest.
	Template       string `json:"template"`
	TemplateDigest string `json:"template_digest"`
	// The sandbox's size.
	VCPU        float64 `json:"vcpu"`
	MemoryBytes int64   `json:"memory_bytes"`
	DiskBytes   int64   `json:"disk_bytes,omitempty"`
	// Network is the sandbox's network mode (off, restricted, open) and
	// NetworkAllow the allow list of a restricted one.
	Network      string    `json:"network,omitempty"`
	NetworkAllow []string  `json:"network_allow,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	// Set by Seal (the caller's values are ignored): the size of the
	// packed directory (a tar) before and after compression, and the
	// SHA-256 of that tar.
	UncompressedBytes int64  `json:"uncompressed_bytes"`
	CompressedBytes   int64  `json:"compressed_bytes"`
	SHA256            string `json:"sha256"`
}

// trailer closes a stream with what is known only at its end.
type trailer struct {
	UncompressedBytes int64  `json:"uncompressed_bytes"`
	CompressedBytes   int64  `json:"compressed_bytes"`
	SHA256            string `json:"sha256"`
}

// Sealed is what Seal wrote.
type Sealed struct {
	Manifest Manifest
	// Bytes is the length of the stream (what the object store holds).
	Bytes int64
	// Encrypted says whether the stream is encrypted (false only with
	// the zero Key).
	Encrypted bool
}

// Options tune Seal; the zero value is the default.
type Options struct {
	// NoCompression stores the tar as it is (for measurements, and for
	// images that are known not to compress).
	NoCompression bool
	// ChunkSize is the plaintext bytes per chunk (default 1 MiB).
	ChunkSize int
}

// zstdWindow bounds the compressor's window, and so the memory of a
// transfer (the decompressor accepts up to maxZstdWindow).
const (
	zstdWindow    = 1 << 20
	maxZstdWindow = 8 << 20
)

// Seal packs the snapshot directory dir into w as one self-contained
// stream: a tar of dir, compressed with zstd, cut into chunks sealed with
// AES-256-GCM under k (see docs/architecture.md, "Snapshot format"). With
// the zero Key the chunks are integrity-checked but not encrypted. Memory
// stays a few MiB whatever the size of dir. Only regular files,
// directories and symlinks may be in dir.
func Seal(ctx context.Context, dir string, w io.Writer, k Key, m Manifest) (Sealed, error) {
	return SealWith(ctx, dir, w, k, m, Options{})
}

// SealWith is Seal with options.
func SealWith(ctx context.Context, dir string, w io.Writer, k Key, m Manifest, o Options) (Sealed, error) {
	h := header{version: FormatVersion, compression: compressZstd, chunkSize: DefaultChunkSize}
	if o.NoCompression {
		h.compression = compressNone
	}
	if o.ChunkSize != 0 {
		if o.ChunkSize < minChunkSize || o.ChunkSize > maxChunkSize {
			return Sealed{}, fmt.Errorf("snapshot: chunk size %d is out of bounds [%d, %d]", o.ChunkSize, minChunkSize, maxChunkSize)
		}
		h.chunkSize = uint32(o.ChunkSize)
	}
	if k.ok {
		h.cipher, h.keyID = cipherGCM, k.id()
	}
	if _, err := rand.Read(h.salt[:]); err != nil {
		return Sealed{}, err
	}
	if _, err := rand.Read(h.prefix[:]); err != nil {
		return Sealed{}, err
	}
	aead, err := streamAEAD(k, &h)
	if err != nil {
		return Sealed{}, err
	}
	hb := h.marshal()
	bufp, outp := getChunk(), getChunk()
	defer putChunk(bufp)
	defer putChunk(outp)
	cw := &chunkWriter{w: w, aead: aead, h: &h, hdrSum: sha256.Sum256(hb), buf: *bufp, out: *outp}
	defer func() { *bufp, *outp = cw.buf[:0], cw.out[:0] }()
	n, err := w.Write(hb)
	cw.n += int64(n)
	if err != nil {
		return Sealed{}, fmt.Errorf("snapshot: writing: %w", err)
	}

	m.FormatVersion = FormatVersion
	m.UncompressedBytes, m.CompressedBytes, m.SHA256 = 0, 0, ""
	mj, err := json.Marshal(m)
	if err != nil {
		return Sealed{}, err
	}
	if len(mj) > int(h.chunkSize) {
		return Sealed{}, fmt.Errorf("snapshot: the manifest is %d bytes, more than a chunk", len(mj))
	}
	if err := cw.emit(kindManifest, mj); err != nil {
		return Sealed{}, fmt.Errorf("snapshot: writing: %w", err)
	}

	compressed := &countWriter{w: cw}
	var zw io.WriteCloser = nopCloser{compressed}
	if h.compression == compressZstd {
		enc, err := getEncoder(compressed)
		if err != nil {
			return Sealed{}, err
		}
		defer putEncoder(enc)
		zw = enc
	}
	sum := sha256.New()
	plain := &countWriter{w: io.MultiWriter(zw, sum)}
	if err := packDir(ctx, dir, plain); err != nil {
		zw.Close()
		return Sealed{}, err
	}
	if err := zw.Close(); err != nil {
		return Sealed{}, fmt.Errorf("snapshot: writing: %w", err)
	}
	if err := cw.flush(); err != nil {
		return Sealed{}, fmt.Errorf("snapshot: writing: %w", err)
	}
	t := trailer{UncompressedBytes: plain.n, CompressedBytes: compressed.n, SHA256: hex.EncodeToString(sum.Sum(nil))}
	tj, _ := json.Marshal(t)
	if err := cw.emit(kindTrailer, tj); err != nil {
		return Sealed{}, fmt.Errorf("snapshot: writing: %w", err)
	}
	m.UncompressedBytes, m.CompressedBytes, m.SHA256 = t.UncompressedBytes, t.CompressedBytes, t.SHA256
	return Sealed{Manifest: m, Bytes: cw.n, Encrypted: k.ok}, nil
}

// packDir writes dir as a tar to w.
func packDir(ctx context.Context, dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	bufp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bufp)
	buf := *bufp
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("snapshot: reading the snapshot directory: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return fmt.Errorf("snapshot: reading the snapshot directory: %w", err)
		}
		link := ""
		switch {
		case fi.Mode().IsRegular(), fi.IsDir():
		case fi.Mode()&fs.ModeSymlink != 0:
			if link, err = os.Readlink(p); err != nil {
				return fmt.Errorf("snapshot: reading the snapshot directory: %w", err)
			}
		default:
			return fmt.Errorf("snapshot: %s is not a file, directory or symlink; it cannot be sealed", rel)
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		// No host identity travels: owners are the restoring host's.
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("snapshot: writing: %w", err)
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("snapshot: reading the snapshot directory: %w", err)
		}
		defer f.Close()
		n, err := io.CopyBuffer(tw, ctxReader{ctx, f}, buf)
		if err == nil && n != fi.Size() {
			err = fmt.Errorf("%s changed while it was sealed", rel)
		}
		if err != nil {
			return fmt.Errorf("snapshot: packing %s: %w", rel, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// Open verifies the stream r and unpacks it into dir, which must not
// exist or be empty; it returns the snapshot's manifest. On any failure
// dir is removed and the error, usable with errors.Is, says why:
// ErrCorrupt, ErrTruncated, ErrWrongKey, ErrVersion, ErrFormat, or the
// reader's or the filesystem's own error. k must be the key the snapshot
// was sealed with (the zero Key for an unencrypted one); a plaintext
// stream is refused when k encrypts, so a store cannot substitute one.
func Open(ctx context.Context, r io.Reader, dir string, k Key) (m Manifest, err error) {
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return Manifest{}, fmt.Errorf("snapshot: cannot open into %s: the directory is not empty", dir)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Manifest{}, fmt.Errorf("snapshot: cannot open into %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Manifest{}, fmt.Errorf("snapshot: cannot open into %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	cr, m, err := openStream(r, k)
	if err != nil {
		return Manifest{}, err
	}
	defer cr.release()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Manifest{}, err
	}
	defer root.Close()

	compressed := &countReader{r: ctxReader{ctx, cr}}
	var src io.Reader = compressed
	if cr.h.compression == compressZstd {
		zr, err := getDecoder(compressed)
		if err != nil {
			return Manifest{}, err
		}
		defer putDecoder(zr)
		src = zr
	}
	sum := sha256.New()
	plain := &countReader{r: src, h: sum}
	_, xerr := tarx.Extract(root, plain, 0)
	if xerr == nil {
		// The tar's end-of-archive blocks and anything after them are
		// part of the digest too.
		_, xerr = io.Copy(io.Discard, plain)
	}
	if cr.err != nil { // the stream's own verdict comes first
		return Manifest{}, cr.err
	}
	if err := ctx.Err(); err != nil {
		return Manifest{}, err
	}
	if xerr != nil {
		var te *tarx.Error
		switch {
		case errors.As(xerr, &te) && te.Code == tarx.CodeNoSpace:
			return Manifest{}, fmt.Errorf("snapshot: unpacking into %s: no space left on the device: %w", dir, syscall.ENOSPC)
		case isFSError(xerr) && !errors.As(xerr, &te):
			return Manifest{}, fmt.Errorf("snapshot: unpacking into %s: %w", dir, xerr)
		}
		// What the authenticated stream holds is not a valid archive.
		return Manifest{}, fmt.Errorf("%w: unpacking: %v", ErrCorrupt, xerr)
	}
	if !cr.done {
		return Manifest{}, fmt.Errorf("%w: the packed data ends before the final chunk", ErrCorrupt)
	}
	var t trailer
	if err := json.Unmarshal(cr.trailer, &t); err != nil {
		return Manifest{}, fmt.Errorf("%w: the trailer does not parse: %v", ErrCorrupt, err)
	}
	got := hex.EncodeToString(sum.Sum(nil))
	if t.SHA256 != got || t.UncompressedBytes != plain.n || t.CompressedBytes != compressed.n {
		return Manifest{}, fmt.Errorf("%w: the content's SHA-256 or size differs from the one sealed", ErrCorrupt)
	}
	m.UncompressedBytes, m.CompressedBytes, m.SHA256 = t.UncompressedBytes, t.CompressedBytes, t.SHA256
	return m, nil
}

// ReadManifest reads only the header and the manifest of a stream (the
// first chunk, authenticated), without unpacking or verifying the rest:
// to learn a snapshot's template before fetching it whole. The sizes and
// digest are not known there and stay zero.
func ReadManifest(ctx context.Context, r io.Reader, k Key) (Manifest, error) {
	cr, m, err := openStream(ctxReader{ctx, r}, k)
	if cr != nil {
		cr.release()
	}
	return m, err
}

// openStream reads the header and the manifest chunk.
func openStream(r io.Reader, k Key) (*chunkReader, Manifest, error) {
	hb := make([]byte, headerSize)
	if n, err := io.ReadFull(r, hb); err != nil {
		if n >= len(magic) && [8]byte(hb[:8]) != magic || n > 0 && n < len(magic) && string(hb[:n]) != string(magic[:n]) {
			return nil, Manifest{}, fmt.Errorf("%w: it does not start with the snapshot magic", ErrFormat)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, Manifest{}, fmt.Errorf("%w: it ends inside its header (%d bytes)", ErrTruncated, n)
		}
		return nil, Manifest{}, err
	}
	h, err := parseHeader(hb)
	if err != nil {
		return nil, Manifest{}, err
	}
	switch {
	case h.cipher == cipherGCM && !k.ok:
		return nil, Manifest{}, fmt.Errorf("%w: the snapshot is encrypted and no key was given (configure snapshots.master_key)", ErrWrongKey)
	case h.cipher == cipherNone && k.ok:
		return nil, Manifest{}, fmt.Errorf("%w: the snapshot is not encrypted, but this store only accepts encrypted snapshots", ErrWrongKey)
	case h.cipher == cipherGCM && h.keyID != k.id():
		return nil, Manifest{}, fmt.Errorf("%w: it was sealed under another data key (another account's, or under another master key)", ErrWrongKey)
	}
	aead, err := streamAEAD(k, &h)
	if err != nil {
		return nil, Manifest{}, err
	}
	cr := &chunkReader{r: r, aead: aead, h: &h, hdrSum: sha256.Sum256(hb), n: headerSize}
	kind, mj, err := cr.next()
	if err != nil {
		return nil, Manifest{}, err
	}
	if kind != kindManifest {
		return nil, Manifest{}, fmt.Errorf("%w: the first chunk is not the manifest", ErrCorrupt)
	}
	var m Manifest
	if err := json.Unmarshal(mj, &m); err != nil {
		return nil, Manifest{}, fmt.Errorf("%w: the manifest does not parse: %v", ErrCorrupt, err)
	}
	if m.FormatVersion != FormatVersion {
		return nil, Manifest{}, fmt.Errorf("%w: the manifest says version %d", ErrVersion, m.FormatVersion)
	}
	return cr, m, nil
}

// isFSError says whether err came from the filesystem being written
// (disk full, permissions) rather than from the archive.
func isFSError(err error) bool {
	var pe *fs.PathError
	var le *os.LinkError
	return errors.As(err, &pe) || errors.As(err, &le)
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type countReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.h != nil {
		c.h.Write(p[:n])
	}
	return n, err
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
