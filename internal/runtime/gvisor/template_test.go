package gvisor_test

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/testenv"
)

// treeState records every entry of a directory tree: type, mode, owner,
// size, mtime, ctime and link target, plus the contents' hash of the files
// in hashed (relative paths).
func treeState(t *testing.T, root string, hashed ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		rel, _ := filepath.Rel(root, p)
		s := fmt.Sprintf("%v %d:%d size=%d mtime=%d ctime=%d.%d ino=%d", fi.Mode(), st.Uid, st.Gid, fi.Size(),
			fi.ModTime().UnixNano(), st.Ctim.Sec, st.Ctim.Nsec, st.Ino)
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			s += " -> " + target
		}
		out[rel] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, rel := range hashed {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		out[rel] += fmt.Sprintf(" sha256=%x", sha256.Sum256(b))
	}
	return out
}

func diffTrees(a, b map[string]string) []string {
	var d []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			d = append(d, "removed "+k)
		} else if v != w {
			d = append(d, fmt.Sprintf("changed %s: %s -> %s", k, v, w))
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, "added "+k)
		}
	}
	return d
}

// TestTemplateNeverChanges: whatever a sandbox does to its root file system
// lands in its own copy-on-write layer; the shared template on the host and
// every other sandbox keep the original.
func TestTemplateNeverChanges(t *testing.T) {
	env := testenv.NewDriver(t)
	rootfs := testenv.Rootfs(t, "debian-12")
	hashed := []string{"etc/passwd", "etc/shadow", "bin/sh", "usr/bin/env", "etc/hostname"}
	start := time.Now()
	before := treeState(t, rootfs, hashed...)
	t.Logf("template: %d entries, recorded in %v", len(before), time.Since(start))
	origPasswd, err := os.ReadFile(filepath.Join(rootfs, "etc/passwd"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := before["usr/share/doc"]; !ok {
		t.Fatal("the template has no /usr/share/doc to remove")
	}

	a := newSandbox(t, env)
	ctx := testCtx(t, time.Minute)
	sh(t, a, `set -e
echo 'evil:x:0:0::/root:/bin/sh' >> /etc/passwd
echo new > /usr/bin/newfile
rm -rf /usr/share/doc
chmod 700 /etc
chown 1000:1000 /usr/bin/env
touch -d '2001-01-01' /bin/sh
ln -sf /evil /etc/hostname
mkdir -p /var/lib/evil && echo x > /var/lib/evil/x
rm -f /etc/shadow`)
	writeString(t, a, "/etc/orkestr-motd", "written through the files API")
	writeString(t, a, "/usr/local/bin/tool", "#!/bin/sh\n")
	if err := a.Remove(ctx, "/usr/share/man", true); err != nil {
		t.Fatal(err)
	}
	// The sandbox does see its own changes.
	if out := sh(t, a, "tail -n 1 /etc/passwd; cat /usr/bin/newfile; test -e /usr/share/doc || echo nodoc"); out != "evil:x:0:0::/root:/bin/sh\nnew\nnodoc\n" {
		t.Fatalf("sandbox does not see its own changes: %q", out)
	}

	// Nothing on the host changed: no entry added (such as runsc's
	// .gvisor.filestore), removed, re-moded, re-owned, touched or rewritten.
	after := treeState(t, rootfs, hashed...)
	if d := diffTrees(before, after); len(d) > 0 {
		if len(d) > 20 {
			d = d[:20]
		}
		t.Fatalf("the template changed on the host:\n%s", strings.Join(d, "\n"))
	}

	// A second sandbox, started after all that, sees the original.
	b := newSandbox(t, env)
	if got := readString(t, b, "/etc/passwd"); got != string(origPasswd) {
		t.Fatalf("second sandbox sees a changed /etc/passwd: %q", got)
	}
	out := sh(t, b, `for p in /usr/bin/newfile /etc/orkestr-motd /usr/local/bin/tool /var/lib/evil; do test -e $p && echo "has $p"; done
test -d /usr/share/doc && test -d /usr/share/man && test -f /etc/shadow && test ! -L /etc/hostname && echo intact
stat -c '%a %U' /etc /usr/bin/env`)
	if out != "intact\n755 root\n755 root\n" {
		t.Fatalf("second sandbox: %q", out)
	}
	// And the first one still has its changes.
	if out := sh(t, a, "cat /usr/bin/newfile"); out != "new\n" {
		t.Fatalf("first sandbox lost its changes: %q", out)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "usr/bin/newfile")); !os.IsNotExist(err) {
		t.Fatalf("host template has /usr/bin/newfile: %v", err)
	}
}
