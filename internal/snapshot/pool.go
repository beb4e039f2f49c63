package snapshot

import (
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Encoders, decoders and chunk buffers are reused across transfers: a
// zstd encoder's tables and a chunk's buffers are most of what a small
// snapshot's Seal would otherwise allocate (and clear) every time.
var (
	encoders sync.Pool // *zstd.Encoder
	decoders sync.Pool // *zstd.Decoder
	chunks   = sync.Pool{New: func() any { b := make([]byte, 0, DefaultChunkSize+frameSize+tagSize); return &b }}
	copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}
)

func getEncoder(w io.Writer) (*zstd.Encoder, error) {
	if e, ok := encoders.Get().(*zstd.Encoder); ok {
		e.Reset(w)
		return e, nil
	}
	// The frame checksum is left out: every chunk is authenticated and
	// the tar's SHA-256 checked. Not WithLowerEncoderMem: it cost 1.75×
	// the CPU on binaries and libraries (452 vs 256 ms per 64 MiB); the
	// encoder is pooled, so its memory is paid once. A window of 1 MiB
	// compresses those as well as 4 MiB did (ratio 0.262 vs 0.262).
	return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(zstdWindow), zstd.WithEncoderCRC(false))
}

func putEncoder(e *zstd.Encoder) {
	e.Reset(nil)
	encoders.Put(e)
}

func getDecoder(r io.Reader) (*zstd.Decoder, error) {
	if d, ok := decoders.Get().(*zstd.Decoder); ok {
		if err := d.Reset(r); err != nil {
			return nil, err
		}
		return d, nil
	}
	return zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(maxZstdWindow))
}

func putDecoder(d *zstd.Decoder) {
	if d.Reset(nil) == nil {
		decoders.Put(d)
	}
}

// getChunk returns an empty buffer with room for a default chunk.
func getChunk() *[]byte { return chunks.Get().(*[]byte) }

func putChunk(b *[]byte) {
	if cap(*b) >= DefaultChunkSize+frameSize+tagSize && cap(*b) <= 2*(DefaultChunkSize+frameSize+tagSize) {
		*b = (*b)[:0]
		chunks.Put(b)
	}
}
