package gvisor_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// TestUploadsPastTheDiskQuota: a file upload (its bytes on a data
// connection) and a tar bomb that expand past the sandbox's disk quota
// both fail with ErrNoSpace (the API's 413), leave no temporary file, and
// the host never holds more than the quota; the space is usable after.
func TestUploadsPastTheDiskQuota(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandboxRes(t, env, quotaRes)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	size := 2 * quotaRes.DiskBytes

	_, err := sb.WriteFile(ctx, "/workspace/up/big.bin", 0o644, io.LimitReader(zeros{}, size))
	if !errors.Is(err, runtime.ErrNoSpace) {
		t.Fatalf("upload of %d MiB under a %d MiB quota: %v", size>>20, quotaRes.DiskBytes>>20, err)
	}
	withinQuota(t, sb, "after the upload")
	if out := sh(t, sb, "ls -A /workspace/up"); out != "" {
		t.Fatalf("a refused upload left %q", out)
	}

	// One entry of twice the quota, made as it is sent; no limit of the
	// server's own: the quota is what stops it.
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Mode: 0o644, Size: size})
		if err == nil {
			_, err = io.CopyN(tw, zeros{}, size)
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	_, err = sb.(runtime.Archiver).Untar(ctx, "/workspace/t", 0, pr)
	pr.Close()
	if !errors.Is(err, runtime.ErrNoSpace) {
		t.Fatalf("a tar bomb of %d MiB under a %d MiB quota: %v", size>>20, quotaRes.DiskBytes>>20, err)
	}
	withinQuota(t, sb, "after the tar bomb")
	if out := sh(t, sb, "rm -rf /workspace/t /workspace/up; head -c 16M /dev/zero > /workspace/after && stat -c %s /workspace/after"); strings.TrimSpace(out) != "16777216" {
		t.Fatalf("the space after refused uploads: %q", out)
	}
	var got bytes.Buffer
	if _, err := sb.WriteFile(ctx, "/workspace/small", 0, strings.NewReader("fits")); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.ReadFile(ctx, "/workspace/small", &got); err != nil || got.String() != "fits" {
		t.Fatalf("%q %v", got.String(), err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
