package template

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// TestRecipesAreConsistent: every recipe is named after its key, starts
// either from debootstrap or from another recipe (no cycles), and the
// Makefile builds them all, every base before the templates on it.
func TestRecipesAreConsistent(t *testing.T) {
	for name, r := range Recipes {
		if r.Name != name || ValidName(name) != nil {
			t.Errorf("recipe %q is named %q", name, r.Name)
		}
		if r.Base != "" {
			if r.Suite != "" || r.Mirror != "" || len(r.Packages) > 0 {
				t.Errorf("recipe %s has a base and debootstrap settings: one or the other", name)
			}
			seen := map[string]bool{name: true}
			for b := r.Base; b != ""; b = Recipes[b].Base {
				if _, ok := Recipes[b]; !ok {
					t.Fatalf("recipe %s: base %s is no recipe", name, b)
				}
				if seen[b] {
					t.Fatalf("recipe %s: its bases loop at %s", name, b)
				}
				seen[b] = true
			}
		} else if r.Suite == "" || r.Mirror == "" || r.Variant == "" {
			t.Errorf("recipe %s has neither a base nor a suite, variant and mirror", name)
		}
	}
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^OFFLINE_TEMPLATES\s*:=\s*(.*)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("the Makefile has no OFFLINE_TEMPLATES")
	}
	listed := strings.Fields(string(m[1]))
	if !reflect.DeepEqual(sortedCopy(listed), recipeNames()) {
		t.Errorf("Makefile OFFLINE_TEMPLATES = %v, recipes are %v", listed, recipeNames())
	}
	if len(listed) == 0 || listed[0] != "debian-12" {
		t.Errorf("OFFLINE_TEMPLATES should start with debian-12: %v", listed)
	}
	pos := map[string]int{}
	for i, n := range listed {
		pos[n] = i
	}
	for _, n := range listed {
		if b := Recipes[n].Base; b != "" && pos[b] > pos[n] {
			t.Errorf("OFFLINE_TEMPLATES builds %s before its base %s", n, b)
		}
	}
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

// addRecipe registers a recipe for one test.
func addRecipe(t *testing.T, r Recipe) {
	t.Helper()
	if _, ok := Recipes[r.Name]; ok {
		t.Fatalf("recipe %s exists", r.Name)
	}
	Recipes[r.Name] = r
	t.Cleanup(func() { delete(Recipes, r.Name) })
}

// fakeBase installs a tiny Debian-looking template named name, with apt
// caches a build on it must not carry along.
func fakeBase(t *testing.T, s Store, name string) string {
	t.Helper()
	stage, err := s.Stage(name)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(stage, "rootfs")
	for p, body := range map[string]string{
		"etc/os-release":                   "ID=fake\n",
		"var/lib/dpkg/status":              "",
		"var/lib/apt/lists/deb_Packages":   "lots of metadata",
		"var/cache/apt/pkgcache.bin":       "a cache",
		"var/cache/apt/archives/bash_.deb": "a package",
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Install(stage, Record{Name: name, Source: "test"}); err != nil {
		t.Fatal(err)
	}
	rootfs, err := s.Rootfs(name)
	if err != nil {
		t.Fatal(err)
	}
	return rootfs
}

// TestBuildRecipeOnABase builds a recipe on another template with a
// package from a (fake) npm registry, as node-22 is built.
func TestBuildRecipeOnABase(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	baseRoot := fakeBase(t, s, "test-base")
	// The base's own recipe would run debootstrap: it must not, as the
	// base is built.
	addRecipe(t, Recipe{Name: "test-base", Suite: "nosuch", Variant: "minbase", Mirror: "http://127.0.0.1:1/"})
	addRecipe(t, Recipe{Name: "test-tool", Base: "test-base",
		NPM: []NPMPackage{{Name: "tool", Major: 22, Dest: "usr/local/lib/tool"}},
		Finish: func(rootfs string) error {
			return symlinks(rootfs, map[string]string{"usr/local/bin/tool": "../lib/tool/bin/tool"})
		}})
	fakeNPM(t, "tool", map[string][]byte{
		"22.1.0": tgz(t, map[string]string{"package/bin/tool": "22.1.0"}),
		"22.3.1": tgz(t, map[string]string{"package/bin/tool": "22.3.1"}),
		"23.0.0": tgz(t, map[string]string{"package/bin/tool": "23.0.0"}),
	}, false)

	var log []string
	if err := s.BuildRecipe(context.Background(), "test-tool", false, func(l string) { log = append(log, l) }); err != nil {
		t.Fatalf("build: %v\n%s", err, strings.Join(log, "\n"))
	}
	rec, err := s.Record("test-tool")
	if err != nil {
		t.Fatal(err)
	}
	if want := "template test-base + npm tool@22.3.1"; rec.Source != want {
		t.Errorf("source %q, want %q", rec.Source, want)
	}
	rootfs, _ := s.Rootfs("test-tool")
	if b, err := os.ReadFile(filepath.Join(rootfs, "usr/local/bin/tool")); err != nil || string(b) != "22.3.1" {
		t.Errorf("usr/local/bin/tool: %q %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(rootfs, "etc/os-release")); err != nil || string(b) != "ID=fake\n" {
		t.Errorf("the base's files were not copied: %q %v", b, err)
	}
	for _, gone := range []string{"var/lib/apt/lists/deb_Packages", "var/cache/apt/pkgcache.bin", "var/cache/apt/archives/bash_.deb"} {
		if _, err := os.Stat(filepath.Join(rootfs, gone)); !os.IsNotExist(err) {
			t.Errorf("%s was carried over from the base", gone)
		}
	}
	for _, kept := range []string{"var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "workspace", "tmp"} {
		if fi, err := os.Stat(filepath.Join(rootfs, kept)); err != nil || !fi.IsDir() {
			t.Errorf("%s is missing: %v", kept, err)
		}
	}
	if _, err := os.Stat(filepath.Join(baseRoot, "var/cache/apt/pkgcache.bin")); err != nil {
		t.Error("the build changed its base")
	}
	if fi, err := os.Stat(filepath.Join(s.Dir, "test-tool")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("template directory mode %v %v, want 0755", fi.Mode(), err)
	}
	if ents, _ := filepath.Glob(filepath.Join(s.Dir, ".build-*")); len(ents) != 0 {
		t.Errorf("stages left behind: %v", ents)
	}
	if !strings.Contains(strings.Join(log, "\n"), "tool@22.3.1") {
		t.Errorf("the log does not name the version:\n%s", strings.Join(log, "\n"))
	}

	// Built: a second build does nothing; a forced one rebuilds.
	log = nil
	if err := s.BuildRecipe(context.Background(), "test-tool", false, func(l string) { log = append(log, l) }); err != nil || len(log) != 1 || !strings.Contains(log[0], "already built") {
		t.Fatalf("second build: %v %v", err, log)
	}
}

// TestBuildRecipeFailureInstallsNothing: a download that does not match
// its integrity fails the build, and neither a template nor a stage is
// left.
func TestBuildRecipeFailureInstallsNothing(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	fakeBase(t, s, "test-base")
	addRecipe(t, Recipe{Name: "test-base", Suite: "nosuch", Variant: "minbase", Mirror: "http://127.0.0.1:1/"})
	addRecipe(t, Recipe{Name: "test-tool", Base: "test-base", NPM: []NPMPackage{{Name: "tool", Major: 22, Dest: "opt/tool"}}})
	fakeNPM(t, "tool", map[string][]byte{"22.0.0": tgz(t, map[string]string{"package/x": "x"})}, true)
	err := s.BuildRecipe(context.Background(), "test-tool", false, func(string) {})
	if err == nil || !strings.Contains(err.Error(), "integrity") {
		t.Fatalf("got %v, want an integrity error", err)
	}
	if _, err := s.Rootfs("test-tool"); err == nil {
		t.Error("a failed build is installed")
	}
	if ents, _ := filepath.Glob(filepath.Join(s.Dir, ".build-*")); len(ents) != 0 {
		t.Errorf("stages left behind: %v", ents)
	}
}

func TestBuildRecipeUnknown(t *testing.T) {
	err := Store{Dir: t.TempDir()}.BuildRecipe(context.Background(), "nosuch", false, func(string) {})
	if err == nil || !strings.Contains(err.Error(), "debian-12") {
		t.Fatalf("got %v, want an error listing the recipes", err)
	}
}

// TestDebootstrapProgress: debootstrap's lines per package become a count;
// its phases and warnings pass through.
func TestDebootstrapProgress(t *testing.T) {
	in := []string{
		"I: Retrieving InRelease ",
		"I: Checking Release signature",
		"I: Retrieving Packages ",
		"I: Validating Packages ",
		"I: Resolving dependencies of required packages...",
	}
	for i := 0; i < 45; i++ {
		in = append(in, "I: Retrieving pkg 1.0", "I: Validating pkg 1.0")
	}
	in = append(in,
		"W: a warning",
		"I: Extracting pkg...",
		"I: Unpacking required packages...",
		"I: Unpacking pkg...",
		"I: Configuring pkg...",
		"I: Configuring the base system...",
		"",
		"I: Base system installed successfully.",
	)
	var p debootstrapProgress
	var got []string
	for _, l := range in {
		if msg, ok := p.line(l); ok {
			got = append(got, msg)
		}
	}
	want := []string{
		"Retrieving InRelease ",
		"Checking Release signature",
		"Retrieving Packages ",
		"Resolving dependencies of required packages...",
		"retrieved 20 packages",
		"retrieved 40 packages",
		"W: a warning",
		"Unpacking required packages...",
		"Configuring the base system...",
		"Base system installed successfully.",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestRemoveAllBut(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"linux-x86_64/asm", "darwin64-arm64-cc", "VC-WIN64A"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := removeAllBut(dir, "linux-x86_64"); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "linux-x86_64" {
		t.Fatalf("left %v", ents)
	}
	if err := removeAllBut(filepath.Join(dir, "missing"), "x"); err != nil {
		t.Fatalf("a missing directory: %v", err)
	}
}
