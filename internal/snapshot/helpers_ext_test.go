package snapshot_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/snapshot"
)

// snapshotDir builds a directory shaped like a runsc checkpoint: a big
// memory image (a quarter zeroes, the rest random), small compressible
// files, an empty file, a symlink and the metadata file.
func snapshotDir(t testing.TB, bigBytes int) string {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "image")
	if err := os.MkdirAll(filepath.Join(img, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, bigBytes)
	rand.Read(big[bigBytes/4:])
	write := func(p string, b []byte) {
		if err := os.WriteFile(p, b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(img, "pages.img"), big)
	write(filepath.Join(img, "checkpoint.img"), bytes.Repeat([]byte("state "), 10000))
	write(filepath.Join(img, "sub", "empty"), nil)
	write(filepath.Join(dir, "snapshot.json"), []byte(`{"template":"debian-12"}`))
	if err := os.Symlink("image/pages.img", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func manifest() snapshot.Manifest {
	return snapshot.Manifest{SnapshotID: "snap_1", SandboxID: "sbx_1", AccountID: "acct_1", Template: "debian-12",
		TemplateDigest: "sha256:abc", VCPU: 0.5, MemoryBytes: 512 << 20, Network: "off",
		CreatedAt: time.Date(2026, 12, 3, 20, 0, 0, 0, time.UTC)}
}

func itoa(n int) string { return strconv.Itoa(n) }

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
