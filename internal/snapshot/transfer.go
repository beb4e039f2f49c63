package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Upload seals dir and stores it under key in one pass (Seal piped into
// Put: nothing is staged on disk and memory stays bounded). The object
// exists only if both succeed. A failure of the store is ErrUnavailable.
func Upload(ctx context.Context, store Store, key, dir string, k Key, m Manifest) (Sealed, error) {
	return UploadWith(ctx, store, key, dir, k, m, Options{})
}

// UploadWith is Upload with Seal options.
func UploadWith(ctx context.Context, store Store, key, dir string, k Key, m Manifest, o Options) (Sealed, error) {
	if err := ValidKey(key); err != nil {
		return Sealed{}, err
	}
	pr, pw := io.Pipe()
	type result struct {
		s   Sealed
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := SealWith(ctx, dir, pw, k, m, o)
		// An error here makes the Put fail, so nothing is stored.
		pw.CloseWithError(err)
		done <- result{s, err}
	}()
	perr := store.Put(ctx, key, pr)
	pr.CloseWithError(errStoreStopped)
	r := <-done
	switch {
	case r.err != nil && !errors.Is(r.err, errStoreStopped):
		return Sealed{}, r.err // Seal's own failure (the Put failed of it)
	case perr != nil:
		return Sealed{}, perr
	case r.err != nil:
		return Sealed{}, r.err
	}
	return r.s, nil
}

// errStoreStopped is what Seal sees when the Put reading it has ended.
var errStoreStopped = errors.New("snapshot: the store stopped reading the snapshot")

// Download fetches the object under key and opens it into dir (see Open:
// on any failure dir is removed). A missing object is ErrNotFound, a
// store that cannot be reached ErrUnavailable.
func Download(ctx context.Context, store Store, key, dir string, k Key) (Manifest, error) {
	rc, err := store.Get(ctx, key)
	if err != nil {
		return Manifest{}, err
	}
	defer rc.Close()
	m, err := Open(ctx, rc, dir, k)
	if err != nil {
		return Manifest{}, fmt.Errorf("%w (object %s)", err, key)
	}
	return m, nil
}
