// Package snapshot makes sandbox snapshots portable, durable and
// encrypted: a snapshot directory is sealed into one self-contained,
// compressed, authenticated stream (Seal, Open) and kept in an object
// store (Store: the local filesystem or S3-compatible storage) under a
// per-account data key that the operator's master key wraps (Keyring).
package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Errors of a Store, usable with errors.Is; the returned errors wrap them
// with what went wrong.
var (
	// ErrNotFound: no object has this key.
	ErrNotFound = errors.New("snapshot: no such object")
	// ErrUnavailable: the store cannot be reached or refused to work
	// (connection refused, timeout, server error, access denied, missing
	// bucket). Callers answer 503 and leave the sandbox as it was.
	ErrUnavailable = errors.New("snapshot: the snapshot store is unavailable")
	// ErrExists: Create found an object with this key already there.
	ErrExists = errors.New("snapshot: the object already exists")
	// ErrInvalidKey: the key is not one a Store accepts (see ValidKey).
	ErrInvalidKey = errors.New("snapshot: invalid object key")
)

// Object is one stored object.
type Object struct {
	Key      string
	Size     int64
	Modified time.Time
}

// Store keeps objects by key. Writes are atomic: an object is visible
// only once it is complete, and a failed or interrupted Put leaves
// nothing behind under its key (nothing half-written is ever readable).
type Store interface {
	// Put stores what r yields under key, replacing any object there. An
	// error from r (or ctx) aborts the write.
	Put(ctx context.Context, key string, r io.Reader) error
	// Create is Put that fails with ErrExists when key already holds an
	// object; of two concurrent Creates exactly one wins.
	Create(ctx context.Context, key string, r io.Reader) error
	// Get opens the object; ErrNotFound when there is none.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Delete removes the object; deleting a missing object is not an
	// error (terminate and the collector may both try).
	Delete(ctx context.Context, key string) error
	// List returns the objects whose keys start with prefix, sorted by key.
	List(ctx context.Context, prefix string) ([]Object, error)
}

// Where objects live inside a store.
const (
	// SnapshotsPrefix holds the sealed snapshots, one object each.
	SnapshotsPrefix = "snapshots/"
	// KeysPrefix holds the accounts' wrapped data keys (keys/<account>.key).
	KeysPrefix = "keys/"
)

// SnapshotKey is the object key of a sealed snapshot.
func SnapshotKey(accountID, snapshotID string) (string, error) {
	if err := validSegment(accountID); err != nil {
		return "", fmt.Errorf("%w: account id: %v", ErrInvalidKey, err)
	}
	if err := validSegment(snapshotID); err != nil {
		return "", fmt.Errorf("%w: snapshot id: %v", ErrInvalidKey, err)
	}
	return SnapshotsPrefix + accountID + "/" + snapshotID + ".snap", nil
}

// maxKeyLen is S3's limit on an object key; maxKeyDepth bounds the
// directories a key makes in the filesystem store.
const (
	maxKeyLen   = 1024
	maxKeyDepth = 16
)

// ValidKey says whether key may name an object: 1 to 1024 bytes of
// "/"-separated segments, each made of ASCII letters, digits, '.', '_'
// and '-' and not starting with '.' (so no ".." and no hidden names), at
// most 16 segments; no leading or trailing '/', no empty segment. Every Store checks it, so a
// hostile id can never reach outside the store's directory or prefix.
func ValidKey(key string) error {
	if key == "" || len(key) > maxKeyLen {
		return fmt.Errorf("%w: %d bytes (want 1 to %d)", ErrInvalidKey, len(key), maxKeyLen)
	}
	segs := strings.Split(key, "/")
	if len(segs) > maxKeyDepth {
		return fmt.Errorf("%w: %d segments (at most %d)", ErrInvalidKey, len(segs), maxKeyDepth)
	}
	for _, seg := range segs {
		if err := validSegment(seg); err != nil {
			return fmt.Errorf("%w %q: %v", ErrInvalidKey, printable(key), err)
		}
	}
	return nil
}

// validPrefix accepts "" and any valid key, optionally ending in "/".
func validPrefix(prefix string) error {
	p := strings.TrimSuffix(prefix, "/")
	if p == "" {
		if prefix != "" {
			return fmt.Errorf("%w: prefix %q", ErrInvalidKey, prefix)
		}
		return nil
	}
	return ValidKey(p)
}

func validSegment(s string) error {
	if s == "" {
		return errors.New("empty segment")
	}
	if len(s) > 255 {
		return errors.New("segment longer than 255 bytes")
	}
	if s[0] == '.' {
		return errors.New("segment starts with '.'")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("byte %#x is not allowed (letters, digits, '.', '_', '-')", c)
		}
	}
	return nil
}

// printable quotes at most 64 bytes of a hostile key for an error message.
func printable(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

// ctxReader fails reads once ctx is done, so a cancelled Put stops.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
