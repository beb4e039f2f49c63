package template

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/orkestr-eu/orkestr/internal/template/oci"
	"github.com/orkestr-eu/orkestr/internal/template/oci/ocitest"
)

func digestHex(t *testing.T, d interface{ Digest() (v1.Hash, error) }) string {
	t.Helper()
	h, err := d.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h.Hex
}

// TestPruneRemovesWhatNoTemplateUses builds templates from a local
// registry, replaces one's image and prunes: the replaced image and its own
// layer go once no sandbox runs in it; shared layers, the images in use and
// the templates stay.
func TestPruneRemovesWhatNoTemplateUses(t *testing.T) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("this test needs a static busybox at /bin/busybox (apt-get install busybox-static): %v", err)
	}
	host := ocitest.StartRegistry(t, nil)
	shared := ocitest.Layer(t, ocitest.File("shared", "in every image"))
	own := map[string]v1.Layer{
		"a": ocitest.Layer(t, ocitest.File("a", "a")),
		"b": ocitest.Layer(t, ocitest.Dir("bin/"), ocitest.Entry{Name: "bin/busybox", Body: string(bb), Mode: 0o755}, ocitest.Symlink("bin/sleep", "busybox")),
		"c": ocitest.Layer(t, ocitest.File("c", "c")),
	}
	images := map[string]v1.Image{}
	for n, l := range own {
		images[n] = ocitest.Image(t, nil, shared, l)
		ocitest.Push(t, host+"/t/"+n+":v1", images[n])
	}
	store := Store{Dir: t.TempDir()}
	b := Builder{Store: store, OCI: oci.Options{Insecure: []string{host}}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, e := range []struct {
		name, image string
		force       bool
	}{{"a", "a", false}, {"b", "b", false}, {"b", "c", true}} {
		if err := b.Build(ctx, Entry{Name: e.name, Sources: []Source{{Image: host + "/t/" + e.image + ":v1"}}}, e.force); err != nil {
			t.Fatal(err)
		}
	}
	imageOf := func(n string) string { return filepath.Join(imagesDir, "sha256-"+digestHex(t, images[n])) }
	blobOf := func(l v1.Layer) string { return filepath.Join(ociDir, "blobs", "sha256", digestHex(t, l)) }
	exists := func(rel string) bool { _, err := os.Lstat(filepath.Join(store.Dir, rel)); return err == nil }

	// Leftovers of interrupted builds.
	unpack := filepath.Join(imagesDir, ".unpack-123")
	part := filepath.Join(ociDir, "blobs", "sha256", ".part-456")
	if err := os.MkdirAll(filepath.Join(store.Dir, unpack, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(store.Dir, part), []byte("half a layer"), 0o644); err != nil {
		t.Fatal(err)
	}

	// A sandbox still runs in b's old image: its gofer's root is that rootfs.
	sleeper := exec.Command("/bin/sleep", "300")
	sleeper.SysProcAttr = &syscall.SysProcAttr{Chroot: filepath.Join(store.Dir, imageOf("b"), "rootfs")}
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = sleeper.Process.Kill()
			_ = sleeper.Wait()
		}
	}
	defer stop()

	p, err := store.Prune()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.InUse, []string{imageOf("b")}) || !slices.Equal(p.Removed, []string{unpack, part}) || p.BlobsKept != "" {
		t.Fatalf("prune with a sandbox in b's old image: %+v", p)
	}
	if !exists(blobOf(own["b"])) {
		t.Fatal("the layer of an image in use was removed")
	}

	stop()
	p, err = store.Prune()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{imageOf("b"), blobOf(own["b"])}; !slices.Equal(p.Removed, want) || len(p.InUse) != 0 || p.Bytes < int64(len(bb)) {
		t.Fatalf("prune: %+v, want %v removed", p, want)
	}
	for _, rel := range []string{imageOf("a"), imageOf("c"), blobOf(shared), blobOf(own["a"]), blobOf(own["c"])} {
		if !exists(rel) {
			t.Errorf("%s was removed", rel)
		}
	}
	for _, n := range []string{"a", "b"} {
		if r, err := store.Rootfs(n); err != nil {
			t.Errorf("template %s after the prune: %v", n, err)
		} else if _, err := os.Stat(filepath.Join(r, n)); n == "a" && err != nil {
			t.Errorf("template a's rootfs: %v", err)
		}
	}
	if p, err := store.Prune(); err != nil || len(p.Removed) != 0 {
		t.Fatalf("a second prune: %+v %v", p, err)
	}

	// An image that does not list its layers keeps every cached layer.
	if err := os.Remove(filepath.Join(store.Dir, imageOf("a"), imageMetaFile)); err != nil {
		t.Fatal(err)
	}
	stray := filepath.Join(ociDir, "blobs", "sha256", strings.Repeat("ab", 32))
	if err := os.WriteFile(filepath.Join(store.Dir, stray), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if p, err := store.Prune(); err != nil || len(p.Removed) != 0 || !strings.Contains(p.BlobsKept, imageOf("a")) {
		t.Fatalf("prune with an image of unknown layers: %+v %v", p, err)
	}
	// As the message says, a forced rebuild lists them again.
	if err := b.Build(ctx, Entry{Name: "a", Sources: []Source{{Image: host + "/t/a:v1"}}}, true); err != nil {
		t.Fatal(err)
	}
	if p, err := store.Prune(); err != nil || !slices.Equal(p.Removed, []string{stray}) || p.BlobsKept != "" {
		t.Fatalf("prune after the rebuild: %+v %v", p, err)
	}
	if err := os.WriteFile(filepath.Join(store.Dir, stray), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}

	// Not during a build.
	unlock, err := store.lock(false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Prune(); err == nil || !strings.Contains(err.Error(), "build is running") {
		t.Fatalf("prune during a build: %v", err)
	}
	unlock()

	// Not when a template's record is unreadable: what it uses is unknown.
	if err := os.WriteFile(filepath.Join(store.Dir, "a", "template.json"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if p, err := store.Prune(); err == nil || !strings.Contains(err.Error(), "template a") || len(p.Removed) != 0 {
		t.Fatalf("prune with a corrupt template.json: %+v %v", p, err)
	}
	if !exists(stray) || !exists(imageOf("a")) {
		t.Fatal("a refused prune removed something")
	}
}
