package runtimetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

func (s *suite) files(t *testing.T) {
	_, sb := s.sandbox(t)

	t.Run("RoundTrip", func(t *testing.T) {
		ctx := s.ctx(t)
		all := make([]byte, 256*64)
		for i := range all {
			all[i] = byte(i)
		}
		n, err := sb.WriteFile(ctx, "/workspace/rt/bin.dat", 0o600, bytes.NewReader(all))
		if err != nil || n != int64(len(all)) {
			t.Fatalf("write: %d %v", n, err)
		}
		var back bytes.Buffer
		fi, err := sb.ReadFile(ctx, "/workspace/rt/bin.dat", &back)
		if err != nil || !bytes.Equal(back.Bytes(), all) {
			t.Fatalf("read back: %v, %d bytes, equal %v", err, back.Len(), bytes.Equal(back.Bytes(), all))
		}
		if fi.Size != int64(len(all)) || fi.IsDir || fi.Mode != 0o600 || fi.Name != "bin.dat" || fi.Path != "/workspace/rt/bin.dat" || fi.Symlink {
			t.Fatalf("read info: %+v", fi)
		}
		// Overwriting replaces contents (shorter) and mode; mode 0 is 0644.
		if _, err := sb.WriteFile(ctx, "/workspace/rt/bin.dat", 0, strings.NewReader("short")); err != nil {
			t.Fatal(err)
		}
		if got := s.read(t, sb, "/workspace/rt/bin.dat"); got != "short" {
			t.Fatalf("after overwrite: %q", got)
		}
		if fi, err := sb.Stat(ctx, "/workspace/rt/bin.dat"); err != nil || fi.Mode != 0o644 || fi.Size != 5 {
			t.Fatalf("stat after overwrite: %+v %v", fi, err)
		}
		if _, err := sb.WriteFile(ctx, "/workspace/rt/run.sh", 0o755, strings.NewReader("#!/bin/sh\n")); err != nil {
			t.Fatal(err)
		}
		if fi, err := sb.Stat(ctx, "/workspace/rt/run.sh"); err != nil || fi.Mode != 0o755 {
			t.Fatalf("an executable upload: %+v %v", fi, err)
		}
		s.write(t, sb, "/workspace/rt/empty", "")
		if fi, err := sb.Stat(ctx, "/workspace/rt/empty"); err != nil || fi.Size != 0 || fi.IsDir {
			t.Fatalf("empty file: %+v %v", fi, err)
		}
		if got := s.read(t, sb, "/workspace/rt/empty"); got != "" {
			t.Fatalf("empty file reads %q", got)
		}
		// Parents are made, anywhere in the sandbox, and nothing is left
		// beside a written file.
		s.write(t, sb, "/workspace/rt/a/b/c/deep.txt", "deep")
		s.write(t, sb, "/opt/conformance/dir/file", "opt")
		if got := s.read(t, sb, "/opt/conformance/dir/file"); got != "opt" {
			t.Fatalf("/opt file: %q", got)
		}
		if names := s.names(t, sb, "/workspace/rt/a/b/c"); !slices.Equal(names, []string{"deep.txt"}) {
			t.Fatalf("beside the written file: %q", names)
		}
	})

	t.Run("Large", func(t *testing.T) {
		const size = 48<<20 + 3
		ctx := s.ctx(t)
		up := sha256.New()
		src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{42}), size), up)
		n, err := sb.WriteFile(ctx, "/workspace/big.bin", 0o644, src)
		if err != nil || n != size {
			t.Fatalf("upload: %d %v", n, err)
		}
		down := sha256.New()
		fi, err := sb.ReadFile(ctx, "/workspace/big.bin", down)
		if err != nil || fi.Size != size {
			t.Fatalf("download: %+v %v", fi, err)
		}
		if !bytes.Equal(down.Sum(nil), up.Sum(nil)) {
			t.Fatal("the download differs from the upload")
		}
		// A download cut short by its context ends with the context's
		// error; one whose writer fails ends with an error too.
		cctx, cancel := context.WithCancel(ctx)
		var got int
		_, err = sb.ReadFile(cctx, "/workspace/big.bin", writerFunc(func(p []byte) (int, error) {
			if got += len(p); got > 1<<20 {
				cancel()
			}
			return len(p), nil
		}))
		wantErr(t, "a cancelled download", err, context.Canceled)
		if got >= size {
			t.Errorf("a download cancelled after 1 MiB delivered all %d bytes", got)
		}
		broken := errors.New("the caller's writer failed")
		if _, err := sb.ReadFile(ctx, "/workspace/big.bin", writerFunc(func([]byte) (int, error) { return 0, broken })); err == nil {
			t.Error("a download into a failing writer succeeded")
		}
		if err := sb.Remove(ctx, "/workspace/big.bin", false); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("AtomicReplace", func(t *testing.T) {
		ctx := s.ctx(t)
		s.write(t, sb, "/workspace/atomic/f", "old contents")
		// An upload whose reader fails keeps the old contents.
		broken := io.MultiReader(io.LimitReader(rand.NewChaCha8([32]byte{1}), 1<<20), errReader{})
		if _, err := sb.WriteFile(ctx, "/workspace/atomic/f", 0, broken); err == nil {
			t.Fatal("an upload whose reader failed succeeded")
		}
		// So does one whose context ends.
		cctx, cancel := context.WithCancel(ctx)
		var sent int
		r := readerFunc(func(p []byte) (int, error) {
			if sent += len(p); sent > 2<<20 {
				cancel()
			}
			for i := range p {
				p[i] = 'z'
			}
			return len(p), nil
		})
		if _, err := sb.WriteFile(cctx, "/workspace/atomic/f", 0, r); !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled upload: got %v, want context.Canceled", err)
		}
		if got := s.read(t, sb, "/workspace/atomic/f"); got != "old contents" {
			t.Fatalf("after failed uploads: %q", short(got))
		}
		// The target is never touched; the temporary file of a cancelled
		// upload is removed by the agent once it sees the transfer cut,
		// which may be just after the cancelled call has returned.
		var names []string
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if names = s.names(t, sb, "/workspace/atomic"); slices.Equal(names, []string{"f"}) || time.Now().After(deadline) {
				break
			}
		}
		if !slices.Equal(names, []string{"f"}) {
			t.Fatalf("failed uploads left %q (5 s after)", names)
		}
		// A failed upload of a new file leaves nothing.
		if _, err := sb.WriteFile(ctx, "/workspace/atomic/new", 0, io.MultiReader(strings.NewReader("partial"), errReader{})); err == nil {
			t.Fatal("an upload whose reader failed succeeded")
		}
		_, err := sb.Stat(ctx, "/workspace/atomic/new")
		wantErr(t, "stat of a failed new upload", err, runtime.ErrFileNotFound)
	})

	t.Run("ListStatRemoveMkdir", func(t *testing.T) {
		ctx := s.ctx(t)
		if err := sb.MkdirAll(ctx, "/workspace/p/q/r", 0o750); err != nil {
			t.Fatal(err)
		}
		if err := sb.MkdirAll(ctx, "/workspace/p/q/r", 0o750); err != nil {
			t.Fatalf("mkdir of an existing directory: %v", err)
		}
		if fi, err := sb.Stat(ctx, "/workspace/p/q/r"); err != nil || !fi.IsDir || fi.Mode != 0o750 || fi.Name != "r" {
			t.Fatalf("stat of the new directory: %+v %v", fi, err)
		}
		s.write(t, sb, "/workspace/p/file.txt", "12345")
		s.write(t, sb, "/workspace/p/q/inner.txt", "x")
		s.sh(t, sb, "ln -s file.txt /workspace/p/link")
		ents, err := sb.List(ctx, "/workspace/p")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range ents {
			got = append(got, fmt.Sprintf("%s dir=%v link=%v path=%s", e.Name, e.IsDir, e.Symlink, e.Path))
		}
		want := []string{
			"file.txt dir=false link=false path=/workspace/p/file.txt",
			"link dir=false link=true path=/workspace/p/link",
			"q dir=true link=false path=/workspace/p/q",
		}
		if !slices.Equal(got, want) {
			t.Fatalf("list:\n got %q\nwant %q", got, want)
		}
		if ents[0].Size != 5 || ents[0].Mode != 0o644 || time.Since(ents[0].Modified) > time.Hour || time.Until(ents[0].Modified) > time.Hour {
			t.Errorf("list entry: %+v", ents[0])
		}
		if ents, err := sb.List(ctx, "/workspace/p/q/r"); err != nil || len(ents) != 0 {
			t.Fatalf("list an empty dir: %v %v", ents, err)
		}
		fi, err := sb.Stat(ctx, "/workspace/p/file.txt")
		if err != nil || fi.Size != 5 || fi.IsDir || fi.Mode != 0o644 || fi.Name != "file.txt" || fi.Path != "/workspace/p/file.txt" {
			t.Fatalf("stat file: %+v %v", fi, err)
		}
		if time.Since(fi.Modified) > time.Hour || time.Until(fi.Modified) > time.Hour {
			t.Errorf("stat modified %v is not now", fi.Modified)
		}
		if fi, err := sb.Stat(ctx, "/workspace/p/link"); err != nil || !fi.Symlink {
			t.Fatalf("stat does not follow a symlink: %+v %v", fi, err)
		}
		// Remove: a file, an empty dir, a full dir only recursively, a
		// link and not what it points to.
		if err := sb.Remove(ctx, "/workspace/p/link", false); err != nil {
			t.Fatal(err)
		}
		if got := s.read(t, sb, "/workspace/p/file.txt"); got != "12345" {
			t.Fatalf("removing a link removed its target: %q", got)
		}
		if err := sb.Remove(ctx, "/workspace/p/file.txt", false); err != nil {
			t.Fatal(err)
		}
		_, err = sb.Stat(ctx, "/workspace/p/file.txt")
		wantErr(t, "stat a removed file", err, runtime.ErrFileNotFound)
		if err := sb.Remove(ctx, "/workspace/p/q/r", false); err != nil {
			t.Fatalf("remove an empty dir: %v", err)
		}
		wantErr(t, "non-recursive remove of a full dir", sb.Remove(ctx, "/workspace/p", false), runtime.ErrNotEmpty)
		if err := sb.Remove(ctx, "/workspace/p", true); err != nil {
			t.Fatal(err)
		}
		_, err = sb.Stat(ctx, "/workspace/p")
		wantErr(t, "stat a recursively removed dir", err, runtime.ErrFileNotFound)
		wantErr(t, "remove a missing path", sb.Remove(ctx, "/workspace/p", true), runtime.ErrFileNotFound)
		wantErr(t, "remove /", sb.Remove(ctx, "/", true), runtime.ErrInvalidPath)
		if _, err := sb.Stat(ctx, "/workspace"); err != nil {
			t.Fatalf("the sandbox's own directories were damaged: %v", err)
		}
	})

	t.Run("Errors", func(t *testing.T) {
		ctx := s.ctx(t)
		s.write(t, sb, "/workspace/e/file", "contents")
		var w bytes.Buffer
		_, err := sb.ReadFile(ctx, "/workspace/e/missing", &w)
		wantErr(t, "read missing", err, runtime.ErrFileNotFound)
		_, err = sb.ReadFile(ctx, "/workspace/e", &w)
		wantErr(t, "read a dir", err, runtime.ErrIsDir)
		if _, err := sb.ReadFile(ctx, "/workspace/e/file/sub", &w); !errors.Is(err, runtime.ErrNotDir) && !errors.Is(err, runtime.ErrFileNotFound) {
			t.Errorf("read below a file: got %v, want ErrNotDir or ErrFileNotFound", err)
		}
		if w.Len() != 0 {
			t.Errorf("failed reads wrote %q", w.String())
		}
		_, err = sb.List(ctx, "/workspace/e/file")
		wantErr(t, "list a file", err, runtime.ErrNotDir)
		_, err = sb.List(ctx, "/workspace/e/missing")
		wantErr(t, "list missing", err, runtime.ErrFileNotFound)
		_, err = sb.Stat(ctx, "/workspace/e/missing")
		wantErr(t, "stat missing", err, runtime.ErrFileNotFound)
		_, err = sb.WriteFile(ctx, "/workspace/e", 0, strings.NewReader("x"))
		wantErr(t, "write over a dir", err, runtime.ErrIsDir)
		_, err = sb.WriteFile(ctx, "/workspace/e/file/sub", 0, strings.NewReader("x"))
		wantErr(t, "write below a file", err, runtime.ErrNotDir)
		wantErr(t, "mkdir below a file", sb.MkdirAll(ctx, "/workspace/e/file/sub", 0), runtime.ErrNotDir)
		wantErr(t, "mkdir over a file", sb.MkdirAll(ctx, "/workspace/e/file", 0), runtime.ErrNotDir)
		if got := s.read(t, sb, "/workspace/e/file"); got != "contents" {
			t.Errorf("file after failed operations: %q", got)
		}
	})

	t.Run("Symlinks", func(t *testing.T) {
		ctx := s.ctx(t)
		s.write(t, sb, "/workspace/s/target.txt", "target")
		if err := sb.MkdirAll(ctx, "/workspace/s/dir", 0o755); err != nil {
			t.Fatal(err)
		}
		s.sh(t, sb, `ln -s /workspace/s/target.txt /workspace/s/abs
ln -s target.txt /workspace/s/rel
ln -s dir /workspace/s/dirlink
ln -s / /workspace/s/root
ln -s missing /workspace/s/dangling`)
		for _, p := range []string{"/workspace/s/abs", "/workspace/s/rel", "/workspace/s/root/workspace/s/target.txt"} {
			if got := s.read(t, sb, p); got != "target" {
				t.Errorf("read %s: %q", p, got)
			}
		}
		_, err := sb.ReadFile(ctx, "/workspace/s/dangling", io.Discard)
		wantErr(t, "read a dangling link", err, runtime.ErrFileNotFound)
		// Writing below a link to a directory follows it.
		s.write(t, sb, "/workspace/s/dirlink/inside.txt", "inside")
		if got := s.read(t, sb, "/workspace/s/dir/inside.txt"); got != "inside" {
			t.Errorf("written through a dir link: %q", got)
		}
		if names := s.names(t, sb, "/workspace/s/dirlink"); !slices.Equal(names, []string{"inside.txt"}) {
			t.Errorf("list through a dir link: %q", names)
		}
		// Writing onto a link replaces the link, not its target.
		s.write(t, sb, "/workspace/s/abs", "replaced")
		if fi, err := sb.Stat(ctx, "/workspace/s/abs"); err != nil || fi.Symlink || fi.Size != 8 {
			t.Errorf("stat after writing onto a link: %+v %v", fi, err)
		}
		if got := s.read(t, sb, "/workspace/s/target.txt"); got != "target" {
			t.Errorf("writing onto a link changed its target: %q", got)
		}
		// Nothing can be made below a dangling link.
		_, err = sb.WriteFile(ctx, "/workspace/s/dangling/x", 0, strings.NewReader("x"))
		wantErr(t, "write below a dangling link", err, runtime.ErrNotDir)
		wantErr(t, "mkdir below a dangling link", sb.MkdirAll(ctx, "/workspace/s/dangling/x", 0), runtime.ErrNotDir)
	})

	t.Run("SymlinksOutOfTheSandbox", func(t *testing.T) {
		// Files on the host the sandbox must never see or change.
		hostDir := t.TempDir()
		secret := filepath.Join(hostDir, "secret")
		if err := os.WriteFile(secret, []byte("host-secret"), 0o600); err != nil {
			t.Fatal(err)
		}
		rel := strings.Repeat("../", 12) + strings.TrimPrefix(secret, "/")
		s.sh(t, sb, fmt.Sprintf(`ln -s %s /workspace/h-abs
ln -s %s /workspace/h-rel
ln -s %s /workspace/h-dir`, secret, rel, hostDir))
		ctx := s.ctx(t)
		for _, p := range []string{"/workspace/h-abs", "/workspace/h-rel", "/workspace/h-dir/secret", secret} {
			var w bytes.Buffer
			_, err := sb.ReadFile(ctx, p, &w)
			wantErr(t, "read "+p, err, runtime.ErrFileNotFound)
			if w.Len() != 0 {
				t.Errorf("read %s gave %q", p, w.String())
			}
		}
		_, err := sb.List(ctx, "/workspace/h-dir")
		wantErr(t, "list a link to a host dir", err, runtime.ErrFileNotFound)
		_, err = sb.WriteFile(ctx, "/workspace/h-dir/secret", 0, strings.NewReader("pwned"))
		wantErr(t, "write below a link to a host dir", err, runtime.ErrNotDir)
		s.write(t, sb, "/workspace/h-abs", "pwned")
		s.write(t, sb, "/workspace/h-rel", "pwned")
		wantErr(t, "remove the host's file by its path", sb.Remove(ctx, secret, false), runtime.ErrFileNotFound)
		if err := sb.Remove(ctx, "/workspace/h-dir", true); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(secret); err != nil || string(b) != "host-secret" {
			t.Fatalf("the host's file: %q %v", b, err)
		}
		if ents, _ := os.ReadDir(hostDir); len(ents) != 1 {
			t.Fatalf("the host dir holds %d entries", len(ents))
		}
	})

	t.Run("InvalidPaths", func(t *testing.T) {
		ctx := s.ctx(t)
		bad := map[string]string{
			"empty":           "",
			"relative":        "workspace/x",
			"dot relative":    "./x",
			"NUL":             "/workspace/a\x00b",
			"dotdot":          "/workspace/../etc/passwd",
			"dotdot at end":   "/workspace/..",
			"only dotdot":     "..",
			"dotdot root":     "/..",
			"dotdot repeated": "/workspace/x/../../etc/shadow",
			"4097 bytes":      "/" + strings.Repeat("a/", 2048),
			"2 MiB":           "/" + strings.Repeat("b", 2<<20),
			"long component":  "/workspace/" + strings.Repeat("c", 300),
		}
		for name, p := range bad {
			var w bytes.Buffer
			checks := map[string]error{}
			_, checks["read"] = sb.ReadFile(ctx, p, &w)
			_, checks["write"] = sb.WriteFile(ctx, p, 0, strings.NewReader("pwned"))
			_, checks["list"] = sb.List(ctx, p)
			_, checks["stat"] = sb.Stat(ctx, p)
			checks["remove"] = sb.Remove(ctx, p, true)
			checks["mkdir"] = sb.MkdirAll(ctx, p, 0)
			for op, err := range checks {
				wantErr(t, op+" "+name, err, runtime.ErrInvalidPath)
			}
			if w.Len() != 0 {
				t.Errorf("read %s returned data", name)
			}
		}
		// A long path within the limit is not refused as invalid.
		ok := "/workspace/" + strings.Repeat("d/", 1990) + "e"
		_, err := sb.Stat(ctx, ok)
		wantErr(t, fmt.Sprintf("stat a %d-byte path", len(ok)), err, runtime.ErrFileNotFound)
		if got := s.sh(t, sb, "echo alive"); got != "alive\n" {
			t.Fatalf("after hostile paths: %q", got)
		}
	})
}

// names lists dir's entry names.
func (s *suite) names(t *testing.T, sb runtime.Sandbox, dir string) []string {
	t.Helper()
	ents, err := sb.List(s.ctx(t), dir)
	if err != nil {
		t.Fatalf("list %s: %v", dir, err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name)
	}
	return out
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("the upload's source failed") }

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }
