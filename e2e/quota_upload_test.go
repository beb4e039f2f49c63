package e2e

import (
	"archive/tar"
	"io"
	"strings"
	"testing"
)

// TestUploadsPastTheDiskQuotaAPI: through the API, a file upload and a
// tar bomb (under the server's own limit, past the sandbox's 64 MiB disk
// quota) are refused with a clear 413, leave nothing behind, and the
// sandbox takes files again after.
func TestUploadsPastTheDiskQuotaAPI(t *testing.T) {
	s := startAPI(t, serverOpts{config: "sizes:\n  small: {cpu: 0.5, memory_mb: 512, pids: 512, disk_mb: 64}\n"})
	id := s.create(s.key, map[string]any{"size": "small"})
	defer s.do("DELETE", "/v1/sandboxes/"+id, s.key, nil)
	const size = 256 << 20

	r := s.do("PUT", "/v1/sandboxes/"+id+"/files?path=/workspace/up/big.bin", s.key, io.LimitReader(zeroReader{}, size))
	if r.status != 413 || r.errCode() != "payload_too_large" || !strings.Contains(string(r.body), "no space left") {
		t.Fatalf("upload of 256 MiB under a 64 MiB quota: %d %s", r.status, r.body)
	}
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Mode: 0o644, Size: size})
		if err == nil {
			_, err = io.CopyN(tw, zeroReader{}, size)
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	r = s.do("PUT", "/v1/sandboxes/"+id+"/files/archive?path=/workspace/t", s.key, pr)
	pr.Close()
	if r.status != 413 || r.errCode() != "payload_too_large" || !strings.Contains(string(r.body), "no space left") {
		t.Fatalf("a tar bomb past the quota: %d %s", r.status, r.body)
	}
	r = s.do("POST", "/v1/sandboxes/"+id+"/exec", s.key, map[string]any{"command": "ls -A /workspace/up; rm -rf /workspace/t; head -c 32M /dev/zero > /workspace/after && stat -c %s /workspace/after"})
	if r.status != 200 || !strings.Contains(string(r.body), `"stdout":"33554432\n"`) {
		t.Fatalf("after the refused uploads: %d %s", r.status, r.body)
	}
}
