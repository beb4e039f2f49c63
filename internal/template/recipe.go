package template

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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

	// Debian's CPython 3.11 with pip and venv, `python` being python3. The
	// set is small on purpose (80 MB over debian-12, a third of it compiled
	// bytecode): pip and venv are what "a Python sandbox" means, and
	// ca-certificates is what pip needs for HTTPS once sandboxes have a
	// network. Left out: curl and git (no sandbox has a network yet, and
	// git brings perl, about 70 MB), python3-dev and build-essential
	// (headers are no use without a compiler, and gcc is over 200 MB).
	//
	// PEP 668's EXTERNALLY-MANAGED marker is removed, so `pip install`
	// works outside a venv as it does on E2B or Modal: a sandbox is
	// disposable, and Debian's pip installs into /usr/local, leaving the
	// files dpkg owns alone. /etc/pip.conf silences pip's warning about
	// running as root and its check for a newer pip.
	"python-3.11": {Name: "python-3.11", Suite: "bookworm", Variant: "minbase", Mirror: debianMirror,
		Packages: []string{"python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates"},
		Finish: func(rootfs string) error {
			if err := removeIfExists(filepath.Join(rootfs, "usr/lib/python3.11/EXTERNALLY-MANAGED")); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(rootfs, "etc/pip.conf"),
				[]byte("[global]\nroot-user-action = ignore\ndisable-pip-version-check = true\n"), 0o644)
		}},

	// Node 22 and npm 10 from the npm registry on a copy of debian-12: the
	// official Linux build is published there as node-linux-<arch>. The
	// newest release of each major is resolved at build time and recorded
	// in template.json's source.
	"node-22": {Name: "node-22", Base: "debian-12",
		NPM: []NPMPackage{
			{Name: "node-linux-" + nodeArch, Major: 22, Dest: "usr/local/lib/nodejs"},
			{Name: "npm", Major: 10, Dest: "usr/local/lib/node_modules/npm"},
		},
		Finish: func(rootfs string) error {
			// Node ships OpenSSL's headers (for native addons) configured
			// for twenty platforms, 60 MB; keep this platform's only.
			archs := filepath.Join(rootfs, "usr/local/lib/nodejs/include/node/openssl/archs")
			if err := removeAllBut(archs, opensslArch); err != nil {
				return err
			}
			return symlinks(rootfs, map[string]string{
				"usr/local/bin/node": "../lib/nodejs/bin/node",
				"usr/local/bin/npm":  "../lib/node_modules/npm/bin/npm-cli.js",
				"usr/local/bin/npx":  "../lib/node_modules/npm/bin/npx-cli.js",
			})
		}},
}

// nodeArch and opensslArch name this machine's architecture as Node's
// builds and OpenSSL's configurations do.
var nodeArch, opensslArch = func() (string, string) {
	if runtime.GOARCH == "arm64" {
		return "arm64", "linux-aarch64"
	}
	return "x64", "linux-x86_64"
}()

const debianMirror = "http://deb.debian.org/debian"

// BuildRecipe builds the named offline recipe unless it is already built
// (or force is set). Progress lines go to logw.
func (s Store) BuildRecipe(ctx context.Context, name string, force bool, logw func(string)) error {
	r, ok := Recipes[name]
	if !ok {
		return fmt.Errorf("no offline recipe for template %q (known: %s)", name, strings.Join(recipeNames(), ", "))
	}
	if rec, err := s.Record(name); err == nil && !force {
		if rec.Layout >= CurrentLayout {
			logw(fmt.Sprintf("template %s is already built in %s", name, s.Dir))
			return nil
		}
		logw(fmt.Sprintf("template %s was built before the sandbox user existed; rebuilding it", name))
	}
	if r.Base != "" {
		if err := s.BuildRecipe(ctx, r.Base, false, logw); err != nil {
			return fmt.Errorf("base %s of %s: %w", r.Base, name, err)
		}
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
		if err := debootstrap(ctx, args, logw); err != nil {
			return fmt.Errorf("debootstrap for %s failed: %w", name, err)
		}
		src := fmt.Sprintf("debootstrap --variant=%s %s %s", r.Variant, r.Suite, r.Mirror)
		if len(r.Packages) > 0 {
			src += " +" + strings.Join(r.Packages, ",")
		}
		sources = append(sources, src)
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
	// Package caches are dead weight in a template every sandbox shares
	// (and a base template may have been built before they were dropped).
	if err := dropAPTCaches(rootfs); err != nil {
		return fmt.Errorf("template %s: %w", name, err)
	}
	rec := Record{Name: name, Source: strings.Join(sources, " + "), BuiltAt: time.Now().UTC()}
	if err := s.Install(stage, rec); err != nil {
		return err
	}
	logw(fmt.Sprintf("template %s built in %s (%.0fs)", name, filepath.Join(s.Dir, name), time.Since(start).Seconds()))
	return nil
}

// debootstrap runs debootstrap, passing a readable summary of its output to
// logw: its phases, how many packages it has fetched, its warnings.
func debootstrap(ctx context.Context, args []string, logw func(string)) error {
	cmd := exec.CommandContext(ctx, "debootstrap", args...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	// Once debootstrap is gone (or killed), stop waiting for anything it
	// started that still holds its output open.
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		pw.Close()
		done <- err
	}()
	var p debootstrapProgress
	var tail []string
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		line := sc.Text()
		if tail = append(tail, line); len(tail) > 8 {
			tail = tail[1:]
		}
		if msg, ok := p.line(line); ok {
			logw("debootstrap: " + msg)
		}
	}
	_, _ = io.Copy(io.Discard, pr) // after an overlong line
	if err := <-done; err != nil {
		return fmt.Errorf("%w: %s", err, strings.Join(tail, " | "))
	}
	return nil
}

// debootstrapProgress condenses debootstrap's one or two lines per package
// into phases and a count of packages fetched every 20.
type debootstrapProgress struct{ fetched int }

func (p *debootstrapProgress) line(line string) (string, bool) {
	msg, info := strings.CutPrefix(line, "I: ")
	if !info {
		// W: and E: lines, and anything debootstrap's tools print.
		return line, strings.TrimSpace(line) != ""
	}
	verb, rest, _ := strings.Cut(strings.TrimSpace(msg), " ")
	switch verb {
	case "Retrieving":
		if rest == "InRelease" || rest == "Release" || rest == "Packages" {
			return msg, true
		}
		if p.fetched++; p.fetched%20 == 0 {
			return fmt.Sprintf("retrieved %d packages", p.fetched), true
		}
		return "", false
	case "Validating", "Extracting", "Unpacking", "Configuring":
		// Per package, except the phase lines ("Unpacking the base
		// system...", "Configuring required packages...").
		if strings.HasSuffix(rest, "packages...") || strings.HasPrefix(rest, "the ") {
			return msg, true
		}
		return "", false
	}
	return msg, true
}

// dropAPTCaches empties apt's package cache and lists in a Debian tree;
// apt recreates what it needs.
func dropAPTCaches(rootfs string) error {
	if _, err := os.Stat(filepath.Join(rootfs, "var/lib/dpkg")); err != nil {
		return nil
	}
	for _, d := range []string{"var/cache/apt", "var/lib/apt/lists"} {
		if err := os.RemoveAll(filepath.Join(rootfs, d)); err != nil {
			return err
		}
	}
	for _, d := range []string{"var/cache/apt/archives/partial", "var/lib/apt/lists/partial"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// removeAllBut removes every entry of dir except keep; a missing dir is
// left alone.
func removeAllBut(dir, keep string) error {
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Name() != keep {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
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
