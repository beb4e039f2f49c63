// Snapshot storage benchmarks (internal/snapshot): sealing a snapshot
// directory (tar, zstd, AES-256-GCM chunks) into a store and restoring it,
// on the local filesystem store and on S3 (a versitygw on loopback), for
// a synthetic directory of 64 and 256 MiB and for a real runsc checkpoint
// of an idle debian-12 sandbox. The baseline in the same run is the
// store alone: the same bytes put and got with no sealing at all.

package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/snapshot/s3test"
)

// syntheticSnapshot is a directory shaped like a checkpoint: one memory
// image of size bytes, a quarter zero pages and the rest random (so zstd
// finds what a real image's zero pages give it and no more), plus a small
// metadata file.
func syntheticSnapshot(b *testing.B, size int) string {
	b.Helper()
	dir := b.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "image"), 0o700); err != nil {
		b.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "image", "pages.img"))
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := 0; i < size>>20; i++ {
		clear(buf)
		if i%4 != 0 {
			rand.Read(buf)
		}
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	f.Close()
	if err := os.WriteFile(filepath.Join(dir, "snapshot.json"), []byte(`{"template":"debian-12"}`), 0o600); err != nil {
		b.Fatal(err)
	}
	return dir
}

// peakHeap samples the heap in use while an operation runs (with the GC
// made eager, so garbage waiting for a collection is not counted as
// memory the transfer holds).
type peakHeap struct {
	stop chan struct{}
	wg   sync.WaitGroup
	base uint64
	max  uint64
	old  int
}

func heapBytes() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func startPeak() *peakHeap {
	p := &peakHeap{stop: make(chan struct{}), old: debug.SetGCPercent(10)}
	p.base = heapBytes()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				if h := heapBytes(); h > p.max {
					p.max = h
				}
			}
		}
	}()
	return p
}

func (p *peakHeap) done() float64 {
	close(p.stop)
	p.wg.Wait()
	debug.SetGCPercent(p.old)
	if p.max < p.base {
		return 0
	}
	return float64(p.max-p.base) / (1 << 20)
}

type benchStore struct {
	name  string
	store snapshot.Store
	srv   *s3test.Server // the S3 server, nil for fs
}

func benchStores(b *testing.B) []benchStore {
	srv := s3test.Start(b)
	s3, err := snapshot.NewS3(srv.Config())
	if err != nil {
		b.Fatal(err)
	}
	return []benchStore{{"fs", snapshot.NewFS(b.TempDir()), nil}, {"s3", s3, srv}}
}

// cpuMeter reports the CPU time (user + system) this process and, for S3,
// the server process spent per operation: on a host whose load swings,
// a steadier figure than the wall clock.
type cpuMeter struct {
	srv        *s3test.Server
	self, peer time.Duration
}

// procCPU reads utime + stime of pid from /proc (clock ticks of 10 ms).
func serverCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+k) * 10 * time.Millisecond
}

func startCPU(srv *s3test.Server) *cpuMeter {
	m := &cpuMeter{srv: srv, self: selfCPU()}
	if srv != nil {
		m.peer = serverCPU(srv.PID())
	}
	return m
}

func (m *cpuMeter) report(b *testing.B, n int) {
	b.ReportMetric(float64(selfCPU()-m.self)/float64(n)/1e6, "cpu-ms/op")
	if m.srv != nil {
		b.ReportMetric(float64(serverCPU(m.srv.PID())-m.peer)/float64(n)/1e6, "server-cpu-ms/op")
	}
}

func benchKey(b *testing.B) snapshot.Key {
	raw := make([]byte, snapshot.KeySize)
	rand.Read(raw)
	k, err := snapshot.NewKey(raw)
	if err != nil {
		b.Fatal(err)
	}
	return k
}

// BenchmarkSnapshotTransfer: op=up is Seal piped into Put (snapshot.Upload),
// op=down is Get piped into Open (snapshot.Download, which verifies and
// unpacks into a fresh directory, removed untimed). codec=zstd is the
// default, codec=none the same stream uncompressed (still encrypted),
// codec=raw the baseline: the directory's one big file put and got as it
// is. MB/s is of the directory's bytes.
func BenchmarkSnapshotTransfer(b *testing.B) {
	stores := benchStores(b)
	k := benchKey(b)
	ctx := context.Background()
	for _, size := range []int{64 << 20, 256 << 20} {
		src := syntheticSnapshot(b, size)
		for _, st := range stores {
			for _, codec := range []string{"raw", "zstd", "none"} {
				key := fmt.Sprintf("snapshots/bench/%d-%s.snap", size>>20, codec)
				var sealedBytes int64
				b.Run(fmt.Sprintf("size=%dMiB/store=%s/codec=%s/op=up", size>>20, st.name, codec), func(b *testing.B) {
					b.SetBytes(int64(size))
					var peak float64
					cpu, n := startCPU(st.srv), 0
					for b.Loop() {
						n++
						p := startPeak()
						switch codec {
						case "raw":
							f, err := os.Open(filepath.Join(src, "image", "pages.img"))
							if err != nil {
								b.Fatal(err)
							}
							err = st.store.Put(ctx, key, f)
							f.Close()
							if err != nil {
								b.Fatal(err)
							}
							sealedBytes = int64(size)
						default:
							s, err := snapshot.UploadWith(ctx, st.store, key, src, k, snapshot.Manifest{}, snapshot.Options{NoCompression: codec == "none"})
							if err != nil {
								b.Fatal(err)
							}
							sealedBytes = s.Bytes
						}
						peak = max(peak, p.done())
					}
					cpu.report(b, n)
					b.ReportMetric(float64(sealedBytes)/float64(size), "stored/orig")
					b.ReportMetric(peak, "peak-heap-MiB")
				})
				b.Run(fmt.Sprintf("size=%dMiB/store=%s/codec=%s/op=down", size>>20, st.name, codec), func(b *testing.B) {
					b.SetBytes(int64(size))
					var peak float64
					base := b.TempDir()
					i := 0
					cpu := startCPU(st.srv)
					for b.Loop() {
						dst := filepath.Join(base, fmt.Sprint(i))
						i++
						p := startPeak()
						switch codec {
						case "raw":
							rc, err := st.store.Get(ctx, key)
							if err != nil {
								b.Fatal(err)
							}
							os.MkdirAll(dst, 0o700)
							f, err := os.Create(filepath.Join(dst, "pages.img"))
							if err != nil {
								b.Fatal(err)
							}
							_, err = io.Copy(f, rc)
							rc.Close()
							f.Close()
							if err != nil {
								b.Fatal(err)
							}
						default:
							if _, err := snapshot.Download(ctx, st.store, key, dst, k); err != nil {
								b.Fatal(err)
							}
						}
						peak = max(peak, p.done())
						b.StopTimer()
						os.RemoveAll(dst)
						b.StartTimer()
					}
					cpu.report(b, i)
					b.ReportMetric(peak, "peak-heap-MiB")
				})
			}
		}
	}
}

// BenchmarkSnapshotCheckpointImage checkpoints a debian-12 sandbox (0.5
// vCPU, 512 MiB) once with the runtime driver, then seals that real
// image: codec=zstd vs codec=none, to io.Discard (the format's own cost),
// and through Upload/Download on both stores. state=idle is a sandbox that
// ran `true`; state=busy also holds 64 MiB of the template's binaries and
// libraries in /tmp (a tmpfs: sandbox memory), as a sandbox that built or
// downloaded something would. image-MiB is the checkpoint directory,
// stored/orig what the sealed stream is of it.
func BenchmarkSnapshotCheckpointImage(b *testing.B) {
	for _, state := range []string{"idle", "busy"} {
		b.Run("state="+state, func(b *testing.B) { benchCheckpointImage(b, state == "busy") })
	}
}

func benchCheckpointImage(b *testing.B, busy bool) {
	env := newDriver(b)
	ctx := timeout(b, 10*time.Minute)
	sb := create(b, env, sized(0.5))
	execTrue(ctx, b, sb)
	if busy {
		res, err := sb.Exec(ctx, runtime.ExecRequest{Command: "cat /usr/bin/* /usr/lib/x86_64-linux-gnu/* 2>/dev/null | head -c 67108864 > /tmp/blob; test $(stat -c %s /tmp/blob) = 67108864", Stdout: io.Discard, Stderr: io.Discard})
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("filling /tmp: %+v %v", res, err)
		}
	}
	dir := b.TempDir()
	snap, err := sb.Checkpoint(ctx, dir)
	if err != nil {
		b.Fatal(err)
	}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			b.Logf("checkpoint file %s: %d bytes", strings.TrimPrefix(p, dir), fi.Size())
		}
		return nil
	})
	stores := benchStores(b)
	k := benchKey(b)
	for _, codec := range []string{"zstd", "none"} {
		o := snapshot.Options{NoCompression: codec == "none"}
		b.Run(fmt.Sprintf("codec=%s/op=seal", codec), func(b *testing.B) {
			b.SetBytes(snap.Bytes)
			var n int64
			cpu, ops := startCPU(nil), 0
			for b.Loop() {
				ops++
				var cw countingDiscard
				s, err := snapshot.SealWith(ctx, dir, &cw, k, snapshot.Manifest{}, o)
				if err != nil {
					b.Fatal(err)
				}
				n = s.Bytes
			}
			cpu.report(b, ops)
			b.ReportMetric(float64(snap.Bytes)/(1<<20), "image-MiB")
			b.ReportMetric(float64(n)/float64(snap.Bytes), "stored/orig")
		})
		for _, st := range stores {
			key := "snapshots/bench/real-" + codec + ".snap"
			b.Run(fmt.Sprintf("codec=%s/store=%s/op=up", codec, st.name), func(b *testing.B) {
				b.SetBytes(snap.Bytes)
				cpu, ops := startCPU(st.srv), 0
				for b.Loop() {
					ops++
					if _, err := snapshot.UploadWith(ctx, st.store, key, dir, k, snapshot.Manifest{}, o); err != nil {
						b.Fatal(err)
					}
				}
				cpu.report(b, ops)
			})
			b.Run(fmt.Sprintf("codec=%s/store=%s/op=down", codec, st.name), func(b *testing.B) {
				b.SetBytes(snap.Bytes)
				base := b.TempDir()
				i := 0
				cpu := startCPU(st.srv)
				for b.Loop() {
					dst := filepath.Join(base, fmt.Sprint(i))
					i++
					if _, err := snapshot.Download(ctx, st.store, key, dst, k); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					os.RemoveAll(dst)
					b.StartTimer()
				}
				cpu.report(b, i)
			})
		}
	}
}

type countingDiscard struct{ n int64 }

func (c *countingDiscard) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }
