package snapshot

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"syscall"
	"testing"
)

func sumHex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func mustJSON(t testing.TB, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mkfifo(p string) error { return syscall.Mkfifo(p, 0o600) }
