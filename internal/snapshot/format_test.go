package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// makeSnapshotDir builds a directory shaped like a runsc checkpoint: an
// image of big incompressible and small compressible files, a symlink,
// and the metadata file.
func makeSnapshotDir(t testing.TB, bigBytes int) string {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "image")
	if err := os.MkdirAll(filepath.Join(img, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, bigBytes)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	// A quarter of zeroes, as a memory image has.
	clear(big[:bigBytes/4])
	writeFile(t, filepath.Join(img, "pages.img"), big)
	writeFile(t, filepath.Join(img, "checkpoint.img"), bytes.Repeat([]byte("state "), 10000))
	writeFile(t, filepath.Join(img, "sub", "empty"), nil)
	writeFile(t, filepath.Join(dir, "snapshot.json"), []byte(`{"template":"debian-12"}`))
	if err := os.Symlink("image/pages.img", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func writeFile(t testing.TB, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o640); err != nil {
		t.Fatal(err)
	}
}

func testKey(t testing.TB) Key {
	t.Helper()
	b := make([]byte, KeySize)
	rand.Read(b)
	k, err := NewKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testManifest() Manifest {
	return Manifest{SnapshotID: "snap_1", SandboxID: "sbx_1", AccountID: "acct_1", Template: "debian-12",
		TemplateDigest: "sha256:abc", VCPU: 0.5, MemoryBytes: 512 << 20, Network: "restricted",
		NetworkAllow: []string{"pypi.org"}, CreatedAt: time.Date(2026, 12, 3, 20, 0, 0, 0, time.UTC)}
}

// sameTree fails unless b holds exactly a's files, contents, modes and links.
func sameTree(t testing.TB, a, b string) {
	t.Helper()
	walk := func(root string) map[string]string {
		out := map[string]string{}
		filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(root, p)
			if rel == "." {
				return nil // Open makes dir itself, 0700
			}
			v := fi.Mode().String()
			switch {
			case fi.Mode()&os.ModeSymlink != 0:
				l, _ := os.Readlink(p)
				v += " -> " + l
			case fi.Mode().IsRegular():
				c, _ := os.ReadFile(p)
				v += " " + string(sumHex(c))
			}
			out[rel] = v
			return nil
		})
		return out
	}
	wa, wb := walk(a), walk(b)
	if len(wa) != len(wb) {
		t.Fatalf("trees differ: %d vs %d entries\n%v\n%v", len(wa), len(wb), wa, wb)
	}
	for k, v := range wa {
		if wb[k] != v {
			t.Fatalf("%s differs: %q vs %q", k, v, wb[k])
		}
	}
}

func sealed(t testing.TB, dir string, k Key, o Options) ([]byte, Sealed) {
	t.Helper()
	var buf bytes.Buffer
	s, err := SealWith(context.Background(), dir, &buf, k, testManifest(), o)
	if err != nil {
		t.Fatal(err)
	}
	if s.Bytes != int64(buf.Len()) {
		t.Fatalf("Sealed.Bytes %d, wrote %d", s.Bytes, buf.Len())
	}
	return buf.Bytes(), s
}

func TestSealOpenRoundTrip(t *testing.T) {
	src := makeSnapshotDir(t, 3<<20)
	for _, tc := range []struct {
		name string
		key  Key
		o    Options
	}{
		{"encrypted", testKey(t), Options{}},
		{"plain", Key{}, Options{}},
		{"uncompressed", testKey(t), Options{NoCompression: true}},
		{"small chunks", testKey(t), Options{ChunkSize: 4096}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, s := sealed(t, src, tc.key, tc.o)
			if s.Encrypted != tc.key.Encrypts() {
				t.Fatalf("Encrypted = %v", s.Encrypted)
			}
			if tc.key.Encrypts() && bytes.Contains(b, []byte("state state")) {
				t.Fatal("the sealed stream holds plaintext")
			}
			dst := filepath.Join(t.TempDir(), "restored")
			m, err := Open(context.Background(), bytes.NewReader(b), dst, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			sameTree(t, src, dst)
			want := testManifest()
			if m.SnapshotID != want.SnapshotID || m.AccountID != want.AccountID || m.TemplateDigest != want.TemplateDigest ||
				!m.CreatedAt.Equal(want.CreatedAt) || m.NetworkAllow[0] != "pypi.org" || m.FormatVersion != FormatVersion {
				t.Fatalf("manifest %+v", m)
			}
			if m.SHA256 != s.Manifest.SHA256 || m.UncompressedBytes != s.Manifest.UncompressedBytes || m.UncompressedBytes < 3<<20 {
				t.Fatalf("sizes: opened %+v sealed %+v", m, s.Manifest)
			}
			if !tc.o.NoCompression && m.CompressedBytes >= m.UncompressedBytes {
				t.Fatalf("compressed %d >= uncompressed %d", m.CompressedBytes, m.UncompressedBytes)
			}
			if strings.Contains(string(mustJSON(t, m)), src) {
				t.Fatal("the manifest names a host path")
			}
			rm, err := ReadManifest(context.Background(), bytes.NewReader(b), tc.key)
			if err != nil || rm.SnapshotID != want.SnapshotID {
				t.Fatalf("ReadManifest: %+v %v", rm, err)
			}
		})
	}
}

// refused opens b and requires the error is target and dst is gone.
func refused(t *testing.T, b []byte, k Key, target error) error {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "restored")
	_, err := Open(context.Background(), bytes.NewReader(b), dst, k)
	if !errors.Is(err, target) {
		t.Fatalf("Open = %v, want %v", err, target)
	}
	if _, serr := os.Stat(dst); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("the directory %s was left after a refused open (%v)", dst, serr)
	}
	return err
}

func TestOpenRefusesTampering(t *testing.T) {
	src := makeSnapshotDir(t, 3<<20)
	k := testKey(t)
	b, _ := sealed(t, src, k, Options{})
	flip := func(i int) []byte {
		c := bytes.Clone(b)
		c[i] ^= 0x01
		return c
	}
	chunkAt := func(n int) (int, int) { // offset and length (with frame) of chunk n
		off := headerSize
		for i := 0; ; i++ {
			l := frameSize + int(uint32(b[off+1])<<24|uint32(b[off+2])<<16|uint32(b[off+3])<<8|uint32(b[off+4]))
			if i == n {
				return off, l
			}
			off += l
		}
	}
	t.Run("magic", func(t *testing.T) { refused(t, flip(0), k, ErrFormat) })
	t.Run("version", func(t *testing.T) { refused(t, flip(9), k, ErrVersion) })
	t.Run("salt", func(t *testing.T) { refused(t, flip(30), k, ErrCorrupt) })
	t.Run("key id", func(t *testing.T) { refused(t, flip(17), k, ErrWrongKey) })
	t.Run("manifest", func(t *testing.T) {
		off, _ := chunkAt(0)
		refused(t, flip(off+frameSize+3), k, ErrCorrupt)
	})
	t.Run("middle chunk", func(t *testing.T) {
		off, l := chunkAt(2)
		refused(t, flip(off+l/2), k, ErrCorrupt)
	})
	t.Run("frame length", func(t *testing.T) {
		off, _ := chunkAt(1)
		refused(t, flip(off+4), k, ErrCorrupt)
	})
	t.Run("last byte", func(t *testing.T) { refused(t, flip(len(b)-1), k, ErrCorrupt) })
	t.Run("truncated mid-chunk", func(t *testing.T) { refused(t, b[:len(b)/2], k, ErrTruncated) })
	t.Run("truncated at a chunk boundary", func(t *testing.T) {
		off, _ := chunkAt(3)
		refused(t, b[:off], k, ErrTruncated)
	})
	t.Run("final chunk dropped", func(t *testing.T) {
		last := 0
		for i := 0; ; i++ {
			off, l := chunkAt(i)
			if off+l == len(b) {
				last = off
				break
			}
		}
		refused(t, b[:last], k, ErrTruncated)
	})
	t.Run("empty", func(t *testing.T) { refused(t, nil, k, ErrTruncated) })
	t.Run("swapped chunks", func(t *testing.T) {
		o1, l1 := chunkAt(1)
		o2, l2 := chunkAt(2)
		if l1 != l2 {
			t.Fatalf("chunks 1 and 2 differ in length (%d, %d)", l1, l2)
		}
		c := bytes.Clone(b)
		copy(c[o1:], b[o2:o2+l2])
		copy(c[o2:], b[o1:o1+l1])
		refused(t, c, k, ErrCorrupt)
	})
	t.Run("appended data", func(t *testing.T) { refused(t, append(bytes.Clone(b), 0), k, ErrCorrupt) })
	t.Run("other key", func(t *testing.T) { refused(t, b, testKey(t), ErrWrongKey) })
	t.Run("no key", func(t *testing.T) { refused(t, b, Key{}, ErrWrongKey) })
	t.Run("plaintext substituted", func(t *testing.T) {
		p, _ := sealed(t, src, Key{}, Options{})
		refused(t, p, k, ErrWrongKey)
	})
	t.Run("chunk from another stream", func(t *testing.T) {
		other, _ := sealed(t, src, k, Options{})
		off, l := chunkAt(1)
		c := bytes.Clone(b)
		copy(c[off:off+l], other[off:off+l])
		refused(t, c, k, ErrCorrupt)
	})
	t.Run("plain stream flipped", func(t *testing.T) {
		p, _ := sealed(t, src, Key{}, Options{})
		p[len(p)/2] ^= 0x80
		refused(t, p, Key{}, ErrCorrupt)
	})
}

func TestOpenRefusesNonEmptyDir(t *testing.T) {
	src := makeSnapshotDir(t, 1<<10)
	b, _ := sealed(t, src, Key{}, Options{})
	dst := t.TempDir()
	writeFile(t, filepath.Join(dst, "keep"), []byte("x"))
	if _, err := Open(context.Background(), bytes.NewReader(b), dst, Key{}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("Open into a non-empty dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dst, "keep")); err != nil {
		t.Fatal("Open removed a directory it did not create")
	}
}

func TestSealRefusesSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	if err := mkfifo(filepath.Join(dir, "fifo")); err != nil {
		t.Skip(err)
	}
	if _, err := Seal(context.Background(), dir, io.Discard, Key{}, testManifest()); err == nil || !strings.Contains(err.Error(), "fifo") {
		t.Fatalf("Seal of a fifo: %v", err)
	}
}

// sealTar writes a stream around a tar of the caller's making, as Seal
// would, so a hostile archive inside a valid (authenticated) stream can
// be tested.
func sealTar(t *testing.T, k Key, tarBytes []byte) []byte {
	t.Helper()
	h := header{version: FormatVersion, compression: compressZstd, chunkSize: DefaultChunkSize}
	if k.ok {
		h.cipher, h.keyID = cipherGCM, k.id()
	}
	rand.Read(h.salt[:])
	rand.Read(h.prefix[:])
	aead, err := streamAEAD(k, &h)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	hb := h.marshal()
	out.Write(hb)
	cw := &chunkWriter{w: &out, aead: aead, h: &h, hdrSum: sha256.Sum256(hb)}
	cw.emit(kindManifest, mustJSON(t, Manifest{FormatVersion: FormatVersion}))
	comp := &countWriter{w: cw}
	zw, _ := zstd.NewWriter(comp)
	zw.Write(tarBytes)
	zw.Close()
	cw.flush()
	sum := sha256.Sum256(tarBytes)
	cw.emit(kindTrailer, mustJSON(t, trailer{UncompressedBytes: int64(len(tarBytes)), CompressedBytes: comp.n, SHA256: hex.EncodeToString(sum[:])}))
	return out.Bytes()
}

func tarOf(t *testing.T, hdrs ...*tar.Header) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func TestOpenRefusesHostileArchives(t *testing.T) {
	k := testKey(t)
	parent := t.TempDir()
	for name, tb := range map[string][]byte{
		"dot-dot":      tarOf(t, &tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Size: 1, Mode: 0o600}),
		"absolute":     tarOf(t, &tar.Header{Name: "/tmp/escape", Typeflag: tar.TypeReg, Size: 1, Mode: 0o600}),
		"through link": tarOf(t, &tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: parent}, &tar.Header{Name: "l/escape", Typeflag: tar.TypeReg, Size: 1, Mode: 0o600}),
		"device":       tarOf(t, &tar.Header{Name: "dev", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o600}),
		"not a tar":    bytes.Repeat([]byte("junk"), 1000),
	} {
		t.Run(name, func(t *testing.T) {
			b := sealTar(t, k, tb)
			dst := filepath.Join(parent, "restored")
			_, err := Open(context.Background(), bytes.NewReader(b), dst, k)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open = %v, want ErrCorrupt", err)
			}
			if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("the directory was left")
			}
			if _, err := os.Stat(filepath.Join(parent, "escape")); err == nil {
				t.Fatal("an entry escaped the directory")
			}
			if _, err := os.Stat("/tmp/escape"); err == nil {
				t.Fatal("an entry escaped to /tmp")
			}
		})
	}
	// The helper itself makes streams Open accepts.
	ok := sealTar(t, k, tarOf(t, &tar.Header{Name: "f", Typeflag: tar.TypeReg, Size: 3, Mode: 0o600}))
	if _, err := Open(context.Background(), bytes.NewReader(ok), filepath.Join(parent, "ok"), k); err != nil {
		t.Fatalf("a benign archive: %v", err)
	}
}
