package snapshot

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The stream's errors, usable with errors.Is (Open wraps them with where).
var (
	// ErrFormat: the data is not an orkestr snapshot at all.
	ErrFormat = errors.New("snapshot: not an orkestr snapshot")
	// ErrVersion: a snapshot of a format version this build cannot read.
	ErrVersion = errors.New("snapshot: unsupported snapshot format version")
	// ErrCorrupt: a byte of the snapshot changed (or chunks were swapped).
	ErrCorrupt = errors.New("snapshot: the snapshot is corrupt")
	// ErrTruncated: the snapshot ends before its final chunk.
	ErrTruncated = errors.New("snapshot: the snapshot is truncated")
)

// FormatVersion is the version of the stream Seal writes.
const FormatVersion = 1

// The header opens every stream, in clear (it holds nothing secret) and
// authenticated: its SHA-256 is part of every chunk's additional data.
//
//	magic        8  "ORKSNAP\n"
//	version      2  big-endian
//	cipher       1  0 none (integrity only), 1 AES-256-GCM
//	compression  1  0 none, 1 zstd
//	chunk size   4  big-endian, plaintext bytes per data chunk
//	key id       8  HMAC-SHA256(data key, "orkestr snapshot key id v1")[:8]
//	salt        32  random: HKDF-SHA256(data key, salt) is the stream's key
//	nonce prefix 7  random
//	reserved     1  zero
const headerSize = 64

var magic = [8]byte{'O', 'R', 'K', 'S', 'N', 'A', 'P', '\n'}

const (
	cipherNone = 0
	cipherGCM  = 1

	compressNone = 0
	compressZstd = 1
)

// Chunk kinds: a stream is one manifest chunk, data chunks, and one
// trailer chunk, which is the final one.
const (
	kindManifest = 1
	kindData     = 2
	kindTrailer  = 3
)

// DefaultChunkSize is the plaintext size of a data chunk: what a reader
// holds in memory at once (twice, with its ciphertext).
const DefaultChunkSize = 1 << 20

const (
	minChunkSize = 4 << 10
	maxChunkSize = 16 << 20
	// frameSize precedes each chunk: kind (1) and ciphertext length (4).
	frameSize = 5
	tagSize   = 16
)

type header struct {
	version     uint16
	cipher      byte
	compression byte
	chunkSize   uint32
	keyID       [8]byte
	salt        [32]byte
	prefix      [7]byte
}

func (h *header) marshal() []byte {
	b := make([]byte, headerSize)
	copy(b, magic[:])
	binary.BigEndian.PutUint16(b[8:], h.version)
	b[10], b[11] = h.cipher, h.compression
	binary.BigEndian.PutUint32(b[12:], h.chunkSize)
	copy(b[16:24], h.keyID[:])
	copy(b[24:56], h.salt[:])
	copy(b[56:63], h.prefix[:])
	return b
}

func parseHeader(b []byte) (header, error) {
	var h header
	if [8]byte(b[:8]) != magic {
		return h, fmt.Errorf("%w: it does not start with the snapshot magic", ErrFormat)
	}
	h.version = binary.BigEndian.Uint16(b[8:])
	if h.version != FormatVersion {
		return h, fmt.Errorf("%w: it is version %d; this orkestrd reads version %d", ErrVersion, h.version, FormatVersion)
	}
	h.cipher, h.compression = b[10], b[11]
	h.chunkSize = binary.BigEndian.Uint32(b[12:])
	copy(h.keyID[:], b[16:24])
	copy(h.salt[:], b[24:56])
	copy(h.prefix[:], b[56:63])
	if h.cipher > cipherGCM || h.compression > compressZstd || b[63] != 0 {
		return h, fmt.Errorf("%w: the header names an unknown cipher or compression", ErrCorrupt)
	}
	if h.chunkSize < minChunkSize || h.chunkSize > maxChunkSize {
		return h, fmt.Errorf("%w: the header's chunk size %d is out of bounds", ErrCorrupt, h.chunkSize)
	}
	return h, nil
}

// streamAEAD is the cipher of one stream: AES-256-GCM under a key derived
// from the data key and the stream's salt (so no two streams share a key
// and nonce reuse across streams cannot happen), or, without a key, a
// SHA-256 integrity tag.
func streamAEAD(k Key, h *header) (cipher.AEAD, error) {
	if h.cipher == cipherNone {
		return integrityOnly{}, nil
	}
	sk, err := hkdf.Key(sha256.New, k.k[:], h.salt[:], "orkestr snapshot stream v1", KeySize)
	if err != nil {
		return nil, err
	}
	blk, err := aes.NewCipher(sk)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

// chunkNonce is the 12-byte GCM nonce of chunk i: the stream's random
// prefix, the chunk counter and the final flag.
func chunkNonce(h *header, i uint32, final bool) []byte {
	n := make([]byte, 12)
	copy(n, h.prefix[:])
	binary.BigEndian.PutUint32(n[7:], i)
	if final {
		n[11] = 1
	}
	return n
}

// chunkAAD binds a chunk to the header, its index and its kind, so a
// chunk moved, swapped, or taken from another stream fails to open.
func chunkAAD(hdrSum *[32]byte, i uint32, kind byte) []byte {
	a := make([]byte, 0, 32+4+1)
	a = append(a, hdrSum[:]...)
	a = binary.BigEndian.AppendUint32(a, i)
	return append(a, kind)
}

// integrityOnly is the "cipher" of unencrypted streams: the plaintext
// followed by a truncated SHA-256 of nonce, additional data and plaintext.
// It detects corruption, truncation and reordering as GCM does, but it
// has no secret: it protects against accidents, not attackers.
type integrityOnly struct{}

func (integrityOnly) NonceSize() int { return 12 }
func (integrityOnly) Overhead() int  { return tagSize }

func (integrityOnly) tag(nonce, plaintext, aad []byte) []byte {
	h := sha256.New()
	h.Write(nonce)
	var l [8]byte
	binary.BigEndian.PutUint64(l[:], uint64(len(aad)))
	h.Write(l[:])
	h.Write(aad)
	h.Write(plaintext)
	return h.Sum(nil)[:tagSize]
}

func (x integrityOnly) Seal(dst, nonce, plaintext, aad []byte) []byte {
	dst = append(dst, plaintext...)
	return append(dst, x.tag(nonce, plaintext, aad)...)
}

func (x integrityOnly) Open(dst, nonce, ciphertext, aad []byte) ([]byte, error) {
	if len(ciphertext) < tagSize {
		return nil, errors.New("short chunk")
	}
	p := ciphertext[:len(ciphertext)-tagSize]
	if subtle.ConstantTimeCompare(x.tag(nonce, p, aad), ciphertext[len(p):]) != 1 {
		return nil, errors.New("integrity check failed")
	}
	return append(dst, p...), nil
}

// chunkWriter seals what is written to it into data chunks.
type chunkWriter struct {
	w      io.Writer
	aead   cipher.AEAD
	h      *header
	hdrSum [32]byte
	index  uint32
	buf    []byte // pending plaintext, up to chunkSize
	out    []byte // frame + ciphertext
	n      int64  // bytes written to w
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		room := int(c.h.chunkSize) - len(c.buf)
		k := min(room, len(p))
		c.buf = append(c.buf, p[:k]...)
		p = p[k:]
		if len(c.buf) == int(c.h.chunkSize) {
			if err := c.emit(kindData, c.buf); err != nil {
				return total - len(p), err
			}
			c.buf = c.buf[:0]
		}
	}
	return total, nil
}

// flush seals the pending partial data chunk.
func (c *chunkWriter) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	err := c.emit(kindData, c.buf)
	c.buf = c.buf[:0]
	return err
}

func (c *chunkWriter) emit(kind byte, plaintext []byte) error {
	if c.index == ^uint32(0) {
		return errors.New("snapshot: too many chunks")
	}
	final := kind == kindTrailer
	c.out = append(c.out[:0], kind, 0, 0, 0, 0)
	c.out = c.aead.Seal(c.out, chunkNonce(c.h, c.index, final), plaintext, chunkAAD(&c.hdrSum, c.index, kind))
	binary.BigEndian.PutUint32(c.out[1:], uint32(len(c.out)-frameSize))
	c.index++
	n, err := c.w.Write(c.out)
	c.n += int64(n)
	return err
}

// chunkReader opens the chunks of a stream. Read yields the data chunks'
// plaintext; the manifest and trailer chunks are kept aside.
type chunkReader struct {
	r        io.Reader
	aead     cipher.AEAD
	h        *header
	hdrSum   [32]byte
	index    uint32
	buf      []byte // ciphertext of the current chunk
	bufp     *[]byte
	plain    []byte // unread plaintext of the current data chunk
	manifest []byte
	trailer  []byte
	done     bool  // the trailer was read
	n        int64 // bytes read
	err      error // the first error, which Open reports over any later one
}

// next reads and opens one chunk.
func (c *chunkReader) next() (byte, []byte, error) {
	var fr [frameSize]byte
	if _, err := io.ReadFull(c.r, fr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, fmt.Errorf("%w: it ends after %d bytes, before its final chunk", ErrTruncated, c.n)
		}
		return 0, nil, err
	}
	kind, l := fr[0], binary.BigEndian.Uint32(fr[1:])
	if kind < kindManifest || kind > kindTrailer || l < uint32(c.aead.Overhead()) || l > c.h.chunkSize+uint32(c.aead.Overhead()) {
		return 0, nil, fmt.Errorf("%w: chunk %d has a damaged frame (at byte %d)", ErrCorrupt, c.index, c.n)
	}
	c.n += frameSize
	if c.bufp == nil {
		c.bufp = getChunk()
		c.buf = *c.bufp
	}
	if cap(c.buf) < int(l) {
		c.buf = make([]byte, l)
	}
	c.buf = c.buf[:l]
	if _, err := io.ReadFull(c.r, c.buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, fmt.Errorf("%w: it ends inside chunk %d", ErrTruncated, c.index)
		}
		return 0, nil, err
	}
	c.n += int64(l)
	p, err := c.aead.Open(c.buf[:0], chunkNonce(c.h, c.index, kind == kindTrailer), c.buf, chunkAAD(&c.hdrSum, c.index, kind))
	if err != nil {
		return 0, nil, fmt.Errorf("%w: chunk %d (at byte %d) fails authentication: changed, moved, or from another snapshot", ErrCorrupt, c.index, c.n-int64(l)-frameSize)
	}
	c.index++
	return kind, p, nil
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.read(p)
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

func (c *chunkReader) read(p []byte) (int, error) {
	for len(c.plain) == 0 {
		if c.done {
			return 0, io.EOF
		}
		kind, pt, err := c.next()
		if err != nil {
			return 0, err
		}
		switch kind {
		case kindData:
			c.plain = pt
		case kindTrailer:
			c.trailer = append([]byte(nil), pt...)
			c.done = true
			// Nothing may follow the final chunk.
			var one [1]byte
			if n, _ := io.ReadFull(c.r, one[:]); n != 0 {
				return 0, fmt.Errorf("%w: data follows the final chunk", ErrCorrupt)
			}
		default:
			return 0, fmt.Errorf("%w: chunk %d is a second manifest", ErrCorrupt, c.index-1)
		}
	}
	n := copy(p, c.plain)
	c.plain = c.plain[n:]
	return n, nil
}

// release returns the reader's buffer to the pool.
func (c *chunkReader) release() {
	if c.bufp != nil {
		putChunk(c.bufp)
		c.bufp, c.buf, c.plain = nil, nil, nil
	}
}
