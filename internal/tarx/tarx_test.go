package tarx

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

type tentry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func tarOf(t *testing.T, es ...tentry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: mode, Linkname: e.link}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// extractInto extracts archive into a fresh directory inside a fresh
// parent (so that escapes would land in the parent, where they are looked
// for) and returns both.
func extractInto(t *testing.T, archive []byte, limit int64) (parent, dir string, res Result, err error) {
	t.Helper()
	parent = t.TempDir()
	dir = filepath.Join(parent, "target")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	res, err = Extract(root, bytes.NewReader(archive), limit)
	return parent, dir, res, err
}

func TestExtractKeepsModesLinksAndContent(t *testing.T) {
	plain := tarOf(t,
		tentry{name: "d/", typ: tar.TypeDir, mode: 0o750},
		tentry{name: "d/x.sh", typ: tar.TypeReg, mode: 0o4755, body: "#!/bin/sh\n"},
		tentry{name: "d/s", typ: tar.TypeReg, mode: 0o600, body: "\xff\x00"},
		tentry{name: "d/l", typ: tar.TypeSymlink, link: "x.sh"},
		tentry{name: "d/abs", typ: tar.TypeSymlink, link: "/etc/passwd"},
		tentry{name: "d/h", typ: tar.TypeLink, link: "d/s"},
		tentry{name: "e/f/g", typ: tar.TypeReg, body: "g"},
		tentry{name: "e/f/g", typ: tar.TypeReg, body: "replaced"},
	)
	var gz, zs bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(plain)
	_ = zw.Close()
	zsw, _ := zstd.NewWriter(&zs)
	_, _ = zsw.Write(plain)
	_ = zsw.Close()
	for name, archive := range map[string][]byte{"tar": plain, "gzip": gz.Bytes(), "zstd": zs.Bytes()} {
		_, dir, res, err := extractInto(t, archive, 0)
		if err != nil || res.Entries != 8 {
			t.Fatalf("%s: %+v %v", name, res, err)
		}
		check := func(p string, mode os.FileMode, content string) {
			t.Helper()
			fi, err := os.Lstat(filepath.Join(dir, p))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if fi.Mode()&(os.ModePerm|os.ModeSetuid) != mode {
				t.Errorf("%s: %s has mode %v, want %v", name, p, fi.Mode(), mode)
			}
			if content != "" {
				b, _ := os.ReadFile(filepath.Join(dir, p))
				if string(b) != content || fi.Size() != int64(len(content)) {
					t.Errorf("%s: %s = %q (size %d), want %q", name, p, b, fi.Size(), content)
				}
			}
		}
		check("d", 0o750, "")
		check("d/x.sh", 0o755|os.ModeSetuid, "#!/bin/sh\n")
		check("d/s", 0o600, "\xff\x00")
		check("d/h", 0o600, "\xff\x00")
		check("e/f/g", 0o644, "replaced")
		for l, want := range map[string]string{"d/l": "x.sh", "d/abs": "/etc/passwd"} {
			if got, err := os.Readlink(filepath.Join(dir, l)); err != nil || got != want {
				t.Errorf("%s: %s -> %q %v, want %q", name, l, got, err, want)
			}
		}
	}
}

func TestExtractRefusesHostileEntries(t *testing.T) {
	cases := []struct {
		name    string
		archive []byte
		code    string
		msg     string
	}{
		{"traversal", tarOf(t, tentry{name: "../evil", typ: tar.TypeReg, body: "x"}), CodeInvalid, "climbs out"},
		{"deep traversal", tarOf(t, tentry{name: "a/../../evil", typ: tar.TypeReg, body: "x"}), CodeInvalid, "climbs out"},
		{"absolute", tarOf(t, tentry{name: "/evil", typ: tar.TypeReg, body: "x"}), CodeInvalid, "absolute"},
		{"char device", tarOf(t, tentry{name: "null", typ: tar.TypeChar}), CodeInvalid, "device"},
		{"block device", tarOf(t, tentry{name: "sda", typ: tar.TypeBlock}), CodeInvalid, "device"},
		{"fifo", tarOf(t, tentry{name: "p", typ: tar.TypeFifo}), CodeInvalid, "fifo"},
		{"symlink out then file", tarOf(t, tentry{name: "out", typ: tar.TypeSymlink, link: ".."}, tentry{name: "out/evil", typ: tar.TypeReg, body: "x"}), CodeInvalid, "outside the target"},
		{"absolute symlink then file", tarOf(t, tentry{name: "out", typ: tar.TypeSymlink, link: "/tmp"}, tentry{name: "out/evil", typ: tar.TypeReg, body: "x"}), CodeInvalid, "outside the target"},
		{"symlink out then dir", tarOf(t, tentry{name: "out", typ: tar.TypeSymlink, link: "../"}, tentry{name: "out/sub/", typ: tar.TypeDir}), CodeInvalid, "outside the target"},
		{"hard link out", tarOf(t, tentry{name: "h", typ: tar.TypeLink, link: "../secret"}), CodeInvalid, "climbs out"},
		{"not a tar", []byte(strings.Repeat("garbage!", 200)), CodeInvalid, "not a valid tar"},
		{"bad gzip", []byte{0x1f, 0x8b, 0, 0, 1, 2, 3}, CodeInvalid, "gzip"},
		{"over the limit", tarOf(t, tentry{name: "a", typ: tar.TypeReg, body: strings.Repeat("a", 600)}, tentry{name: "b", typ: tar.TypeReg, body: strings.Repeat("b", 600)}), CodeTooLarge, "expands past"},
	}
	for _, tc := range cases {
		parent, _, _, err := extractInto(t, tc.archive, 1000)
		var ae *Error
		if !errors.As(err, &ae) || ae.Code != tc.code || !strings.Contains(ae.Msg, tc.msg) {
			t.Errorf("%s: %v", tc.name, err)
		}
		// Nothing beside the target: escapes would have landed here.
		ents, _ := os.ReadDir(parent)
		if len(ents) != 1 || ents[0].Name() != "target" {
			t.Errorf("%s: the parent holds %v", tc.name, ents)
		}
		if _, err := os.Stat(filepath.Join(parent, "secret")); err == nil {
			t.Errorf("%s: a link to the parent was made", tc.name)
		}
	}
}

func TestExtractReportsAFailedSourceAsSuch(t *testing.T) {
	archive := tarOf(t, tentry{name: "a", typ: tar.TypeReg, body: strings.Repeat("a", 4096)})
	cut := errors.New("upload cut")
	root, err := os.OpenRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	src := io.MultiReader(bytes.NewReader(archive[:1000]), failing{cut})
	if _, err := Extract(root, src, 0); !errors.Is(err, cut) {
		t.Fatalf("got %v, want the source's error", err)
	}
}

type failing struct{ err error }

func (f failing) Read([]byte) (int, error) { return 0, f.err }

// TestExtractManyDirectoriesAndReplacedFiles: more directories than the
// cache holds, entered again after it was emptied, a file given twice (the
// later one wins) and a link replaced by a file that does not follow it.
func TestExtractManyDirectoriesAndReplacedFiles(t *testing.T) {
	var es []tentry
	for round := range 2 {
		for i := range 3 * maxCachedDirs {
			es = append(es, tentry{name: filepath.Join("d", string(rune('a'+i%26)), strings.Repeat("x", 1+i/26), "f"+string(rune('0'+round))), typ: tar.TypeReg, body: "r" + string(rune('0'+round))})
		}
	}
	es = append(es,
		tentry{name: "twice", typ: tar.TypeReg, body: "first"},
		tentry{name: "twice", typ: tar.TypeReg, body: "second", mode: 0o4755},
		tentry{name: "link", typ: tar.TypeSymlink, link: "../outside"},
		tentry{name: "link", typ: tar.TypeReg, body: "a file now"},
	)
	parent, dir, res, err := extractInto(t, tarOf(t, es...), 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Entries != len(es) {
		t.Fatalf("%d entries, want %d", res.Entries, len(es))
	}
	for _, e := range es[:6*maxCachedDirs] {
		if b, err := os.ReadFile(filepath.Join(dir, e.name)); err != nil || string(b) != e.body {
			t.Fatalf("%s: %q %v", e.name, b, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "twice")); string(b) != "second" {
		t.Fatalf("twice: %q", b)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "twice")); fi.Mode()&os.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 {
		t.Fatalf("twice: mode %v", fi.Mode())
	}
	if fi, err := os.Lstat(filepath.Join(dir, "link")); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("link replaced by a file: %v %v", fi, err)
	}
	if _, err := os.Lstat(filepath.Join(parent, "outside")); err == nil {
		t.Fatal("the file was written through the link it replaced")
	}
}
