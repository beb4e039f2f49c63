package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
)

// DefaultCollectGrace is how old an unreferenced snapshot object must be
// before Collect removes it: longer than any pause takes from its upload
// to the commit of the row that references it.
const DefaultCollectGrace = time.Hour

// CollectOptions shape a collection; Referenced is required.
type CollectOptions struct {
	// Referenced says whether a row references the snapshot object key.
	// It must see every row committed before Collect was called; an
	// object uploaded since is younger than Grace and not considered.
	Referenced func(key string) bool
	// DryRun lists what would be removed and removes nothing.
	DryRun bool
	// Grace is the minimum age of a removed object (default
	// DefaultCollectGrace; a negative value means no minimum, for tests).
	Grace time.Duration
}

// Collect removes the snapshot objects no row references, older than
// DefaultCollectGrace (see CollectWith).
func Collect(ctx context.Context, store Store, referenced func(key string) bool, dryRun bool) ([]Object, error) {
	return CollectWith(ctx, store, CollectOptions{Referenced: referenced, DryRun: dryRun})
}

// CollectWith removes (or, dry, lists) the objects under SnapshotsPrefix
// that Referenced does not claim and that are older than the grace
// period, so an upload whose row is not yet committed is never taken. It
// never touches keys/ (the accounts' data keys) or anything outside the
// snapshots prefix. Unless dry, it also aborts uploads abandoned for
// longer than the grace period (S3 multipart uploads of a node that died
// mid-pause; the filesystem store's temporary files). It returns what it
// removed (or would remove); on an error it stops and returns what it
// removed so far.
func CollectWith(ctx context.Context, store Store, o CollectOptions) ([]Object, error) {
	if o.Referenced == nil {
		return nil, errors.New("snapshot: Collect needs a Referenced function")
	}
	grace := o.Grace
	if grace == 0 {
		grace = DefaultCollectGrace
	}
	if grace < 0 {
		grace = 0
	}
	cutoff := time.Now().Add(-grace)
	objs, err := store.List(ctx, SnapshotsPrefix)
	if err != nil {
		return nil, err
	}
	var removed []Object
	for _, obj := range objs {
		if !strings.HasPrefix(obj.Key, SnapshotsPrefix) || obj.Modified.After(cutoff) || o.Referenced(obj.Key) {
			continue
		}
		if !o.DryRun {
			if err := store.Delete(ctx, obj.Key); err != nil {
				return removed, err
			}
		}
		removed = append(removed, obj)
	}
	if !o.DryRun {
		if sw, ok := store.(staleSweeper); ok {
			if err := sw.sweepStale(ctx, cutoff); err != nil {
				return removed, err
			}
		}
	}
	return removed, nil
}

// staleSweeper is a store that can drop the leftovers of writes that
// never finished.
type staleSweeper interface {
	sweepStale(ctx context.Context, before time.Time) error
}

func (s *fsStore) sweepStale(ctx context.Context, before time.Time) error {
	ents, err := os.ReadDir(filepath.Join(s.root, ".tmp"))
	if err != nil {
		return nil
	}
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.ModTime().Before(before) {
			os.Remove(filepath.Join(s.root, ".tmp", e.Name()))
		}
	}
	return nil
}

func (s *s3Store) sweepStale(ctx context.Context, before time.Time) error {
	core := minio.Core{Client: s.c}
	for u := range s.c.ListIncompleteUploads(ctx, s.bucket, s.prefix+SnapshotsPrefix, true) {
		if u.Err != nil {
			return s.mapErr(ctx, "list uploads", SnapshotsPrefix, u.Err)
		}
		if u.Initiated.IsZero() || u.Initiated.After(before) {
			continue
		}
		if err := core.AbortMultipartUpload(ctx, s.bucket, u.Key, u.UploadID); err != nil {
			if e := s.mapErr(ctx, "abort upload", u.Key, err); !errors.Is(e, ErrNotFound) {
				return fmt.Errorf("snapshot: aborting an abandoned upload of %s: %w", u.Key, e)
			}
		}
	}
	return nil
}
