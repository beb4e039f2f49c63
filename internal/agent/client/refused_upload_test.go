package client

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

// TestRefusedUploadIsAnsweredAtOnce: an upload the agent gives up on in
// the middle (here an archive past its limit; a full disk is the other
// case) is answered with the agent's reason while the host still has far
// more to send than a stream window holds, not when the caller's context
// ends (the agent drains the rest of a refused upload).
func TestRefusedUploadIsAnsweredAtOnce(t *testing.T) {
	c := startPair(t)
	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB, 4 stream windows
	if err := tw.WriteHeader(&tar.Header{Name: "big.bin", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	_, _ = tw.Write(body)
	_ = tw.Close()
	dir := filepath.Join(t.TempDir(), "x")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := c.Untar(ctx, dir, 1<<20, &archive)
	if !IsAgentError(err, wire.CodeTooLarge) {
		t.Fatalf("untar past its limit: got %v, want the agent's %s", err, wire.CodeTooLarge)
	}
	if ctx.Err() != nil {
		t.Fatal("the refusal came only when the caller's context ended")
	}
	// The channel still serves.
	if _, err := c.WriteFile(ctx, filepath.Join(dir, "after"), 0, bytes.NewReader([]byte("ok"))); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "after")); err != nil || string(b) != "ok" {
		t.Fatalf("after the refused upload: %q %v", b, err)
	}
}
