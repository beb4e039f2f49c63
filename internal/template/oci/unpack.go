package oci

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Unpack applies img's cached layers, bottom first, into dest (an existing,
// empty directory). It streams: memory does not grow with layer size.
func Unpack(ctx context.Context, img Image, opt Options, dest string) error {
	for i, d := range img.Layers {
		if err := unpackLayer(ctx, opt.CacheDir, d, dest); err != nil {
			return fmt.Errorf("layer %d/%d %s: %w", i+1, len(img.Layers), d, err)
		}
	}
	return nil
}

func unpackLayer(ctx context.Context, cacheDir, digest, dest string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := blobPath(cacheDir, digest)
	if err != nil {
		return err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("not in the layer cache %s (pull the image again)", cacheDir)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := decompress(bufio.NewReaderSize(ctxReader{ctx, f}, 1<<20))
	if err != nil {
		return err
	}
	defer r.Close()
	return ApplyLayer(dest, r)
}

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// decompress recognises a layer's compression by its first bytes rather
// than its media type: the bytes cannot lie, and registries and tools do
// get media types wrong.
func decompress(br *bufio.Reader) (io.ReadCloser, error) {
	magic, _ := br.Peek(len(zstdMagic))
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		return gzip.NewReader(br)
	case bytes.HasPrefix(magic, zstdMagic):
		// One decoding goroutine keeps memory to a window or so.
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		return zr.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}
