// Package auth makes and checks API keys: "ork_" + 43 base62 characters
// (256 random bits), stored only as a SHA-256 hash, listed by a short prefix.
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/big"
	"strings"
)

// KeyPrefix starts every API key.
const KeyPrefix = "ork_"

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// keyChars is enough base62 characters for 256 bits (62^43 > 2^256).
const keyChars = 43

// DisplayPrefixLen is how much of a key is stored in the clear for listing.
const DisplayPrefixLen = 12

// NewKey returns a fresh key, its hash and its display prefix.
func NewKey() (key, hash, prefix string, err error) {
	var b strings.Builder
	b.WriteString(KeyPrefix)
	max := big.NewInt(int64(len(base62)))
	for i := 0; i < keyChars; i++ {
		n, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", "", "", err
		}
		b.WriteByte(base62[n.Int64()])
	}
	key = b.String()
	return key, Hash(key), key[:DisplayPrefixLen], nil
}

// Hash is the stored form of a key.
func Hash(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

// ErrMalformed means the string cannot be an orkestr key.
var ErrMalformed = errors.New("malformed API key")

// CheckFormat rejects strings that cannot be keys before any lookup.
func CheckFormat(key string) error {
	if len(key) != len(KeyPrefix)+keyChars || !strings.HasPrefix(key, KeyPrefix) {
		return ErrMalformed
	}
	for _, c := range key[len(KeyPrefix):] {
		if !strings.ContainsRune(base62, c) {
			return ErrMalformed
		}
	}
	return nil
}

// Implies reports whether granted scopes cover required: write implies read.
func Implies(granted []string, required string) bool {
	for _, g := range granted {
		if g == required || (g == "sandboxes:write" && required == "sandboxes:read") {
			return true
		}
	}
	return false
}

// ValidScope reports whether s is a scope we know.
func ValidScope(s string) bool { return s == "sandboxes:read" || s == "sandboxes:write" }
