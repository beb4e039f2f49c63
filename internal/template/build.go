package template

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/template/oci"
)

// Source is one way to build a template; exactly one field is set.
type Source struct {
	Image  string // an OCI reference, pulled from its registry
	Recipe string // an offline recipe (see Recipes)
}

func (s Source) String() string {
	if s.Image != "" {
		return "image " + s.Image
	}
	return "recipe " + s.Recipe
}

// Entry is a catalog entry: a name and the sources to try, in order.
type Entry struct {
	Name    string
	Sources []Source
}

// Builder builds catalog entries into a Store.
type Builder struct {
	Store Store
	// OCI configures pulls; its CacheDir defaults to <store>/.oci.
	OCI oci.Options
	// Log receives progress lines.
	Log func(string)
}

// ErrNoSource means every source of an entry failed; the error joins why.
var ErrNoSource = errors.New("no source of the template could be built")

// Build builds e from the first of its sources that works, unless it is
// built already (or force is set).
func (b Builder) Build(ctx context.Context, e Entry, force bool) error {
	logw := b.Log
	if logw == nil {
		logw = func(string) {}
	}
	if rec, err := b.Store.Record(e.Name); err == nil && !force {
		// An offline recipe built before the current layout (the sandbox
		// user) is rebuilt, as BuildRecipe does; an image is only
		// rebuilt with force (it may come from a registry out of reach).
		if rec.Layout >= CurrentLayout || !hasRecipe(e) {
			logw(fmt.Sprintf("template %s is already built in %s", e.Name, b.Store.Dir))
			return nil
		}
		logw(fmt.Sprintf("template %s was built before the sandbox user existed; rebuilding it", e.Name))
	}
	if len(e.Sources) == 0 {
		return fmt.Errorf("template %s has no sources in the catalog", e.Name)
	}
	var errs []error
	for i, src := range e.Sources {
		var err error
		switch {
		case src.Image != "":
			err = b.buildImage(ctx, e.Name, src.Image)
		case src.Recipe != "":
			err = b.Store.buildRecipe(ctx, e.Name, src.Recipe, logw)
		default:
			err = errors.New("empty source")
		}
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		errs = append(errs, fmt.Errorf("%s: %w", src, err))
		if i+1 < len(e.Sources) {
			logw(fmt.Sprintf("template %s: %s failed (%v); trying %s", e.Name, src, err, e.Sources[i+1]))
		}
	}
	return fmt.Errorf("%w %s: %w", ErrNoSource, e.Name, errors.Join(errs...))
}

// buildImage pulls ref and installs it as template name. The image's
// filesystem is unpacked once per manifest digest under .images/ and shared
// by every template built from the same image; layers are cached by digest
// under .oci/ and shared by every image.
func (b Builder) buildImage(ctx context.Context, name, ref string) error {
	logw := b.Log
	if logw == nil {
		logw = func(string) {}
	}
	opt := b.OCI
	if opt.CacheDir == "" {
		opt.CacheDir = filepath.Join(b.Store.Dir, ociDir)
	}
	// Prune waits for no build: it refuses to run during one.
	unlock, err := b.Store.lock(false)
	if err != nil {
		return err
	}
	defer unlock()
	start := time.Now()
	logw(fmt.Sprintf("template %s: pulling %s", name, ref))
	img, err := oci.Pull(ctx, ref, opt)
	if err != nil {
		return err
	}
	hexDigest := strings.TrimPrefix(img.Digest, "sha256:")
	rel := filepath.Join(imagesDir, "sha256-"+hexDigest, "rootfs")
	imageRoot := filepath.Join(b.Store.Dir, rel)
	if _, err := os.Stat(filepath.Join(filepath.Dir(imageRoot), "complete")); err != nil {
		logw(fmt.Sprintf("template %s: unpacking %d layers of %s", name, len(img.Layers), img.Digest))
		if err := b.unpackImage(ctx, img, opt, filepath.Dir(imageRoot)); err != nil {
			return err
		}
	} else {
		logw(fmt.Sprintf("template %s: image %s is already unpacked here", name, img.Digest))
		// Unpacked by an orkestrd that did not list layers yet.
		if err := writeImageMeta(filepath.Dir(imageRoot), img, false); err != nil {
			return err
		}
	}
	stage, err := b.Store.Stage(name)
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	rec := Record{Name: name, Source: "image " + ref + "@" + img.Digest, Digest: img.Digest, Env: img.Env, Rootfs: rel, BuiltAt: time.Now().UTC()}
	if err := b.Store.Install(stage, rec); err != nil {
		return err
	}
	logw(fmt.Sprintf("template %s built from %s in %.1fs", name, ref, time.Since(start).Seconds()))
	return nil
}

// unpackImage unpacks img into dir/rootfs through a staging directory, so
// a half-unpacked image is never used, and marks it complete.
func (b Builder) unpackImage(ctx context.Context, img oci.Image, opt oci.Options, dir string) error {
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, ".unpack-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp makes it 0700
		return err
	}
	rootfs := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return err
	}
	if err := oci.Unpack(ctx, img, opt, rootfs); err != nil {
		return fmt.Errorf("unpacking %s: %w", img.Ref, err)
	}
	if err := Prepare(rootfs); err != nil {
		return err
	}
	if err := writeImageMeta(tmp, img, true); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, "complete"), []byte(img.Digest+"\n"), 0o644); err != nil {
		return err
	}
	_ = os.RemoveAll(dir) // an incomplete earlier attempt
	return os.Rename(tmp, dir)
}

// buildRecipe builds template name from an offline recipe; a recipe builds
// the template of its own name.
func (s Store) buildRecipe(ctx context.Context, name, recipe string, logw func(string)) error {
	if name != recipe {
		return fmt.Errorf("recipe %s builds template %s, not %s", recipe, recipe, name)
	}
	return s.BuildRecipe(ctx, recipe, true, logw)
}

// writeImageMeta writes dir/image.json, which names the image's layers so
// prune knows which cached layers an unpacked image still needs; unless
// replace, one that is there is kept.
func writeImageMeta(dir string, img oci.Image, replace bool) error {
	p := filepath.Join(dir, imageMetaFile)
	if _, err := os.Stat(p); err == nil && !replace {
		return nil
	}
	b, _ := json.MarshalIndent(imageMeta{Ref: img.Ref, Digest: img.Digest, Layers: img.Layers}, "", "  ")
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// hasRecipe says whether one of e's sources is an offline recipe.
func hasRecipe(e Entry) bool {
	for _, src := range e.Sources {
		if src.Recipe != "" {
			return true
		}
	}
	return false
}
