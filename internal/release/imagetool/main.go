// Command imagetool is make dist's builder of the server's OCI image (it is
// not installed): it assembles the index from the staged release trees with
// package ociimage, writes it as an OCI layout and optionally pushes it.
//
//	go run ./internal/release/imagetool --version 1.2.3 --commit C --epoch S \
//	    --stage amd64=dist/orkestr_1.2.3_linux_amd64 --layout dist/orkestr_1.2.3_oci [--push REF]
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/orkestr-eu/orkestr/internal/release/ociimage"
)

type stages []ociimage.Stage

func (s *stages) String() string { return fmt.Sprint(*s) }
func (s *stages) Set(v string) error {
	arch, dir, ok := strings.Cut(v, "=")
	if !ok || arch == "" || dir == "" {
		return fmt.Errorf("want ARCH=DIR, got %q", v)
	}
	*s = append(*s, ociimage.Stage{Arch: arch, Dir: dir})
	return nil
}

func main() {
	var o ociimage.Options
	var st stages
	flag.StringVar(&o.Version, "version", "", "release version")
	flag.StringVar(&o.Commit, "commit", "unknown", "git commit")
	epoch := flag.Int64("epoch", 0, "SOURCE_DATE_EPOCH: every time in the image")
	flag.StringVar(&o.CABundle, "ca-bundle", "", "PEM bundle installed as /etc/ssl/certs/ca-certificates.crt")
	flag.Var(&st, "stage", "ARCH=DIR of a staged release tree (repeatable)")
	out := flag.String("layout", "", "write the index as an OCI layout to this directory")
	push := flag.String("push", "", "also push the index to this reference")
	insecure := flag.Bool("insecure", false, "push over plain HTTP (a loopback registry)")
	flag.Parse()
	o.Stages, o.Created = st, time.Unix(*epoch, 0)
	if err := run(o, *out, *push, *insecure); err != nil {
		fmt.Fprintln(os.Stderr, "imagetool:", err)
		os.Exit(1)
	}
}

func run(o ociimage.Options, out, push string, insecure bool) error {
	idx, err := ociimage.Build(o)
	if err != nil {
		return err
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	if out != "" {
		if _, err := layout.Write(out, idx); err != nil {
			return fmt.Errorf("write layout %s: %w", out, err)
		}
		fmt.Printf("image index %s written to %s\n", d, out)
	}
	if push != "" {
		var opts []name.Option
		if insecure {
			opts = append(opts, name.Insecure)
		}
		ref, err := name.ParseReference(push, opts...)
		if err != nil {
			return err
		}
		if err := remote.WriteIndex(ref, idx, remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return fmt.Errorf("push %s: %w", ref, err)
		}
		fmt.Printf("image index %s pushed to %s\n", d, ref)
	}
	return nil
}
