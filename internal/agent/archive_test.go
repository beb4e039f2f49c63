package agent

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

	"github.com/orkestr-eu/orkestr/internal/agent/wire"
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
func extractInto(t *testing.T, archive []byte, limit int64) (parent, dir string, res wire.Extracted, err error) {
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
	res, err = extract(root, bytes.NewReader(archive), limit)
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
		{"traversal", tarOf(t, tentry{name: "../evil", typ: tar.TypeReg, body: "x"}), wire.CodeInvalidArchive, "climbs out"},
		{"deep traversal", tarOf(t, tentry{name: "a/../../evil", typ: tar.TypeReg, body: "x"}), wire.CodeInvalidArchive, "climbs out"},
		{"absolute", tarOf(t, tentry{name: "/evil", typ: tar.TypeReg, body: "x"}), wire.CodeInvalidArchive, "absolute"},
		{"char device", tarOf(t, tentry{name: "null", typ: tar.TypeChar}), wire.CodeInvalidArchive, "device"},
		{"block device", tarOf(t, tentry{name: "sda", typ: tar.TypeBlock}), wire.CodeInvalidArchive, "device"},
		{"fifo", tarOf(t, tentry{name: "p", typ: tar.TypeFifo}), wire.CodeInvalidArchive, "fifo"},
		{"symlink out then file", tarOf(t, tentry{name: "out", typ: tar.TypeSymlink, link: ".."}, tentry{name: "out/evil", typ: tar.TypeReg, body: "x"}), wire.CodeInvalidArchive, "outside the target"},
		{"absolute symlink then file", tarOf(t, tentry{name: "out", typ: tar.TypeSymlink, link: "/tmp"}, tentry{name: "out/evil", typ: tar.TypeReg, body: "x"}), wire.CodeInvalidArchive, "outside the target"},
		{"symlink out then dir", tarOf(t, tentry{name: "out", typ: tar.TypeSymlink, link: "../"}, tentry{name: "out/sub/", typ: tar.TypeDir}), wire.CodeInvalidArchive, "outside the target"},
		{"hard link out", tarOf(t, tentry{name: "h", typ: tar.TypeLink, link: "../secret"}), wire.CodeInvalidArchive, "climbs out"},
		{"not a tar", []byte(strings.Repeat("garbage!", 200)), wire.CodeInvalidArchive, "not a valid tar"},
		{"bad gzip", []byte{0x1f, 0x8b, 0, 0, 1, 2, 3}, wire.CodeInvalidArchive, "gzip"},
		{"over the limit", tarOf(t, tentry{name: "a", typ: tar.TypeReg, body: strings.Repeat("a", 600)}, tentry{name: "b", typ: tar.TypeReg, body: strings.Repeat("b", 600)}), wire.CodeTooLarge, "expands past"},
	}
	for _, tc := range cases {
		parent, _, _, err := extractInto(t, tc.archive, 1000)
		var ae *archiveError
		if !errors.As(err, &ae) || ae.code != tc.code || !strings.Contains(ae.msg, tc.msg) {
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

func TestFrameSourceEndsOnlyAtItsEndFrame(t *testing.T) {
	var buf bytes.Buffer
	w := wire.NewWriter(&buf)
	_ = w.Frame(wire.KindData, []byte("abc"))
	// No KindEOF: the host went away mid-upload.
	src := &frameSource{r: wire.NewReader(&buf)}
	b, err := io.ReadAll(src)
	if string(b) != "abc" || !errors.Is(err, errHostGone) {
		t.Fatalf("%q %v: a cut upload must not read as a complete one", b, err)
	}
}
