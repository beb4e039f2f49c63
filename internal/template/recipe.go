package template

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Recipe builds a rootfs offline (from the distribution's package mirror).
type Recipe struct {
	Name     string
	Suite    string   // e.g. "bookworm"
	Variant  string   // e.g. "minbase"
	Mirror   string   // e.g. "http://deb.debian.org/debian"
	Packages []string // extra packages
}

// Recipes are the offline templates `make setup` builds.
var Recipes = map[string]Recipe{
	"debian-12": {Name: "debian-12", Suite: "bookworm", Variant: "minbase", Mirror: "http://deb.debian.org/debian"},
}

// BuildRecipe builds the named offline recipe unless it is already built
// (or force is set). Progress lines go to logw.
func (s Store) BuildRecipe(ctx context.Context, name string, force bool, logw func(string)) error {
	r, ok := Recipes[name]
	if !ok {
		return fmt.Errorf("no offline recipe for template %q (known: %s)", name, strings.Join(recipeNames(), ", "))
	}
	if _, err := s.Rootfs(name); err == nil && !force {
		logw(fmt.Sprintf("template %s is already built in %s", name, s.Dir))
		return nil
	}
	stage, err := s.Stage(name)
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	rootfs := filepath.Join(stage, "rootfs")
	args := []string{"--variant=" + r.Variant}
	if len(r.Packages) > 0 {
		args = append(args, "--include="+strings.Join(r.Packages, ","))
	}
	args = append(args, r.Suite, rootfs, r.Mirror)
	logw(fmt.Sprintf("building template %s: debootstrap %s", name, strings.Join(args, " ")))
	start := time.Now()
	cmd := exec.CommandContext(ctx, "debootstrap", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("debootstrap for %s failed: %w: %s", name, err, lastLines(string(out), 8))
	}
	// Package caches are dead weight in a template every sandbox shares.
	_ = os.RemoveAll(filepath.Join(rootfs, "var/cache/apt/archives"))
	_ = os.MkdirAll(filepath.Join(rootfs, "var/cache/apt/archives/partial"), 0o755)
	_ = os.RemoveAll(filepath.Join(rootfs, "var/lib/apt/lists"))
	_ = os.MkdirAll(filepath.Join(rootfs, "var/lib/apt/lists/partial"), 0o755)
	rec := Record{Name: name, Source: fmt.Sprintf("debootstrap --variant=%s %s %s", r.Variant, r.Suite, r.Mirror), BuiltAt: time.Now().UTC()}
	if err := s.Install(stage, rec); err != nil {
		return err
	}
	logw(fmt.Sprintf("template %s built in %s (%.0fs)", name, filepath.Join(s.Dir, name), time.Since(start).Seconds()))
	return nil
}

func recipeNames() []string {
	var out []string
	for n := range Recipes {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
