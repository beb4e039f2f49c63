package snapshot

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// ErrWrongKey: the snapshot (or an account's data key) was sealed under
// another key: another account's data key, or another master key.
var ErrWrongKey = errors.New("snapshot: sealed under a different key")

// KeySize is the size of master and data keys (AES-256).
const KeySize = 32

// Key is an account's data key. The zero Key means "no encryption": Seal
// then writes an integrity-checked but readable stream, which only the
// one-box filesystem store without a master key allows.
type Key struct {
	k  [KeySize]byte
	ok bool
}

// Encrypts says whether the key encrypts (false for the zero Key).
func (k Key) Encrypts() bool { return k.ok }

// id is a short public fingerprint of the key written in a stream's
// header, so that opening with the wrong key says so instead of "corrupt".
func (k Key) id() [8]byte {
	var out [8]byte
	if !k.ok {
		return out
	}
	m := hmac.New(sha256.New, k.k[:])
	m.Write([]byte("orkestr snapshot key id v1"))
	copy(out[:], m.Sum(nil))
	return out
}

// NewKey makes a Key of 32 raw bytes (tests and tools; the node gets its
// keys from a Keyring).
func NewKey(b []byte) (Key, error) {
	if len(b) != KeySize {
		return Key{}, fmt.Errorf("snapshot: a key is %d bytes, not %d", KeySize, len(b))
	}
	var k Key
	copy(k.k[:], b)
	k.ok = true
	return k, nil
}

// ParseMasterKey decodes the operator's master key: 32 random bytes in
// standard base64 (`openssl rand -base64 32`).
func ParseMasterKey(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, errors.New("snapshot: the master key is not base64 (make one with: openssl rand -base64 32)")
	}
	if len(b) != KeySize {
		return nil, fmt.Errorf("snapshot: the master key is %d bytes; it must be %d (make one with: openssl rand -base64 32)", len(b), KeySize)
	}
	return b, nil
}

// Keyring hands out each account's data key. A data key is 32 random
// bytes made the first time the account seals a snapshot; it is stored
// only wrapped by the master key (AES-256-GCM, the account id as
// additional data, so a wrapped key copied to another account's name does
// not open), in the object store itself at keys/<account>.key. The store
// thus holds everything a restore needs but never a usable key, and the
// object is created with Store.Create (an atomic create-if-absent: S3
// If-None-Match, link(2) on the filesystem), so two nodes sealing an
// account's first snapshots at once agree on one key. Deleting that
// object crypto-shreds every snapshot of the account.
type Keyring struct {
	store  Store
	master cipher.AEAD // nil: no encryption

	mu    sync.Mutex
	cache map[string]Key
}

// NewKeyring returns the keyring of store. A nil master key means no
// encryption (DataKey returns the zero Key); FromConfig allows that only
// for the filesystem store.
func NewKeyring(store Store, master []byte) (*Keyring, error) {
	kr := &Keyring{store: store, cache: map[string]Key{}}
	if master == nil {
		return kr, nil
	}
	if len(master) != KeySize {
		return nil, fmt.Errorf("snapshot: the master key is %d bytes; it must be %d", len(master), KeySize)
	}
	blk, err := aes.NewCipher(master)
	if err != nil {
		return nil, err
	}
	if kr.master, err = cipher.NewGCM(blk); err != nil {
		return nil, err
	}
	return kr, nil
}

// Encrypts says whether the keyring has a master key.
func (kr *Keyring) Encrypts() bool { return kr.master != nil }

// wrappedVersion is the first byte of a wrapped data key.
const wrappedVersion = 1

func wrapAAD(accountID string) []byte { return []byte("orkestr data key v1\x00" + accountID) }

// DataKey returns the account's data key, creating and storing it the
// first time. Errors: ErrUnavailable (the store), ErrWrongKey (the stored
// key was wrapped by another master key), ErrInvalidKey (the account id).
func (kr *Keyring) DataKey(ctx context.Context, accountID string) (Key, error) {
	if kr.master == nil {
		return Key{}, nil
	}
	if err := validSegment(accountID); err != nil {
		return Key{}, fmt.Errorf("%w: account id: %v", ErrInvalidKey, err)
	}
	kr.mu.Lock()
	k, ok := kr.cache[accountID]
	kr.mu.Unlock()
	if ok {
		return k, nil
	}
	k, err := kr.load(ctx, accountID)
	if errors.Is(err, ErrNotFound) {
		k, err = kr.create(ctx, accountID)
		// Another node made it first: use theirs (a store may report
		// the conflict while the winner's write is still completing).
		for i := 0; errors.Is(err, ErrExists) || i > 0 && i < 10 && errors.Is(err, ErrNotFound); i++ {
			if i > 0 {
				select {
				case <-ctx.Done():
					return Key{}, ctx.Err()
				case <-time.After(100 * time.Millisecond):
				}
			}
			k, err = kr.load(ctx, accountID)
		}
	}
	if err != nil {
		return Key{}, err
	}
	kr.mu.Lock()
	kr.cache[accountID] = k
	kr.mu.Unlock()
	return k, nil
}

func keyObject(accountID string) string { return KeysPrefix + accountID + ".key" }

func (kr *Keyring) load(ctx context.Context, accountID string) (Key, error) {
	rc, err := kr.store.Get(ctx, keyObject(accountID))
	if err != nil {
		return Key{}, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 256))
	if err != nil {
		return Key{}, fmt.Errorf("%w: reading the data key of account %s: %v", ErrUnavailable, accountID, err)
	}
	ns := kr.master.NonceSize()
	if len(b) != 1+ns+KeySize+kr.master.Overhead() || b[0] != wrappedVersion {
		return Key{}, fmt.Errorf("snapshot: the stored data key of account %s (%s) is damaged", accountID, keyObject(accountID))
	}
	raw, err := kr.master.Open(nil, b[1:1+ns], b[1+ns:], wrapAAD(accountID))
	if err != nil {
		return Key{}, fmt.Errorf("%w: the data key of account %s does not open with this master key (was snapshots.master_key changed?)", ErrWrongKey, accountID)
	}
	return NewKey(raw)
}

func (kr *Keyring) create(ctx context.Context, accountID string) (Key, error) {
	raw := make([]byte, KeySize)
	if _, err := rand.Read(raw); err != nil {
		return Key{}, err
	}
	nonce := make([]byte, kr.master.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return Key{}, err
	}
	b := append([]byte{wrappedVersion}, nonce...)
	b = kr.master.Seal(b, nonce, raw, wrapAAD(accountID))
	if err := kr.store.Create(ctx, keyObject(accountID), bytes.NewReader(b)); err != nil {
		return Key{}, err
	}
	return NewKey(raw)
}
