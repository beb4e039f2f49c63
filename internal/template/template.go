// Package template finds and builds templates: read-only root filesystems in
// a host-wide directory that every sandbox of that template shares.
//
// Layout: <dir>/<name>/rootfs is the filesystem and <dir>/<name>/template.json
// records how it was built. A template is visible only once both exist: a
// build works in a staging directory and renames it into place.
package template

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// DefaultDir is the host-wide template directory.
const DefaultDir = "/var/lib/orkestr/templates"

// DirFromEnv returns $ORKESTR_TEMPLATE_DIR or DefaultDir.
func DirFromEnv() string {
	if d := os.Getenv("ORKESTR_TEMPLATE_DIR"); d != "" {
		return d
	}
	return DefaultDir
}

// MountPoints every rootfs must contain, so the runtime never has to create
// them inside the shared template.
var MountPoints = []string{"/agent", "/run/agent", "/workspace", "/tmp", "/proc", "/sys", "/dev", "/dev/pts", "/dev/shm"}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ErrNotBuilt means the template is known by name but not built here.
var ErrNotBuilt = errors.New("template is not built on this host")

// ErrInvalidName means the name could never be a template.
var ErrInvalidName = errors.New("invalid template name")

// ValidName reports whether name may name a template: lower-case letters,
// digits, '.', '_' and '-', at most 63 bytes, no path separators.
func ValidName(name string) error {
	if !nameRE.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("%w %q: use lower-case letters, digits, '.', '_' and '-' (at most 63)", ErrInvalidName, name)
	}
	return nil
}

// Record is template.json.
type Record struct {
	Name    string    `json:"name"`
	Source  string    `json:"source"` // e.g. "debootstrap bookworm minbase"
	BuiltAt time.Time `json:"built_at"`
}

// Store is a template directory.
type Store struct{ Dir string }

// Rootfs returns the rootfs path of a built template.
func (s Store) Rootfs(name string) (string, error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	dir := filepath.Join(s.Dir, name)
	if _, err := os.Stat(filepath.Join(dir, "template.json")); err != nil {
		return "", fmt.Errorf("%w: %q (build it with `orkestrd admin template build %s`)", ErrNotBuilt, name, name)
	}
	return filepath.Join(dir, "rootfs"), nil
}

// List returns every built template.
func (s Store) List() ([]Record, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, e := range ents {
		if !e.IsDir() || ValidName(e.Name()) != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.Dir, e.Name(), "template.json"))
		if err != nil {
			continue
		}
		var r Record
		if json.Unmarshal(b, &r) == nil {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Prepare makes a rootfs usable as a template: the mount points exist and
// /etc/resolv.conf and /etc/hostname are plain files.
func Prepare(rootfs string) error {
	for _, mp := range MountPoints {
		if err := os.MkdirAll(filepath.Join(rootfs, mp), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(rootfs, "tmp"), 0o1777|fs.ModeSticky); err != nil {
		return err
	}
	for name, content := range map[string]string{"etc/hostname": "sandbox\n", "etc/resolv.conf": ""} {
		p := filepath.Join(rootfs, name)
		if fi, err := os.Lstat(p); err == nil && fi.Mode().IsRegular() {
			continue
		}
		_ = os.Remove(p)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

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

// Build builds the named recipe unless it is already built (or force is
// set). Progress lines go to logw.
func (s Store) Build(ctx context.Context, name string, force bool, logw func(string)) error {
	r, ok := Recipes[name]
	if !ok {
		return fmt.Errorf("no offline recipe for template %q (known: %s)", name, strings.Join(recipeNames(), ", "))
	}
	if _, err := s.Rootfs(name); err == nil && !force {
		logw(fmt.Sprintf("template %s is already built in %s", name, s.Dir))
		return nil
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return err
	}
	stage, err := os.MkdirTemp(s.Dir, ".build-"+name+"-")
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
	if err := Prepare(rootfs); err != nil {
		return err
	}
	rec := Record{Name: name, Source: fmt.Sprintf("debootstrap --variant=%s %s %s", r.Variant, r.Suite, r.Mirror), BuiltAt: time.Now().UTC()}
	b, _ := json.MarshalIndent(rec, "", "  ")
	if err := os.WriteFile(filepath.Join(stage, "template.json"), b, 0o644); err != nil {
		return err
	}
	final := filepath.Join(s.Dir, name)
	old := final + ".old"
	_ = os.RemoveAll(old)
	if _, err := os.Stat(final); err == nil {
		// Running sandboxes keep their open files; new ones get the new tree.
		if err := os.Rename(final, old); err != nil {
			return err
		}
		defer os.RemoveAll(old)
	}
	if err := os.Rename(stage, final); err != nil {
		return err
	}
	logw(fmt.Sprintf("template %s built in %s (%.0fs)", name, final, time.Since(start).Seconds()))
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
