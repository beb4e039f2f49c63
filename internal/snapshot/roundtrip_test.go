package snapshot_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/snapshot/s3test"
)

// roundTripSuite seals a real-sized snapshot directory into the store,
// restores it, and then checks that every kind of damage to the stored
// object is refused with the right error and leaves no directory behind.
func roundTripSuite(t *testing.T, s snapshot.Store, onDisk func(key string) string) {
	ctx := context.Background()
	master := masterKey(t)
	kr := keyring(t, s, master)
	k, err := kr.DataKey(ctx, "acct_1")
	if err != nil {
		t.Fatal(err)
	}
	src := snapshotDir(t, 64<<20)
	key, _ := snapshot.SnapshotKey("acct_1", "snap_1")
	sealed, err := snapshot.Upload(ctx, s, key, src, k, manifest())
	if err != nil {
		t.Fatal(err)
	}
	if !sealed.Encrypted || sealed.Manifest.UncompressedBytes < 64<<20 || sealed.Manifest.CompressedBytes > sealed.Manifest.UncompressedBytes*4/5 {
		t.Fatalf("sealed %+v", sealed)
	}
	objs, err := s.List(ctx, snapshot.SnapshotsPrefix)
	if err != nil || len(objs) != 1 || objs[0].Size != sealed.Bytes {
		t.Fatalf("the store holds %+v (%v); sealed %d bytes", objs, err, sealed.Bytes)
	}

	// Another node (another keyring, same master key) restores it.
	k2, err := keyring(t, s, master).DataKey(ctx, "acct_1")
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "restored")
	m, err := snapshot.Download(ctx, s, key, dst, k2)
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, dst)
	if m.SHA256 != sealed.Manifest.SHA256 || m.SnapshotID != "snap_1" || m.TemplateDigest != "sha256:abc" {
		t.Fatalf("manifest %+v", m)
	}

	stored := get(t, s, key)
	frames := chunkOffsets(t, stored)
	refusedFrom := func(t *testing.T, b []byte, k snapshot.Key, want error) {
		t.Helper()
		bad := "snapshots/acct_1/bad.snap"
		if err := s.Put(ctx, bad, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), "restored")
		_, err := snapshot.Download(ctx, s, bad, dst, k)
		if !errors.Is(err, want) {
			t.Fatalf("Download = %v, want %v", err, want)
		}
		t.Logf("refused: %v", err)
		if _, serr := os.Stat(dst); !errors.Is(serr, os.ErrNotExist) {
			t.Fatalf("a refused restore left %s", dst)
		}
	}
	flip := func(i int) []byte { c := bytes.Clone(stored); c[i] ^= 0x04; return c }
	t.Run("flipped byte in the header", func(t *testing.T) { refusedFrom(t, flip(40), k, snapshot.ErrCorrupt) })
	t.Run("flipped byte in a middle chunk", func(t *testing.T) { refusedFrom(t, flip(frames[len(frames)/2]+1000), k, snapshot.ErrCorrupt) })
	t.Run("flipped byte in the last chunk", func(t *testing.T) { refusedFrom(t, flip(len(stored)-3), k, snapshot.ErrCorrupt) })
	t.Run("truncated", func(t *testing.T) { refusedFrom(t, stored[:len(stored)-100], k, snapshot.ErrTruncated) })
	t.Run("truncated at a chunk boundary", func(t *testing.T) { refusedFrom(t, stored[:frames[len(frames)-1]], k, snapshot.ErrTruncated) })
	t.Run("swapped chunks", func(t *testing.T) {
		a, b := frames[2], frames[3]
		n := b - a
		if frames[4]-b != n {
			t.Fatal("chunks 2 and 3 differ in size")
		}
		c := bytes.Clone(stored)
		copy(c[a:b], stored[b:b+n])
		copy(c[b:b+n], stored[a:b])
		refusedFrom(t, c, k, snapshot.ErrCorrupt)
	})
	t.Run("another account's key", func(t *testing.T) {
		other, err := kr.DataKey(ctx, "acct_2")
		if err != nil {
			t.Fatal(err)
		}
		refusedFrom(t, stored, other, snapshot.ErrWrongKey)
	})
	t.Run("a wrong master key", func(t *testing.T) {
		_, err := keyring(t, s, masterKey(t)).DataKey(ctx, "acct_1")
		if !errors.Is(err, snapshot.ErrWrongKey) {
			t.Fatalf("DataKey under a wrong master key = %v", err)
		}
	})
	if onDisk != nil {
		t.Run("a byte flipped where the store keeps it", func(t *testing.T) {
			p := onDisk(key)
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			var b [1]byte
			off := int64(frames[len(frames)/3] + 77)
			f.ReadAt(b[:], off)
			b[0] ^= 0x10
			f.WriteAt(b[:], off)
			f.Close()
			dst := filepath.Join(t.TempDir(), "restored")
			if _, err := snapshot.Download(ctx, s, key, dst, k); !errors.Is(err, snapshot.ErrCorrupt) {
				t.Fatalf("Download of the damaged object = %v", err)
			}
			if _, serr := os.Stat(dst); !errors.Is(serr, os.ErrNotExist) {
				t.Fatalf("a refused restore left %s", dst)
			}
		})
	}
	t.Run("a seal that fails midway stores nothing", func(t *testing.T) {
		dir := snapshotDir(t, 20<<20)
		// Packed after the 20 MiB image (names are walked in order): the
		// upload is well into its multipart parts when Seal fails.
		if err := syscall.Mkfifo(filepath.Join(dir, "zz-fifo"), 0o600); err != nil {
			t.Fatal(err)
		}
		key := "snapshots/acct_1/failed.snap"
		_, err := snapshot.Upload(ctx, s, key, dir, k, manifest())
		if err == nil || !strings.Contains(err.Error(), "zz-fifo") {
			t.Fatalf("Upload = %v, want Seal's refusal of the fifo", err)
		}
		if _, err := s.Get(ctx, key); !errors.Is(err, snapshot.ErrNotFound) {
			t.Fatalf("after a failed Upload, Get = %v", err)
		}
	})
}

func TestRoundTripFS(t *testing.T) {
	dir := t.TempDir()
	roundTripSuite(t, snapshot.NewFS(dir), func(key string) string { return filepath.Join(dir, key) })
}

func TestRoundTripS3(t *testing.T) {
	srv := s3test.Start(t)
	roundTripSuite(t, newS3(t, srv, nil), func(key string) string { return filepath.Join(srv.Dir, srv.Bucket, key) })
	assertNoUploads(t, srv)
}

func TestTransferUnavailable(t *testing.T) {
	srv := s3test.Start(t)
	s := newS3(t, srv, nil)
	ctx := context.Background()
	k, err := keyring(t, s, masterKey(t)).DataKey(ctx, "acct_1")
	if err != nil {
		t.Fatal(err)
	}
	src := snapshotDir(t, 12<<20)
	key := "snapshots/acct_1/s.snap"
	if _, err := snapshot.Upload(ctx, s, key, src, k, manifest()); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if _, err := snapshot.Upload(ctx, s, "snapshots/acct_1/s2.snap", src, k, manifest()); !errors.Is(err, snapshot.ErrUnavailable) {
		t.Fatalf("Upload with the store down = %v, want ErrUnavailable", err)
	}
	dst := filepath.Join(t.TempDir(), "restored")
	if _, err := snapshot.Download(ctx, s, key, dst, k); !errors.Is(err, snapshot.ErrUnavailable) {
		t.Fatalf("Download with the store down = %v, want ErrUnavailable", err)
	}
	if _, serr := os.Stat(dst); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("a failed restore left %s", dst)
	}
	if err := <-srv.Unreachable(0); err != nil {
		t.Fatal(err)
	}
	if _, err := snapshot.Download(ctx, s, key, dst, k); err != nil {
		t.Fatalf("Download once the store is back: %v", err)
	}
	if _, err := s.Get(ctx, "snapshots/acct_1/s2.snap"); !errors.Is(err, snapshot.ErrNotFound) {
		t.Fatalf("the Upload that failed left an object: %v", err)
	}
}

func get(t *testing.T, s snapshot.Store, key string) []byte {
	t.Helper()
	rc, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// chunkOffsets parses the stream's frames (64-byte header, then per chunk
// a kind byte and a big-endian length) and returns where each begins.
func chunkOffsets(t *testing.T, b []byte) []int {
	t.Helper()
	var out []int
	for off := 64; off < len(b); {
		out = append(out, off)
		off += 5 + int(binary.BigEndian.Uint32(b[off+1:]))
	}
	if len(out) < 6 {
		t.Fatalf("only %d chunks", len(out))
	}
	return out
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
				return nil
			}
			v := fi.Mode().String()
			switch {
			case fi.Mode()&os.ModeSymlink != 0:
				l, _ := os.Readlink(p)
				v += " -> " + l
			case fi.Mode().IsRegular():
				c, _ := os.ReadFile(p)
				v += " " + string(c[:min(len(c), 64)]) + " " + itoa(len(c)) + " " + sum(c)
			}
			out[rel] = v
			return nil
		})
		return out
	}
	wa, wb := walk(a), walk(b)
	if len(wa) != len(wb) {
		t.Fatalf("trees differ: %d vs %d entries", len(wa), len(wb))
	}
	for k, v := range wa {
		if wb[k] != v {
			t.Fatalf("%s differs", k)
		}
	}
}
