package snapshot_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/snapshot/s3test"
)

func masterKey(t testing.TB) []byte {
	b := make([]byte, snapshot.KeySize)
	rand.Read(b)
	return b
}

func keyring(t testing.TB, s snapshot.Store, master []byte) *snapshot.Keyring {
	t.Helper()
	kr, err := snapshot.NewKeyring(s, master)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func keyringSuite(t *testing.T, s snapshot.Store) {
	ctx := context.Background()
	master := masterKey(t)
	t.Run("one key per account, shared by every node", func(t *testing.T) {
		// Eight nodes ask for a new account's key at once.
		keys := make([]snapshot.Key, 8)
		errs := make([]error, 8)
		var wg sync.WaitGroup
		for i := range keys {
			wg.Add(1)
			go func() {
				defer wg.Done()
				keys[i], errs[i] = keyring(t, s, master).DataKey(ctx, "acct_race")
			}()
		}
		wg.Wait()
		for i := range keys {
			if errs[i] != nil {
				t.Fatalf("node %d: %v", i, errs[i])
			}
			if !keys[i].Encrypts() {
				t.Fatal("a keyring with a master key returned no key")
			}
		}
		// What one node seals, another opens.
		src := snapshotDir(t, 1<<20)
		var buf bytes.Buffer
		if _, err := snapshot.Seal(ctx, src, &buf, keys[0], manifest()); err != nil {
			t.Fatal(err)
		}
		for i := 1; i < len(keys); i++ {
			if _, err := snapshot.Open(ctx, bytes.NewReader(buf.Bytes()), t.TempDir()+"/r", keys[i]); err != nil {
				t.Fatalf("node %d cannot open node 0's snapshot: %v", i, err)
			}
		}
		objs, err := s.List(ctx, snapshot.KeysPrefix)
		if err != nil || len(objs) != 1 || objs[0].Key != "keys/acct_race.key" {
			t.Fatalf("keys/ holds %+v, %v", objs, err)
		}
		// The store holds the key wrapped: version, nonce, key, GCM tag.
		rc, err := s.Get(ctx, "keys/acct_race.key")
		if err != nil {
			t.Fatal(err)
		}
		wrapped, _ := io.ReadAll(rc)
		rc.Close()
		if len(wrapped) != 1+12+snapshot.KeySize+16 {
			t.Fatalf("the wrapped key is %d bytes", len(wrapped))
		}
	})
	t.Run("another account's key does not open", func(t *testing.T) {
		kr := keyring(t, s, master)
		ka, err := kr.DataKey(ctx, "acct_a")
		if err != nil {
			t.Fatal(err)
		}
		kb, err := kr.DataKey(ctx, "acct_b")
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := snapshot.Seal(ctx, snapshotDir(t, 1<<10), &buf, ka, manifest()); err != nil {
			t.Fatal(err)
		}
		if _, err := snapshot.Open(ctx, &buf, t.TempDir()+"/r", kb); !errors.Is(err, snapshot.ErrWrongKey) {
			t.Fatalf("Open with another account's key = %v, want ErrWrongKey", err)
		}
	})
	t.Run("a wrapped key moved to another account does not open", func(t *testing.T) {
		kr := keyring(t, s, master)
		if _, err := kr.DataKey(ctx, "acct_victim"); err != nil {
			t.Fatal(err)
		}
		rc, err := s.Get(ctx, "keys/acct_victim.key")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if err := s.Put(ctx, "keys/acct_thief.key", bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		if _, err := keyring(t, s, master).DataKey(ctx, "acct_thief"); !errors.Is(err, snapshot.ErrWrongKey) {
			t.Fatalf("DataKey of a moved wrapped key = %v, want ErrWrongKey", err)
		}
	})
	t.Run("a wrong master key is refused", func(t *testing.T) {
		if _, err := keyring(t, s, master).DataKey(ctx, "acct_m"); err != nil {
			t.Fatal(err)
		}
		_, err := keyring(t, s, masterKey(t)).DataKey(ctx, "acct_m")
		if !errors.Is(err, snapshot.ErrWrongKey) {
			t.Fatalf("DataKey under another master key = %v, want ErrWrongKey", err)
		}
	})
	t.Run("hostile account ids", func(t *testing.T) {
		for _, id := range []string{"", "..", "../keys/x", "a/b", "a\x00", ".hidden"} {
			if _, err := keyring(t, s, master).DataKey(ctx, id); !errors.Is(err, snapshot.ErrInvalidKey) {
				t.Errorf("DataKey(%q) = %v, want ErrInvalidKey", id, err)
			}
		}
	})
	t.Run("no master key: no encryption", func(t *testing.T) {
		k, err := keyring(t, s, nil).DataKey(ctx, "acct_plain")
		if err != nil || k.Encrypts() {
			t.Fatalf("DataKey without a master key = %v, %v", k.Encrypts(), err)
		}
	})
}

func TestKeyringFS(t *testing.T) { keyringSuite(t, snapshot.NewFS(t.TempDir())) }

func TestKeyringS3(t *testing.T) {
	srv := s3test.Start(t)
	keyringSuite(t, newS3(t, srv, nil))
}

func TestKeyringUnavailable(t *testing.T) {
	srv := s3test.Start(t)
	s := newS3(t, srv, nil)
	kr := keyring(t, s, masterKey(t))
	srv.Stop()
	if _, err := kr.DataKey(context.Background(), "acct_1"); !errors.Is(err, snapshot.ErrUnavailable) {
		t.Fatalf("DataKey with the store down = %v, want ErrUnavailable", err)
	}
}
