package template

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func owner(t *testing.T, p string) uint32 {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Uid
}

func TestPrepareAddsTheUnprivilegedUserOnce(t *testing.T) {
	rootfs := t.TempDir()
	writeFiles(t, rootfs, map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/bash", // no final newline
		"etc/group":  "root:x:0:\n",
		"etc/shadow": "root:*:19000:0:99999:7:::\n",
	})
	for range 2 { // idempotent: a second Prepare adds nothing
		if err := Prepare(rootfs); err != nil {
			t.Fatal(err)
		}
	}
	passwd, _ := os.ReadFile(filepath.Join(rootfs, "etc/passwd"))
	if string(passwd) != "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000:sandbox user:/home/user:/bin/sh\n" {
		t.Errorf("passwd: %q", passwd)
	}
	group, _ := os.ReadFile(filepath.Join(rootfs, "etc/group"))
	if string(group) != "root:x:0:\nuser:x:1000:\n" {
		t.Errorf("group: %q", group)
	}
	if shadow, _ := os.ReadFile(filepath.Join(rootfs, "etc/shadow")); strings.Count(string(shadow), "user:*:") != 1 {
		t.Errorf("shadow: %q", shadow)
	}
	for _, d := range []string{"home/user", "workspace"} {
		if uid := owner(t, filepath.Join(rootfs, d)); uid != 1000 {
			t.Errorf("%s is owned by %d", d, uid)
		}
	}
}

// An image whose uid 1000 is someone else's keeps its identities, and a
// passwd that is a symlink (out of the root, say) is never written through.
func TestPrepareLeavesForeignUsersAlone(t *testing.T) {
	rootfs := t.TempDir()
	writeFiles(t, rootfs, map[string]string{"etc/passwd": "root:x:0:0::/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n", "etc/group": ""})
	if err := Prepare(rootfs); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(rootfs, "etc/passwd")); strings.Contains(string(b), "user:") {
		t.Errorf("uid 1000 taken, yet: %q", b)
	}
	outside := filepath.Join(t.TempDir(), "passwd")
	writeFiles(t, filepath.Dir(outside), map[string]string{"passwd": "root:x:0:0::/root:/bin/sh\n"})
	rootfs2 := t.TempDir()
	writeFiles(t, rootfs2, map[string]string{"etc/group": ""})
	if err := os.Symlink(outside, filepath.Join(rootfs2, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	_ = Prepare(rootfs2)
	if b, _ := os.ReadFile(outside); string(b) != "root:x:0:0::/root:/bin/sh\n" {
		t.Errorf("wrote through a symlink: %q", b)
	}
}
