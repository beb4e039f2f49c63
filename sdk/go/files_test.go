package orkestr

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestFilesWire(t *testing.T) {
	stored := map[string][]byte{}
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Query().Get("path")
		switch r.Method + " " + r.URL.Path {
		case "PUT /v1/sandboxes/sbx_1/files":
			if ct := r.Header.Get("Content-Type"); ct != "application/octet-stream" {
				t.Errorf("Content-Type = %q", ct)
			}
			b, _ := io.ReadAll(r.Body)
			stored[path] = b
			writeJSON(w, 200, map[string]any{"path": path, "size": len(b)})
		case "GET /v1/sandboxes/sbx_1/files":
			b, ok := stored[path]
			if !ok {
				writeAPIError(w, 404, "file_not_found", "No such file.", nil)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			_, _ = w.Write(b)
		case "DELETE /v1/sandboxes/sbx_1/files":
			delete(stored, path)
			w.WriteHeader(204)
		case "GET /v1/sandboxes/sbx_1/files/list":
			writeJSON(w, 200, map[string]any{"entries": []any{
				map[string]any{"name": "a b.txt", "path": "/workspace/a b.txt", "is_dir": false, "size": 5, "mode": 0o644, "modified_at": "2026-05-01T10:00:00.000Z"},
				map[string]any{"name": "sub", "path": "/workspace/sub", "is_dir": true, "size": 4096, "mode": 0o755, "modified_at": "2026-05-01T10:00:01.000Z"},
			}})
		default:
			t.Errorf("unexpected %s %s", r.Method, r.URL)
		}
	})
	ctx := context.Background()
	f := c.Sandbox("sbx_1").Files()
	odd := "/workspace/a b&c=ü?.txt"
	if err := f.Write(ctx, odd, "hello"); err != nil {
		t.Fatal(err)
	}
	if string(stored[odd]) != "hello" {
		t.Errorf("stored %q under %v", stored[odd], reflect.ValueOf(stored).MapKeys())
	}
	if err := f.WriteBytes(ctx, "/workspace/blob.bin", []byte{0, 1, 2, 255}); err != nil {
		t.Fatal(err)
	}
	if err := f.WriteBytes(ctx, "/workspace/empty", nil); err != nil {
		t.Fatal(err)
	}
	if s, err := f.Read(ctx, odd); err != nil || s != "hello" {
		t.Errorf("Read = %q, %v", s, err)
	}
	if b, err := f.ReadBytes(ctx, "/workspace/blob.bin"); err != nil || !bytes.Equal(b, []byte{0, 1, 2, 255}) {
		t.Errorf("ReadBytes = %v, %v", b, err)
	}
	if b, err := f.ReadBytes(ctx, "/workspace/empty"); err != nil || len(b) != 0 {
		t.Errorf("ReadBytes(empty) = %v, %v", b, err)
	}
	ents, err := f.List(ctx, "/workspace")
	if err != nil {
		t.Fatal(err)
	}
	want := []FileEntry{
		{Name: "a b.txt", Path: "/workspace/a b.txt", Size: 5, Mode: 0o644, ModifiedAt: mustTime(t, "2026-05-01T10:00:00Z")},
		{Name: "sub", Path: "/workspace/sub", IsDir: true, Size: 4096, Mode: fs.FileMode(0o755), ModifiedAt: mustTime(t, "2026-05-01T10:00:01Z")},
	}
	if !reflect.DeepEqual(ents, want) {
		t.Errorf("List = %+v", ents)
	}
	if err := f.Delete(ctx, odd); err != nil {
		t.Fatal(err)
	}
	_, err = f.Read(ctx, odd)
	var e *Error
	if !errors.As(err, &e) || e.Code != "file_not_found" || e.Status != 404 {
		t.Errorf("read after delete: %v", err)
	}
	if err := f.Delete(ctx, ""); err == nil {
		t.Error("empty path: no error")
	}
}

// patternReader produces n bytes without holding them.
type patternReader struct {
	n, off int64
	// after this many bytes, wait for gate once (if non-nil).
	gateAt int64
	gate   chan struct{}
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	if p.gate != nil && p.off >= p.gateAt {
		select {
		case <-p.gate:
		case <-time.After(10 * time.Second):
			return 0, errors.New("the server did not receive the first bytes while the upload went on")
		}
		p.gate = nil
	}
	n := int64(len(b))
	if p.n-p.off < n {
		n = p.n - p.off
	}
	if p.gate != nil && p.gateAt-p.off < n {
		n = p.gateAt - p.off
	}
	for i := range n {
		b[i] = byte((p.off + i) % 251)
	}
	p.off += n
	return int(n), nil
}

func totalAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.TotalAlloc
}

// TestWriteFromStreams uploads 64 MiB from a reader that only goes on once
// the server has received the first MiB, and checks that far less than the
// file's size was allocated on the way.
func TestWriteFromStreams(t *testing.T) {
	const size = 64 << 20
	gate := make(chan struct{})
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != -1 {
			t.Errorf("ContentLength = %d, want a chunked upload", r.ContentLength)
		}
		var n int64
		buf := make([]byte, 64<<10)
		opened := false
		sum := 0
		for {
			k, err := r.Body.Read(buf)
			for _, b := range buf[:k] {
				if b != byte((n)%251) {
					sum++
				}
				n++
			}
			if !opened && n >= 1<<20 {
				close(gate)
				opened = true
			}
			if err != nil {
				break
			}
		}
		if sum != 0 {
			t.Errorf("%d bytes differ", sum)
		}
		writeJSON(w, 200, map[string]any{"path": r.URL.Query().Get("path"), "size": n})
	})
	before := totalAlloc()
	n, err := c.Sandbox("sbx_1").Files().WriteFrom(context.Background(), "/workspace/big", &patternReader{n: size, gateAt: 1 << 20, gate: gate})
	allocated := totalAlloc() - before
	if err != nil {
		t.Fatal(err)
	}
	if n != size {
		t.Errorf("size = %d", n)
	}
	if allocated > 16<<20 {
		t.Errorf("allocated %d MiB to upload 64 MiB: the body is buffered", allocated>>20)
	}
}

func TestReadToStreams(t *testing.T) {
	const size = 64 << 20
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = io.Copy(w, &patternReader{n: size})
	})
	var got countingWriter
	before := totalAlloc()
	n, err := c.Sandbox("sbx_1").Files().ReadTo(context.Background(), "/workspace/big", &got)
	allocated := totalAlloc() - before
	if err != nil || n != size || got.n != size || got.bad != 0 {
		t.Fatalf("ReadTo = %d, %v (wrote %d, %d bad)", n, err, got.n, got.bad)
	}
	if allocated > 16<<20 {
		t.Errorf("allocated %d MiB to download 64 MiB", allocated>>20)
	}
}

type countingWriter struct{ n, bad int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	for _, b := range p {
		if b != byte(c.n%251) {
			c.bad++
		}
		c.n++
	}
	return len(p), nil
}

// TestWriteFromRetriesOnlySeekers retries an upload of a seekable reader
// from its start, and does not retry one that cannot be rewound.
func TestWriteFromRetriesOnlySeekers(t *testing.T) {
	var calls counter
	var bodies []string
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		bodies = append(bodies, string(b))
		if calls.inc()%2 == 1 {
			writeAPIError(w, 503, "unavailable", "Busy.", nil)
			return
		}
		writeJSON(w, 200, map[string]any{"path": "/x", "size": len(b)})
	})
	f := c.Sandbox("sbx_1").Files()
	r := strings.NewReader("skip:payload")
	_, _ = r.Seek(5, io.SeekStart)
	if n, err := f.WriteFrom(context.Background(), "/x", r); err != nil || n != 7 {
		t.Fatalf("WriteFrom = %d, %v", n, err)
	}
	if want := []string{"payload", "payload"}; !reflect.DeepEqual(bodies, want) {
		t.Errorf("bodies = %q", bodies)
	}
	calls.n.Store(0)
	_, err := f.WriteFrom(context.Background(), "/x", io.MultiReader(strings.NewReader("once")))
	var e *Error
	if !errors.As(err, &e) || e.Code != "unavailable" || calls.get() != 1 {
		t.Errorf("non-seekable upload: err = %v after %d requests", err, calls.get())
	}
}
