package template

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPrepareStaysInTheRoot: an image whose mount points or /etc files are
// symlinks out of its root must not make Prepare create, chmod, remove or
// write anything outside it.
func TestPrepareStaysInTheRoot(t *testing.T) {
	outside := t.TempDir()
	if err := os.Chmod(outside, 0o700); err != nil {
		t.Fatal(err)
	}
	hostFile := filepath.Join(outside, "resolv.conf")
	if err := os.WriteFile(hostFile, []byte("nameserver 192.0.2.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("resolv.conf", filepath.Join(outside, "hostname")); err != nil {
		t.Fatal(err)
	}
	rootfs := t.TempDir()
	for name, target := range map[string]string{
		"tmp":       outside,                  // chmod 1777 through it
		"workspace": "../../../../" + outside, // mkdir through it
		"proc":      "/proc",                  // the host's, as an absolute path
	} {
		if err := os.Symlink(target, filepath.Join(rootfs, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(rootfs, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"hostname", "resolv.conf"} {
		if err := os.Symlink(filepath.Join(outside, f), filepath.Join(rootfs, "etc", f)); err != nil {
			t.Fatal(err)
		}
	}
	err := Prepare(rootfs)
	if fi, _ := os.Stat(outside); fi.Mode().Perm() != 0o700 || fi.Mode()&os.ModeSticky != 0 {
		t.Errorf("the directory outside the root now has mode %v", fi.Mode())
	}
	if b, _ := os.ReadFile(hostFile); string(b) != "nameserver 192.0.2.1\n" {
		t.Errorf("the file outside the root now says %q", b)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 2 {
		t.Errorf("%d entries outside the root, want 2", len(ents))
	}
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	for _, mp := range MountPoints {
		if fi, err := os.Lstat(filepath.Join(rootfs, mp)); err != nil || !fi.IsDir() {
			t.Errorf("mount point %s: %v %v, want a directory", mp, fi, err)
		}
	}
	if fi, _ := os.Lstat(filepath.Join(rootfs, "tmp")); fi.Mode().Perm() != 0o777 || fi.Mode()&os.ModeSticky == 0 {
		t.Errorf("tmp: mode %v, want 1777", fi.Mode())
	}
	for _, f := range []string{"etc/hostname", "etc/resolv.conf"} {
		if fi, err := os.Lstat(filepath.Join(rootfs, f)); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("%s: %v %v, want a regular file", f, fi, err)
		}
	}

	// /etc itself leading out: the build fails rather than write there.
	rootfs = t.TempDir()
	if err := os.Symlink(outside, filepath.Join(rootfs, "etc")); err != nil {
		t.Fatal(err)
	}
	if err := Prepare(rootfs); err == nil {
		t.Error("prepare wrote /etc/hostname through a symlink out of the root")
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 2 {
		t.Errorf("%d entries outside the root, want 2", len(ents))
	}
}

func TestRecordIdentity(t *testing.T) {
	built := time.Date(2026, 12, 3, 15, 0, 0, 0, time.UTC)
	a := Record{Name: "debian-12", Source: "debootstrap", BuiltAt: built, Layout: 2}
	if a.Identity() != a.Identity() || !strings.HasPrefix(a.Identity(), "record:sha256:") {
		t.Fatalf("identity %q", a.Identity())
	}
	rebuilt := a
	rebuilt.BuiltAt = built.Add(time.Second)
	other := a
	other.Source = "debootstrap +python3"
	if a.Identity() == rebuilt.Identity() || a.Identity() == other.Identity() {
		t.Fatal("two builds share an identity")
	}
	img := a
	img.Digest = "sha256:abc"
	if img.Identity() != "sha256:abc" {
		t.Fatalf("an image template's identity is its digest: %q", img.Identity())
	}
}
