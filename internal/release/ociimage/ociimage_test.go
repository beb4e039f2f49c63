package ociimage

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// stage writes a release tree whose files are small stand-ins: Build only
// packs them (make dist's test, internal/release, runs the real ones).
func stage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range append([]string{"config.yaml", "LICENSE", "NOTICE", "THIRD_PARTY_LICENSES.csv", "THIRD_PARTY_LICENSES.runsc.csv"}, prefixed("bin/", Binaries)...) {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func prefixed(p string, names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = p + n
	}
	return out
}

func TestBuildIsReproducible(t *testing.T) {
	dir := stage(t)
	o := Options{Version: "1.2.3", Commit: "abc", Created: time.Unix(1700000000, 0), Stages: []Stage{{"amd64", dir}, {"arm64", dir}}}
	a, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	// A second build, later, with other file times, is the same image.
	for _, f := range Binaries {
		_ = os.Chtimes(filepath.Join(dir, "bin", f), time.Now(), time.Now())
	}
	b, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Errorf("two builds of the same stage: %s and %s", da, db)
	}
	o.Version = "1.2.4"
	c, _ := Build(o)
	if dc, _ := c.Digest(); dc == da {
		t.Error("another version has the same digest")
	}
}

func TestBuildRefusesBadStages(t *testing.T) {
	good := stage(t)
	missing := stage(t)
	_ = os.Remove(filepath.Join(missing, "bin", "runsc"))
	link := stage(t)
	_ = os.Remove(filepath.Join(link, "bin", "orkestrd"))
	_ = os.Symlink("/etc/shadow", filepath.Join(link, "bin", "orkestrd"))
	dirAsFile := stage(t)
	_ = os.Remove(filepath.Join(dirAsFile, "bin", "orkestr"))
	_ = os.Mkdir(filepath.Join(dirAsFile, "bin", "orkestr"), 0o755)
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{Version: "1", Stages: []Stage{{"riscv64", good}}}, `architecture "riscv64" is not supported`},
		{Options{Version: "1", Stages: []Stage{{"amd64", good}, {"amd64", good}}}, "given twice"},
		{Options{Version: "1"}, "at least one stage"},
		{Options{Stages: []Stage{{"amd64", good}}}, "a version"},
		{Options{Version: "1", Stages: []Stage{{"amd64", missing}}}, "runsc of linux/amd64"},
		{Options{Version: "1", Stages: []Stage{{"amd64", link}}}, "not a regular file"},
		{Options{Version: "1", Stages: []Stage{{"amd64", dirAsFile}}}, "not a regular file"},
		{Options{Version: "1", Stages: []Stage{{"amd64", good}}, CABundle: "/nonexistent/ca.pem"}, "ca.pem"},
	} {
		_, err := Build(c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", c.o, err, c.want)
		}
	}
}
