// Package template finds and builds templates: read-only root filesystems in
// a host-wide directory that every sandbox of that template shares.
//
// Layout: <dir>/<name>/rootfs is the filesystem and <dir>/<name>/template.json
// records how it was built. A template is visible only once both exist: a
// build works in a staging directory and renames it into place.
package template

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
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
	// Digest is the image's manifest digest for templates built from an
	// OCI image.
	Digest string `json:"digest,omitempty"`
	// Env is the image's environment (KEY=VALUE), which every command in
	// a sandbox of this template starts with.
	Env []string `json:"env,omitempty"`
	// Rootfs, relative to the store, is where the filesystem is when it is
	// not <name>/rootfs: an image's filesystem is unpacked once under
	// .images/ and shared by every template built from that image.
	Rootfs string `json:"rootfs,omitempty"`
	// Layout is the version of what Prepare puts into every rootfs
	// (CurrentLayout when built); an offline recipe built with an older
	// one is rebuilt by the next `template build`.
	Layout int `json:"layout,omitempty"`
}

// CurrentLayout: 1 mount points, hostname and resolv.conf; 2 the
// unprivileged user "user".
const CurrentLayout = 2

// Store is a template directory.
type Store struct{ Dir string }

// Rootfs returns the rootfs path of a built template.
func (s Store) Rootfs(name string) (string, error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	dir := filepath.Join(s.Dir, name)
	b, err := os.ReadFile(filepath.Join(dir, "template.json"))
	if err != nil {
		return "", fmt.Errorf("%w: %q (build it with `orkestrd admin template build %s`)", ErrNotBuilt, name, name)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return "", fmt.Errorf("template %s: corrupt template.json (rebuild it with `orkestrd admin template build --force %s`): %w", name, name, err)
	}
	if r.Rootfs == "" {
		return filepath.Join(dir, "rootfs"), nil
	}
	p := filepath.Join(s.Dir, filepath.Clean("/"+r.Rootfs))
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%w: %q (its filesystem %s is missing; rebuild it with `orkestrd admin template build --force %s`)", ErrNotBuilt, name, p, name)
	}
	return p, nil
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

// Prepare makes a rootfs usable as a template: the mount points are
// directories and /etc/resolv.conf and /etc/hostname are plain files.
//
// The rootfs may come from an untrusted image, so everything is done
// through os.Root: a symlink that leaves the root fails the build instead
// of being followed, and a mount point or file that is a symlink (or
// anything else of the wrong kind) is replaced, never written through.
func Prepare(rootfs string) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, mp := range MountPoints {
		if err := replaceUnless(root, mp[1:], fs.FileInfo.IsDir); err != nil {
			return err
		}
		if err := root.MkdirAll(mp[1:], 0o755); err != nil {
			return fmt.Errorf("template rootfs: mount point %s: %w", mp, err)
		}
	}
	if err := root.Chmod("tmp", 0o1777|fs.ModeSticky); err != nil {
		return err
	}
	isRegular := func(fi fs.FileInfo) bool { return fi.Mode().IsRegular() }
	for name, content := range map[string]string{"etc/hostname": "sandbox\n", "etc/resolv.conf": ""} {
		if err := replaceUnless(root, name, isRegular); err != nil {
			return err
		}
		if _, err := root.Lstat(name); err == nil {
			continue
		}
		if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
			return fmt.Errorf("template rootfs: %s: %w", path.Dir(name), err)
		}
		if err := root.WriteFile(name, []byte(content), 0o644); err != nil {
			return fmt.Errorf("template rootfs: %s: %w", name, err)
		}
	}
	return addUser(root)
}

// replaceUnless removes name (not following it) unless it is missing or
// ok says it is of the right kind.
func replaceUnless(root *os.Root, name string, ok func(fs.FileInfo) bool) error {
	fi, err := root.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
		return nil
	case err != nil:
		return fmt.Errorf("template rootfs: /%s: %w", name, err)
	case ok(fi):
		return nil
	}
	if err := root.RemoveAll(name); err != nil {
		return fmt.Errorf("template rootfs: replacing /%s: %w", name, err)
	}
	return nil
}

// Record returns a built template's record.
func (s Store) Record(name string) (Record, error) {
	if _, err := s.Rootfs(name); err != nil {
		return Record{}, err
	}
	var r Record
	b, err := os.ReadFile(filepath.Join(s.Dir, name, "template.json"))
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	return r, err
}

// Identity names this build of the template for snapshots: a snapshot
// restores only onto the same build (its memory holds the template's files
// as they were). An image's template is its manifest digest; a recipe's is
// a digest of its record (name, source, layout, build time): copies of the
// template directory share it, separate builds of one recipe do not.
func (r Record) Identity() string {
	if r.Digest != "" {
		return r.Digest
	}
	h := sha256.Sum256([]byte(r.Name + "\n" + r.Source + "\n" + r.BuiltAt.UTC().Format(time.RFC3339Nano) + "\n" + fmt.Sprint(r.Layout) + "\n" + r.Rootfs))
	return "record:sha256:" + hex.EncodeToString(h[:])
}

// Stage makes a staging directory for a build of name; the build puts the
// filesystem in <stage>/rootfs and hands the stage to Install. The caller
// removes the stage if it is not installed.
func (s Store) Stage(name string) (string, error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return "", err
	}
	stage, err := os.MkdirTemp(s.Dir, ".build-"+name+"-")
	if err != nil {
		return "", err
	}
	// MkdirTemp makes it 0700; it becomes <dir>/<name>, which is readable
	// like the rest of the store.
	if err := os.Chmod(stage, 0o755); err != nil {
		os.RemoveAll(stage)
		return "", err
	}
	return stage, nil
}

// Install prepares <stage>/rootfs (see Prepare), records rec and moves the
// stage into place as template rec.Name, replacing an older build: running
// sandboxes keep their open files, new ones get the new tree. A record
// whose Rootfs points elsewhere needs no rootfs in the stage.
func (s Store) Install(stage string, rec Record) error {
	if err := ValidName(rec.Name); err != nil {
		return err
	}
	if rec.Rootfs == "" {
		if err := Prepare(filepath.Join(stage, "rootfs")); err != nil {
			return err
		}
	}
	rec.Layout = CurrentLayout
	b, _ := json.MarshalIndent(rec, "", "  ")
	if err := os.WriteFile(filepath.Join(stage, "template.json"), b, 0o644); err != nil {
		return err
	}
	final := filepath.Join(s.Dir, rec.Name)
	old := final + ".old"
	_ = os.RemoveAll(old)
	if _, err := os.Stat(final); err == nil {
		if err := os.Rename(final, old); err != nil {
			return err
		}
		defer os.RemoveAll(old)
	}
	return os.Rename(stage, final)
}
