package snapshot

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// streamErrors are the errors Open may answer a damaged stream with.
var streamErrors = []error{ErrCorrupt, ErrTruncated, ErrWrongKey, ErrVersion, ErrFormat}

func isStreamError(err error) bool {
	for _, e := range streamErrors {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// TestOpenRandomDamage damages a sealed stream in many random ways (bytes
// flipped anywhere, cut anywhere, ranges zeroed or duplicated): every one
// is refused with one of the stream errors, and nothing is left behind.
func TestOpenRandomDamage(t *testing.T) {
	k := testKey(t)
	src := makeSnapshotDir(t, 200<<10)
	good, _ := sealed(t, src, k, Options{ChunkSize: 16 << 10})
	rng := rand.New(rand.NewPCG(18, 18))
	base := t.TempDir()
	for i := 0; i < 200; i++ {
		b := bytes.Clone(good)
		var what string
		switch i % 4 {
		case 0:
			for n := 1 + rng.IntN(3); n > 0; n-- {
				b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255))
			}
			what = "flipped"
		case 1:
			b = b[:rng.IntN(len(b))]
			what = "cut"
		case 2:
			off := rng.IntN(len(b))
			clear(b[off:min(len(b), off+1+rng.IntN(4096))])
			what = "zeroed"
			if bytes.Equal(b, good) {
				continue
			}
		case 3:
			off, n := rng.IntN(len(b)), 1+rng.IntN(2048)
			b = append(b[:off:off], append(bytes.Clone(good[off:min(len(good), off+n)]), good[off:]...)...)
			what = "duplicated"
		}
		dst := filepath.Join(base, "r")
		_, err := Open(context.Background(), bytes.NewReader(b), dst, k)
		if !isStreamError(err) {
			t.Fatalf("case %d (%s): Open = %v, want a stream error", i, what, err)
		}
		if _, serr := os.Stat(dst); !errors.Is(serr, os.ErrNotExist) {
			t.Fatalf("case %d (%s): the directory was left", i, what)
		}
	}
}

// FuzzOpen: nothing a stream holds makes Open panic, hang, write outside
// its directory or leave the directory behind.
func FuzzOpen(f *testing.F) {
	k, _ := NewKey(bytes.Repeat([]byte{7}, KeySize))
	src := makeSnapshotDir(f, 8<<10)
	enc, _ := sealed(f, src, k, Options{ChunkSize: 4 << 10})
	plain, _ := sealed(f, src, Key{}, Options{ChunkSize: 4 << 10})
	f.Add(enc, true)
	f.Add(plain, false)
	f.Add(enc[:100], true)
	f.Add([]byte("ORKSNAP\n"), false)
	parent := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte, encrypted bool) {
		key := Key{}
		if encrypted {
			key = k
		}
		dst := filepath.Join(parent, "r")
		_, err := Open(context.Background(), bytes.NewReader(b), dst, key)
		if err != nil {
			if _, serr := os.Stat(dst); !errors.Is(serr, os.ErrNotExist) {
				t.Fatal("the directory was left after a refusal")
			}
			return
		}
		os.RemoveAll(dst)
	})
}
