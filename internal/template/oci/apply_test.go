package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/template/oci/ocitest"
)

// applyAll applies layers, bottom first, to a fresh root and returns it
// with the first error.
func applyAll(t *testing.T, layers ...[]ent) (string, error) {
	t.Helper()
	dest := t.TempDir()
	for i, l := range layers {
		if err := ApplyLayer(context.Background(), dest, bytes.NewReader(ocitest.Tar(t, l...))); err != nil {
			return dest, fmt.Errorf("layer %d: %w", i+1, err)
		}
	}
	return dest, nil
}

// tree lists everything under root as "path" (directories end in "/",
// symlinks show "-> target").
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case fi.IsDir():
			rel += "/"
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			rel += " -> " + l
		}
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func wantTree(t *testing.T, root string, want ...string) {
	t.Helper()
	if got := strings.Join(tree(t, root), "\n"); got != strings.Join(want, "\n") {
		t.Errorf("tree:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

// TestOpaqueHidesAllLowerContent: an opaque marker hides every lower
// entry below its directory, also below subdirectories the same layer
// re-creates (explicitly or as a parent of its own entries), and never
// this layer's own entries, wherever the marker stands in the tar.
func TestOpaqueHidesAllLowerContent(t *testing.T) {
	lower := []ent{
		ocitest.Dir("opq/"), ocitest.File("opq/file", "lower"),
		ocitest.Dir("opq/sub/"), ocitest.File("opq/sub/lower", "lower"),
		ocitest.Dir("opq/sub/deeper/"), ocitest.File("opq/sub/deeper/x", "lower"),
		ocitest.File("beside", "not below the marker"),
	}
	marker := ent{Name: "opq/.wh..wh..opq"}
	cases := map[string][]ent{
		"marker first":                  {ocitest.Dir("opq/"), marker, ocitest.Dir("opq/sub/"), ocitest.File("opq/sub/new", "upper")},
		"marker last":                   {ocitest.Dir("opq/"), ocitest.Dir("opq/sub/"), ocitest.File("opq/sub/new", "upper"), marker},
		"implicit parent, marker last":  {ocitest.File("opq/sub/new", "upper"), marker},
		"implicit parent, marker first": {marker, ocitest.File("opq/sub/new", "upper")},
	}
	for name, upper := range cases {
		t.Run(name, func(t *testing.T) {
			dest, err := applyAll(t, lower, upper)
			if err != nil {
				t.Fatal(err)
			}
			wantTree(t, dest, "beside", "opq/", "opq/sub/", "opq/sub/new")
		})
	}
}

// TestWhiteoutSparesItsOwnLayer: `.wh.NAME` hides lower layers' NAME, not
// the NAME of its own layer, before or after it in the tar.
func TestWhiteoutSparesItsOwnLayer(t *testing.T) {
	lower := []ent{ocitest.Dir("d/"), ocitest.File("d/f", "lower"), ocitest.Dir("d/sub/"), ocitest.File("d/sub/old", "lower")}
	dest, err := applyAll(t, lower, []ent{
		ocitest.File("d/f", "upper"), {Name: "d/.wh.f"},
		ocitest.File("d/sub/new", "upper"), {Name: "d/.wh.sub"},
	})
	if err != nil {
		t.Fatal(err)
	}
	wantTree(t, dest, "d/", "d/f", "d/sub/", "d/sub/new")
	if got := readFile(t, filepath.Join(dest, "d/f")); got != "upper" {
		t.Errorf("d/f = %q", got)
	}
}

// TestMissingPathsCreateNothing: a whiteout of something that is not there
// is a no-op, and a hard link to a missing target is an error; neither
// makes directories.
func TestMissingPathsCreateNothing(t *testing.T) {
	dest, err := applyAll(t, []ent{
		{Name: "a/b/.wh.c"},
		{Name: "x/y/.wh..wh..opq"},
		ocitest.File("file", "x"),
		{Name: "file/.wh.under-a-file"},
		ocitest.Symlink("lib", "usr/lib"),
		{Name: "lib/.wh.through-a-dangling-symlink"},
	})
	if err != nil {
		t.Fatalf("whiteouts of missing paths: %v", err)
	}
	wantTree(t, dest, "file", "lib -> usr/lib")

	dest, err = applyAll(t, []ent{{Name: "hl", Type: tar.TypeLink, Link: "missing/dir/target"}})
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("hard link to a missing target: %v, want an error saying it does not exist", err)
	}
	wantTree(t, dest)

	_, err = applyAll(t, []ent{ocitest.Dir("d/"), {Name: "d/hl", Type: tar.TypeLink, Link: "d/nothing"}})
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("hard link to a missing file: %v", err)
	}
}

// TestSymlinkParentsResolveInRoot: a symlink in an entry's parent path is
// followed as if the root were /, creating a missing target directory
// inside the root.
func TestSymlinkParentsResolveInRoot(t *testing.T) {
	cases := []struct {
		name   string
		layers [][]ent
		want   []string // the tree afterwards
		fails  string   // or the error it must fail with
	}{
		{name: "relative, target exists", layers: [][]ent{{
			ocitest.Dir("usr/"), ocitest.Dir("usr/lib/"), ocitest.Symlink("lib", "usr/lib"), ocitest.File("lib/x", "x")}},
			want: []string{"lib -> usr/lib", "usr/", "usr/lib/", "usr/lib/x"}},
		{name: "relative, dangling", layers: [][]ent{{ocitest.Symlink("lib", "usr/lib"), ocitest.File("lib/x", "x")}},
			want: []string{"lib -> usr/lib", "usr/", "usr/lib/", "usr/lib/x"}},
		{name: "absolute, dangling, in a lower layer", layers: [][]ent{{ocitest.Symlink("lib", "/usr/lib")}, {ocitest.File("lib/x", "x")}},
			want: []string{"lib -> /usr/lib", "usr/", "usr/lib/", "usr/lib/x"}},
		{name: "dot-dot above the root", layers: [][]ent{{ocitest.Dir("a/"), ocitest.Symlink("a/lib", "../../../../usr/lib"), ocitest.File("a/lib/x", "x")}},
			want: []string{"a/", "a/lib -> ../../../../usr/lib", "usr/", "usr/lib/", "usr/lib/x"}},
		{name: "chain through a dot-dot", layers: [][]ent{{
			ocitest.Symlink("a", "b/../c"), ocitest.Symlink("b", "/d/e"), ocitest.File("a/f", "x")}},
			// b/.. is the parent of what b points to (/d), so a is /d/c.
			want: []string{"a -> b/../c", "b -> /d/e", "d/", "d/c/", "d/c/f", "d/e/"}},
		{name: "loop", layers: [][]ent{{ocitest.Symlink("l1", "l2"), ocitest.Symlink("l2", "l1"), ocitest.File("l1/x", "x")}},
			fails: "too many levels of symbolic links"},
		{name: "symlink to a file", layers: [][]ent{{ocitest.File("f", "x"), ocitest.Symlink("s", "f"), ocitest.File("s/x", "x")}},
			fails: "not a directory"},
		{name: "whiteout through a symlink", layers: [][]ent{
			{ocitest.Dir("usr/"), ocitest.Dir("usr/lib/"), ocitest.File("usr/lib/old", "x"), ocitest.Symlink("lib", "usr/lib")},
			{{Name: "lib/.wh.old"}}},
			want: []string{"lib -> usr/lib", "usr/", "usr/lib/"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dest, err := applyAll(t, c.layers...)
			if c.fails != "" {
				if err == nil || !strings.Contains(err.Error(), c.fails) {
					t.Fatalf("got %v, want an error saying %q", err, c.fails)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			wantTree(t, dest, c.want...)
		})
	}
}

// TestSpecialModesAreExact: a FIFO gets the tar's mode, not the mode cut
// by the umask.
func TestSpecialModesAreExact(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	dest, err := applyAll(t, []ent{{Name: "fifo", Type: tar.TypeFifo, Mode: 0o666}, {Name: "sticky-fifo", Type: tar.TypeFifo, Mode: 0o1622}})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]uint32{"fifo": 0o666, "sticky-fifo": 0o1622} {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dest, name), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFIFO || st.Mode&0o7777 != want {
			t.Errorf("%s: mode %o, want a fifo with %o", name, st.Mode, want)
		}
	}
}

// TestDirectoryTimesSurviveTheirEntries: a directory's times are the tar's
// even though entries were written into it after its header.
func TestDirectoryTimesSurviveTheirEntries(t *testing.T) {
	t1, t2, tf := time.Unix(1500000000, 0), time.Unix(1600000000, 5000), time.Unix(1650000000, 0)
	dest, err := applyAll(t, []ent{
		{Name: "d/", Type: tar.TypeDir, ModTime: t1},
		{Name: "d/sub/", Type: tar.TypeDir, ModTime: t2},
		{Name: "d/sub/f", Body: "x", ModTime: tf},
		{Name: "d/g", Body: "x", ModTime: tf},
		{Name: "d/.wh.nothing"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]time.Time{"d": t1, "d/sub": t2, "d/sub/f": tf} {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dest, name), &st); err != nil {
			t.Fatal(err)
		}
		if m, a := time.Unix(st.Mtim.Unix()), time.Unix(st.Atim.Unix()); !m.Equal(want) || !a.Equal(want) {
			t.Errorf("%s: mtime %v atime %v, want %v for both", name, m, a, want)
		}
	}
}

// cancelAfter reads r and cancels once n bytes have gone by.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	if c.n -= k; c.n <= 0 {
		c.cancel()
	}
	return k, err
}

// TestCancelStopsInsideALayer: a cancelled build stops between entries,
// not at the end of the layer.
func TestCancelStopsInsideALayer(t *testing.T) {
	var es []ent
	for i := range 200 {
		es = append(es, ocitest.File(fmt.Sprintf("f%03d", i), "x"))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dest := t.TempDir()
	// Each entry is a 512-byte header and a 512-byte block: cancel while
	// the third one is read.
	err := ApplyLayer(ctx, dest, &cancelAfter{r: bytes.NewReader(ocitest.Tar(t, es...)), n: 2*1024 + 1, cancel: cancel})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if n := len(tree(t, dest)); n > 3 {
		t.Fatalf("%d entries applied after the cancel", n)
	}
}

// BenchmarkApplyLayer applies a layer of 10,000 small files in 100
// directories, the shape of a language runtime's library tree.
func BenchmarkApplyLayer(b *testing.B) {
	var es []ent
	for d := range 100 {
		es = append(es, ocitest.Dir(fmt.Sprintf("usr/lib/d%02d/", d)))
		for f := range 100 {
			es = append(es, ocitest.File(fmt.Sprintf("usr/lib/d%02d/f%02d.py", d, f), "print(42)\n"))
		}
	}
	layer := ocitest.Tar(b, es...)
	b.SetBytes(int64(len(layer)))
	for b.Loop() {
		b.StopTimer()
		dest := b.TempDir()
		b.StartTimer()
		if err := ApplyLayer(context.Background(), dest, bytes.NewReader(layer)); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzApplyLayerStaysInTheRoot applies layers made of fuzzed entries and
// checks that nothing outside the root changed. A layer is lines of
// "TYPE NAME [LINK]": f file, d dir, l symlink, h hard link, p fifo, w
// whiteout of NAME, o opaque marker in NAME; $OUT in a name or link is a
// directory next to the root, $VICTIM a file in it.
func FuzzApplyLayerStaysInTheRoot(f *testing.F) {
	for _, seed := range []string{
		"l lib usr/lib\nf lib/x",
		"l evil $OUT\nf evil/victim",
		"l evil $OUT\nw evil/victim",
		"l evil $OUT\no evil",
		"l up ..\nf up/sentinel\nh hl up/sentinel",
		"l a ../../../..\nl b a$OUT\nf b/victim",
		"l evil $VICTIM\nf evil\nh hl evil",
		"d d\nw d/..\nw d/.",
		"l l1 l2\nl l2 l1\nf l1/x",
		"f a/../../x\nf /abs\nh h ../../x",
		"l evil $OUT/new/dir\nd evil/x\np evil/x/fifo",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, layer string) {
		parent := t.TempDir()
		outside := filepath.Join(parent, "outside")
		victim := filepath.Join(outside, "victim")
		sentinel := filepath.Join(parent, "sentinel")
		dest := filepath.Join(parent, "root")
		for _, d := range []string{outside, dest} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range []string{victim, sentinel} {
			if err := os.WriteFile(p, []byte("untouched"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		var es []ent
		for _, line := range strings.Split(layer, "\n") {
			line = strings.NewReplacer("$OUT", outside, "$VICTIM", victim).Replace(line)
			fields := strings.Fields(line)
			if len(fields) < 2 {
				continue
			}
			name, link := fields[1], ""
			if len(fields) > 2 {
				link = fields[2]
			}
			switch fields[0] {
			case "f":
				es = append(es, ocitest.File(name, "pwned"))
			case "d":
				es = append(es, ocitest.Dir(name))
			case "l":
				es = append(es, ocitest.Symlink(name, link))
			case "h":
				es = append(es, ent{Name: name, Type: tar.TypeLink, Link: link})
			case "p":
				es = append(es, ent{Name: name, Type: tar.TypeFifo})
			case "w":
				dir, base := filepath.Split(name)
				es = append(es, ent{Name: dir + ".wh." + base})
			case "o":
				es = append(es, ent{Name: name + "/.wh..wh..opq"})
			}
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range es {
			// Names the tar format cannot carry are not a test of ApplyLayer.
			h := &tar.Header{Name: e.Name, Typeflag: tar.TypeReg, Mode: 0o644}
			if e.Type != 0 {
				h.Typeflag, h.Linkname = e.Type, e.Link
			}
			if e.Type == 0 {
				h.Size = int64(len(e.Body))
			}
			if tw.WriteHeader(h) != nil {
				return
			}
			_, _ = io.WriteString(tw, e.Body)
		}
		_ = tw.Close()
		_ = ApplyLayer(context.Background(), dest, &buf)

		ents, _ := os.ReadDir(parent)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if strings.Join(names, ",") != "outside,root,sentinel" {
			t.Fatalf("next to the root: %v", names)
		}
		if ents, _ := os.ReadDir(outside); len(ents) != 1 {
			t.Fatalf("%d entries outside the root", len(ents))
		}
		for _, p := range []string{victim, sentinel} {
			var st syscall.Stat_t
			if b, _ := os.ReadFile(p); string(b) != "untouched" || syscall.Lstat(p, &st) != nil || st.Nlink != 1 || st.Mode&0o7777 != 0o644 {
				t.Fatalf("%s changed: %q, %d links, mode %o", p, b, st.Nlink, st.Mode&0o7777)
			}
		}
		if fi, _ := os.Stat(outside); fi.Mode().Perm() != 0o755 {
			t.Fatalf("outside is now %v", fi.Mode())
		}
	})
}
