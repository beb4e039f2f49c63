package snapshot

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Config names an S3-compatible bucket. Empty fields fall back to the
// standard AWS environment variables: AWS_ENDPOINT_URL, AWS_REGION,
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN.
type S3Config struct {
	// Endpoint is the server's base URL (http:// or https://); empty:
	// AWS_ENDPOINT_URL, else AWS S3 of Region.
	Endpoint string
	Region   string // default us-east-1
	Bucket   string
	// Prefix is prepended to every key ("orkestr/prod/"), so that several
	// installations may share a bucket.
	Prefix          string
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	// CAFile is a PEM bundle of the CAs of the endpoint's certificate
	// (empty: the system's roots).
	CAFile string
	// VirtualHost addresses the bucket as bucket.host; default path-style
	// (host/bucket), which every S3-compatible server speaks.
	VirtualHost bool
	// PartSize and Parallel shape uploads past one part: multipart, with
	// Parallel parts of PartSize bytes in flight at once: the memory an
	// upload holds is Parallel × PartSize. Defaults 8 MiB and 2 (more
	// parallel parts help on a link with latency, not on loopback).
	PartSize int64
	Parallel int
}

const (
	defaultPartSize = 8 << 20
	minPartSize     = 5 << 20 // S3's minimum for all parts but the last
	defaultParallel = 2
	// maxCreateBytes bounds what Create holds in memory (it is for keys).
	maxCreateBytes = 1 << 20
	// partGrace is how long a cancelled upload lets its parts in flight
	// finish before cutting them.
	partGrace = 10 * time.Second
)

type s3Store struct {
	c        *minio.Client
	bucket   string
	prefix   string
	endpoint string
	partSize int64
	parallel int
}

// NewS3 returns a Store on an S3-compatible bucket. It does not contact
// the server: a store that cannot be reached shows as ErrUnavailable on
// use, not at start.
func NewS3(cfg S3Config) (Store, error) {
	if cfg.Endpoint == "" {
		cfg.Endpoint = os.Getenv("AWS_ENDPOINT_URL")
	}
	if cfg.Region == "" {
		cfg.Region = os.Getenv("AWS_REGION")
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	if cfg.Endpoint == "" {
		cfg.Endpoint = "https://s3." + cfg.Region + ".amazonaws.com"
	}
	if cfg.Bucket == "" {
		return nil, errors.New("snapshot: s3: no bucket given")
	}
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("snapshot: s3: endpoint %q must be an http:// or https:// URL without a path", cfg.Endpoint)
	}
	prefix := strings.TrimSuffix(cfg.Prefix, "/")
	if prefix != "" {
		if err := ValidKey(prefix); err != nil {
			return nil, fmt.Errorf("snapshot: s3: prefix: %w", err)
		}
		prefix += "/"
	}
	var creds *credentials.Credentials
	switch {
	case cfg.AccessKeyID != "" && cfg.SecretAccessKey != "":
		creds = credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken)
	case cfg.AccessKeyID != "" || cfg.SecretAccessKey != "":
		return nil, errors.New("snapshot: s3: give both the access key id and the secret access key, or neither")
	default:
		if os.Getenv("AWS_ACCESS_KEY_ID") == "" || os.Getenv("AWS_SECRET_ACCESS_KEY") == "" {
			return nil, errors.New("snapshot: s3: no credentials: set snapshots.s3.access_key_id and secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
		}
		creds = credentials.NewEnvAWS()
	}
	tr, err := s3Transport(cfg.CAFile)
	if err != nil {
		return nil, err
	}
	lookup := minio.BucketLookupPath
	if cfg.VirtualHost {
		lookup = minio.BucketLookupDNS
	}
	c, err := minio.New(u.Host, &minio.Options{
		Creds: creds, Secure: u.Scheme == "https", Transport: tr, Region: cfg.Region,
		BucketLookup: lookup,
		// A few quick retries: an unreachable store must fail a pause
		// within seconds (503), not after minio's default ten.
		MaxRetries: 3,
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot: s3: %w", err)
	}
	s := &s3Store{c: c, bucket: cfg.Bucket, prefix: prefix, endpoint: u.Host, partSize: cfg.PartSize, parallel: cfg.Parallel}
	if s.partSize == 0 {
		s.partSize = defaultPartSize
	}
	if s.partSize < minPartSize {
		return nil, fmt.Errorf("snapshot: s3: part size %d is below S3's minimum of 5 MiB", s.partSize)
	}
	if s.parallel <= 0 {
		s.parallel = defaultParallel
	}

	return s, nil
}

// s3Transport bounds how long an unreachable server holds a request.
func s3Transport(caFile string) (*http.Transport, error) {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		ExpectContinueTimeout: time.Second,
		// Snapshots are compressed already.
		DisableCompression: true,
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("snapshot: s3: ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("snapshot: s3: ca_file %s holds no PEM certificate", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return tr, nil
}

// mapErr turns a client error into the package's errors. Anything but a
// missing object or a lost race is the store being unusable: callers
// answer 503 and keep the sandbox as it was.
func (s *s3Store) mapErr(ctx context.Context, op, key string, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("snapshot: s3: %s %s: %w", op, key, cerr)
	}
	resp := minio.ToErrorResponse(err)
	switch resp.Code {
	case "NoSuchKey":
		return fmt.Errorf("%w: %s", ErrNotFound, key)
	case "PreconditionFailed", "ConditionalRequestConflict":
		if op == "get" { // a later range's If-Match
			return fmt.Errorf("%w: %s changed while it was read; try again", ErrUnavailable, key)
		}
		return fmt.Errorf("%w: %s", ErrExists, key)
	case "NoSuchBucket":
		return fmt.Errorf("%w: the bucket %s does not exist at %s (create it, or fix snapshots.s3.bucket)", ErrUnavailable, s.bucket, s.endpoint)
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch":
		return fmt.Errorf("%w: %s refused the credentials for %s %s (%s): check snapshots.s3's keys and the bucket's policy", ErrUnavailable, s.endpoint, op, key, resp.Code)
	}
	if resp.StatusCode == http.StatusNotFound && op != "list" {
		return fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return fmt.Errorf("%w: %s %s at %s: %v", ErrUnavailable, op, key, s.endpoint, err)
}

// sourceReader remembers the error of the caller's reader, so that a
// failing source is reported as itself and not as the store's fault.
type sourceReader struct {
	ctx context.Context
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		s.err = err
		return 0, err
	}
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

func (s *s3Store) Put(ctx context.Context, key string, r io.Reader) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	src := &sourceReader{ctx: ctx, r: r}
	// An object within one part goes up in one PUT (atomic by itself);
	// a larger one as a multipart upload, which S3 shows only once it is
	// completed, and which is aborted on any error.
	head, err := readHead(src, s.partSize)
	if err != nil {
		return fmt.Errorf("snapshot: writing %s: %w", key, err)
	}
	if int64(len(head)) < s.partSize {
		_, err = s.c.PutObject(ctx, s.bucket, s.prefix+key, bytes.NewReader(head), int64(len(head)), minio.PutObjectOptions{ContentType: "application/octet-stream"})
		return s.mapErr(ctx, "put", key, err)
	}
	err = s.putMultipart(ctx, key, head, src)
	if src.err != nil {
		return fmt.Errorf("snapshot: writing %s: %w", key, src.err)
	}
	return err
}

// readHead reads up to n bytes of r: small objects (keys) in a small
// buffer, anything larger straight into one part's buffer.
func readHead(r io.Reader, n int64) ([]byte, error) {
	small := make([]byte, min(n, 64<<10))
	m, err := io.ReadFull(r, small)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return small[:m], nil
	}
	if err != nil || int64(m) == n {
		return small[:m], err
	}
	buf := make([]byte, n)
	copy(buf, small)
	k, err := io.ReadFull(r, buf[m:])
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = nil
	}
	return buf[:m+k], err
}

// putMultipart uploads head and the rest of r as parts of partSize, up
// to s.parallel at once (each holding one buffer). On any error it stops
// reading and lets the parts in flight finish before it aborts the upload:
// a part cut off client-side may still be written by the server after an
// abort and linger (S3 documents that an abort may need repeating). A
// cancelled ctx gives the parts in flight partGrace before cutting them,
// and then aborts twice.
func (s *s3Store) putMultipart(ctx context.Context, key string, head []byte, r io.Reader) error {
	core := minio.Core{Client: s.c}
	object := s.prefix + key
	uploadID, err := core.NewMultipartUpload(ctx, s.bucket, object, minio.PutObjectOptions{ContentType: "application/octet-stream"})
	if err != nil {
		return s.mapErr(ctx, "put", key, err)
	}
	partCtx, cutParts := context.WithCancel(context.WithoutCancel(ctx))
	defer cutParts()
	finished := make(chan struct{})
	defer close(finished)
	var cut atomic.Bool
	go func() {
		select {
		case <-ctx.Done():
		case <-finished:
			return
		}
		select {
		case <-time.After(partGrace):
			cut.Store(true)
			cutParts()
		case <-finished:
		}
	}()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		parts    []minio.CompletePart
		firstErr error
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	failed := func() bool { mu.Lock(); defer mu.Unlock(); return firstErr != nil }
	// Buffers: head is the first part's; the others are made on demand.
	pool := make(chan []byte, s.parallel)
	for i := 1; i < s.parallel; i++ {
		pool <- nil
	}
	data := head
	for n := 1; ; n++ {
		if n > 1 {
			buf := <-pool
			if failed() {
				break
			}
			if err := ctx.Err(); err != nil {
				fail(fmt.Errorf("snapshot: writing %s: %w", key, err))
				break
			}
			if buf == nil {
				buf = make([]byte, s.partSize)
			}
			m, rerr := io.ReadFull(r, buf)
			if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
				fail(fmt.Errorf("snapshot: writing %s: %w", key, rerr))
				break
			}
			if m == 0 {
				break
			}
			data = buf[:m]
		}
		if n > 10000 {
			fail(fmt.Errorf("snapshot: writing %s: more than 10000 parts of %d bytes", key, s.partSize))
			break
		}
		wg.Add(1)
		go func(n int, data []byte) {
			defer wg.Done()
			p, err := core.PutObjectPart(partCtx, s.bucket, object, uploadID, n, bytes.NewReader(data), int64(len(data)), partOptions(data))
			if err != nil {
				fail(s.mapErr(ctx, "put", key, err))
			} else {
				mu.Lock()
				parts = append(parts, minio.CompletePart{PartNumber: n, ETag: p.ETag})
				mu.Unlock()
			}
			if int64(cap(data)) == s.partSize {
				pool <- data[:cap(data)]
			} else {
				pool <- nil
			}
		}(n, data)
		if int64(len(data)) < s.partSize {
			break // the last, short part
		}
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = fmt.Errorf("snapshot: writing %s: %w", key, ctx.Err())
	}
	if firstErr == nil {
		sort.Slice(parts, func(i, j int) bool { return parts[i].PartNumber < parts[j].PartNumber })
		_, err := core.CompleteMultipartUpload(ctx, s.bucket, object, uploadID, parts, minio.PutObjectOptions{ContentType: "application/octet-stream"})
		if err == nil {
			return nil
		}
		firstErr = s.mapErr(ctx, "put", key, err)
	}
	actx, acancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer acancel()
	_ = core.AbortMultipartUpload(actx, s.bucket, object, uploadID)
	if cut.Load() {
		go func() {
			time.Sleep(2 * time.Second)
			actx, acancel := context.WithTimeout(context.Background(), time.Minute)
			defer acancel()
			_ = core.AbortMultipartUpload(actx, s.bucket, object, uploadID)
		}()
	}
	return firstErr
}

func (s *s3Store) Create(ctx context.Context, key string, r io.Reader) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	b, err := io.ReadAll(io.LimitReader(ctxReader{ctx, r}, maxCreateBytes+1))
	if err != nil {
		return fmt.Errorf("snapshot: writing %s: %w", key, err)
	}
	if len(b) > maxCreateBytes {
		return fmt.Errorf("snapshot: Create is for small objects (at most %d bytes)", maxCreateBytes)
	}
	opts := minio.PutObjectOptions{ContentType: "application/octet-stream"}
	// If-None-Match: * — the server refuses the write if the key exists.
	opts.SetMatchETagExcept("*")
	_, err = s.c.PutObject(ctx, s.bucket, s.prefix+key, bytes.NewReader(b), int64(len(b)), opts)
	return s.mapErr(ctx, "create", key, err)
}

func (s *s3Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := ValidKey(key); err != nil {
		return nil, err
	}
	// The first part's range, in one request: a small object comes whole,
	// and the response's Content-Range says how large a big one is.
	core := minio.Core{Client: s.c}
	opts := minio.GetObjectOptions{}
	opts.SetRange(0, s.partSize-1)
	rc, info, hdr, err := core.GetObject(ctx, s.bucket, s.prefix+key, opts)
	if err != nil {
		if minio.ToErrorResponse(err).Code == "InvalidRange" { // an empty object
			rc, info, _, err = core.GetObject(ctx, s.bucket, s.prefix+key, minio.GetObjectOptions{})
		}
		if err != nil {
			return nil, s.mapErr(ctx, "get", key, err)
		}
		return &s3Body{s: s, ctx: ctx, key: key, obj: rc, size: info.Size}, nil
	}
	total := info.Size
	if cr := hdr.Get("Content-Range"); cr != "" {
		if i := strings.LastIndexByte(cr, '/'); i >= 0 {
			if n, perr := strconv.ParseInt(cr[i+1:], 10, 64); perr == nil {
				total = n
			}
		}
	}
	first := &s3Body{s: s, ctx: ctx, key: key, obj: rc, size: info.Size}
	if total <= info.Size {
		return first, nil
	}
	return newRangeReader(ctx, s, key, info.ETag, total, first), nil
}

// rangeReader reads a large object as ranges of partSize, up to
// s.parallel of them in flight (what a single stream cannot get from a
// distant S3), delivered in order. Every range must match the first
// response's ETag: an object replaced meanwhile fails the read.
type rangeReader struct {
	s      *s3Store
	ctx    context.Context
	cancel context.CancelFunc
	key    string
	etag   string
	size   int64
	next   int64 // the next range to request
	queue  []chan rangeResult
	cur    []byte
	curBuf []byte // the buffer cur is in
	free   [][]byte
	err    error
}

type rangeResult struct {
	b   []byte
	err error
}

func newRangeReader(ctx context.Context, s *s3Store, key, etag string, size int64, first *s3Body) *rangeReader {
	rctx, cancel := context.WithCancel(ctx)
	r := &rangeReader{s: s, ctx: rctx, cancel: cancel, key: key, etag: etag, size: size, next: 1}
	ch := make(chan rangeResult, 1)
	r.queue = append(r.queue, ch)
	go func() {
		defer first.Close()
		b := make([]byte, s.partSize)
		n, err := io.ReadFull(first, b)
		ch <- r.result(b[:n], err, s.partSize)
	}()
	return r
}

// result checks that a range came whole.
func (r *rangeReader) result(b []byte, err error, want int64) rangeResult {
	if err == io.EOF || err == io.ErrUnexpectedEOF || err == nil && int64(len(b)) != want {
		err = fmt.Errorf("%w: reading %s from %s: a range ended after %d of %d bytes", ErrUnavailable, r.key, r.s.endpoint, len(b), want)
	}
	return rangeResult{b: b, err: err}
}

func (r *rangeReader) fetch(i int64, buf []byte) chan rangeResult {
	ch := make(chan rangeResult, 1)
	start := i * r.s.partSize
	end := min(start+r.s.partSize, r.size) - 1
	go func() {
		opts := minio.GetObjectOptions{}
		opts.SetRange(start, end)
		if r.etag != "" {
			opts.SetMatchETag(r.etag)
		}
		rc, _, _, err := minio.Core{Client: r.s.c}.GetObject(r.ctx, r.s.bucket, r.s.prefix+r.key, opts)
		if err != nil {
			ch <- rangeResult{err: r.s.mapErr(r.ctx, "get", r.key, err)}
			return
		}
		defer rc.Close()
		if buf == nil {
			buf = make([]byte, r.s.partSize)
		}
		b := buf[:end-start+1]
		n, err := io.ReadFull(rc, b)
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			err = r.s.mapErr(r.ctx, "get", r.key, err)
		}
		ch <- r.result(b[:n], err, end-start+1)
	}()
	return ch
}

func (r *rangeReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.curBuf != nil { // consumed: the next fetch reuses it
			r.free = append(r.free, r.curBuf)
			r.curBuf = nil
		}
		if r.err != nil {
			return 0, r.err
		}
		for len(r.queue) < r.s.parallel && r.next*r.s.partSize < r.size {
			var buf []byte
			if n := len(r.free); n > 0 {
				buf, r.free = r.free[n-1], r.free[:n-1]
			}
			r.queue = append(r.queue, r.fetch(r.next, buf))
			r.next++
		}
		if len(r.queue) == 0 {
			r.err = io.EOF
			return 0, io.EOF
		}
		res := <-r.queue[0]
		r.queue = r.queue[1:]
		if res.err != nil {
			if r.ctx.Err() != nil && r.err == nil {
				res.err = fmt.Errorf("snapshot: s3: get %s: %w", r.key, r.ctx.Err())
			}
			r.err = res.err
			r.cancel()
			return 0, r.err
		}
		r.cur = res.b
		if int64(cap(res.b)) == r.s.partSize {
			r.curBuf = res.b[:cap(res.b)]
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

func (r *rangeReader) Close() error {
	r.cancel()
	return nil
}

// s3Body reports a connection lost mid-object as ErrUnavailable, never as
// a short object (which Open would call truncated).
type s3Body struct {
	s    *s3Store
	ctx  context.Context
	key  string
	obj  io.ReadCloser
	size int64
	n    int64
}

func (b *s3Body) Read(p []byte) (int, error) {
	n, err := b.obj.Read(p)
	b.n += int64(n)
	switch {
	case err == io.EOF && b.n < b.size:
		return n, fmt.Errorf("%w: reading %s from %s: the connection ended after %d of %d bytes", ErrUnavailable, b.key, b.s.endpoint, b.n, b.size)
	case err != nil && err != io.EOF:
		return n, b.s.mapErr(b.ctx, "get", b.key, err)
	}
	return n, err
}

func (b *s3Body) Close() error { return b.obj.Close() }

func (s *s3Store) Delete(ctx context.Context, key string) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	err := s.c.RemoveObject(ctx, s.bucket, s.prefix+key, minio.RemoveObjectOptions{})
	if err = s.mapErr(ctx, "delete", key, err); errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

func (s *s3Store) List(ctx context.Context, prefix string) ([]Object, error) {
	if err := validPrefix(prefix); err != nil {
		return nil, err
	}
	var out []Object
	for o := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}) {
		if o.Err != nil {
			return nil, s.mapErr(ctx, "list", prefix, o.Err)
		}
		key := strings.TrimPrefix(o.Key, s.prefix)
		if ValidKey(key) != nil {
			continue // not one of ours
		}
		out = append(out, Object{Key: key, Size: o.Size, Modified: o.LastModified})
	}
	return out, nil
}

// partOptions sends a part with its MD5 (Content-MD5: the server refuses
// a part damaged in transit) instead of the SHA-256 payload signature the
// client otherwise streams over plain HTTP, which costs both ends a SHA-256
// and an HMAC per 64 KiB chunk. Over HTTPS the payload is not signed
// either way; TLS protects it.
func partOptions(data []byte) minio.PutObjectPartOptions {
	sum := md5.Sum(data)
	return minio.PutObjectPartOptions{Md5Base64: base64.StdEncoding.EncodeToString(sum[:]), DisableContentSha256: true}
}
