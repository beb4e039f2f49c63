// Package ociimage builds the OCI image of the orkestr server from the staged
// release binaries, without a container engine: one layer per architecture
// written with archive/tar, assembled and pushed with go-containerregistry.
// The image is reproducible: every time in it is the release's epoch.
package ociimage

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Binaries are the files of a stage's bin/ directory the image ships, in
// /usr/bin (orkestrd finds runsc and orkestr-agent beside itself).
var Binaries = []string{"orkestrd", "orkestr", "orkestr-agent", "runsc"}

// Stage is one architecture's staged release tree (make dist's
// orkestr_V_linux_ARCH: bin/, config.yaml, LICENSE, NOTICE, THIRD_PARTY_LICENSES*).
type Stage struct {
	Arch string // GOARCH: amd64, arm64
	Dir  string
}

// Options describe the image.
type Options struct {
	Version, Commit string
	Created         time.Time // every file time and the config's creation time
	Stages          []Stage
	// CABundle is a PEM file installed as /etc/ssl/certs/ca-certificates.crt,
	// for pulling OCI templates over TLS (the image has no distribution).
	CABundle string
}

// Listen is the address the image's server listens on.
const Listen = "0.0.0.0:7777"

// Build returns the multi-architecture image index.
func Build(o Options) (v1.ImageIndex, error) {
	if o.Version == "" || len(o.Stages) == 0 {
		return nil, fmt.Errorf("ociimage: a version and at least one stage are needed")
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	seen := map[string]bool{}
	for _, s := range o.Stages {
		if s.Arch != "amd64" && s.Arch != "arm64" {
			return nil, fmt.Errorf("ociimage: architecture %q is not supported (amd64, arm64)", s.Arch)
		}
		if seen[s.Arch] {
			return nil, fmt.Errorf("ociimage: architecture %s given twice", s.Arch)
		}
		seen[s.Arch] = true
		img, err := image(o, s)
		if err != nil {
			return nil, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: s.Arch}},
		})
	}
	return idx, nil
}

func image(o Options, s Stage) (v1.Image, error) {
	layer, err := rootLayer(o, s)
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", s.Arch
	cf.Created = v1.Time{Time: o.Created.UTC()}
	cf.Author = "The orkestr authors"
	cf.Config = v1.Config{
		Entrypoint: []string{"/usr/bin/orkestrd"},
		Cmd:        []string{"serve"},
		Env: []string{
			"PATH=/usr/bin:/bin",
			"ORKESTR_CONFIG=/etc/orkestr/config.yaml",
			"ORKESTR_LISTEN=" + Listen,
			"ORKESTR_DATA_DIR=/var/lib/orkestr/data",
			"ORKESTR_TEMPLATE_DIR=/var/lib/orkestr/templates",
			"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
		},
		ExposedPorts: map[string]struct{}{"7777/tcp": {}},
		WorkingDir:   "/var/lib/orkestr",
		Labels: map[string]string{
			"org.opencontainers.image.title":    "orkestrd",
			"org.opencontainers.image.version":  o.Version,
			"org.opencontainers.image.revision": o.Commit,
			"org.opencontainers.image.licenses": "Apache-2.0",
			"org.opencontainers.image.source":   "https://github.com/orkestr-eu/orkestr",
		},
	}
	cf.History = []v1.History{{Created: cf.Created, CreatedBy: "orkestr make dist (internal/release/ociimage)"}}
	return mutate.ConfigFile(img, cf)
}

// rootLayer is the image's only layer: the binaries, the default config,
// the licences, the CA bundle, and the directories the server writes.
func rootLayer(o Options, s Stage) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := o.Created.UTC()
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: mtime, Format: tar.FormatPAX})
	}
	file := func(name, src string, mode int64) error {
		// A symlink in a stage is refused, not followed: the image gets
		// exactly the files staged, never what a link points to.
		f, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
		if errors.Is(err, syscall.ELOOP) {
			return fmt.Errorf("ociimage: %s is not a regular file (a symlink)", src)
		}
		if err != nil {
			return fmt.Errorf("ociimage: %s of linux/%s: %w", filepath.Base(src), s.Arch, err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("ociimage: %s is not a regular file", src)
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: st.Size(), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		return err
	}
	for _, d := range []struct {
		name string
		mode int64
	}{{"etc", 0o755}, {"etc/orkestr", 0o755}, {"etc/ssl", 0o755}, {"etc/ssl/certs", 0o755},
		{"tmp", 0o1777}, {"usr", 0o755}, {"usr/bin", 0o755}, {"usr/share", 0o755}, {"usr/share/doc", 0o755},
		{"usr/share/doc/orkestr", 0o755}, {"var", 0o755}, {"var/lib", 0o755}, {"var/lib/orkestr", 0o700},
		{"var/lib/orkestr/data", 0o700}, {"var/lib/orkestr/templates", 0o755}} {
		if err := dir(d.name, d.mode); err != nil {
			return nil, err
		}
	}
	if err := file("etc/orkestr/config.yaml", filepath.Join(s.Dir, "config.yaml"), 0o644); err != nil {
		return nil, err
	}
	if o.CABundle != "" {
		if err := file("etc/ssl/certs/ca-certificates.crt", o.CABundle, 0o644); err != nil {
			return nil, err
		}
	}
	for _, b := range Binaries {
		if err := file("usr/bin/"+b, filepath.Join(s.Dir, "bin", b), 0o755); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"LICENSE", "NOTICE", "THIRD_PARTY_LICENSES.csv", "THIRD_PARTY_LICENSES.runsc.csv"} {
		if err := file("usr/share/doc/orkestr/"+d, filepath.Join(s.Dir, d), 0o644); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
}
