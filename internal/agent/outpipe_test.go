package agent

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

func newTestOutputPipe(t *testing.T) (*outputPipe, *os.File, *pipeStop) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stop, err := newPipeStop()
	if err != nil {
		t.Fatal(err)
	}
	out, err := newOutputPipe(r, stop)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close(); w.Close(); stop.close() })
	return out, w, stop
}

// An output pipe reads what is written, waits for more, and ends at EOF
// once every writer has closed it.
func TestOutputPipeReadsUntilEOF(t *testing.T) {
	out, w, _ := newTestOutputPipe(t)
	got := make(chan string)
	go func() {
		b, err := io.ReadAll(out)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		got <- string(b)
	}()
	for _, s := range []string{"a", "\x00\xff", "no newline"} {
		if _, err := w.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	if s := <-got; s != "a\x00\xffno newline" {
		t.Fatalf("read %q", s)
	}
}

// The stop releases a read waiting on a pipe that a background process
// keeps open, after handing over what the pipe still holds; after the stop
// at most pipeSize more bytes are taken.
func TestOutputPipeStop(t *testing.T) {
	out, w, stop := newTestOutputPipe(t)
	res := make(chan error)
	go func() {
		_, err := out.Read(make([]byte, 16))
		res <- err
	}()
	stop.give()
	if err := <-res; !errors.Is(err, errOutputStopped) {
		t.Fatalf("a waiting read after the stop: %v", err)
	}

	// What was written before is still read after the stop.
	if _, err := w.WriteString("late"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if n, err := out.Read(buf); err != nil || string(buf[:n]) != "late" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if _, err := out.Read(buf); !errors.Is(err, errOutputStopped) {
		t.Fatalf("an empty pipe after the stop: %v", err)
	}

	// A writer that never stops: the reader gives up after pipeSize.
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}()
	big := make([]byte, 256<<10)
	taken := 0
	for !out.full() {
		n, err := out.Read(big)
		taken += n
		if err != nil && !errors.Is(err, errOutputStopped) {
			t.Fatal(err)
		}
		if taken > 2*pipeSize {
			t.Fatalf("took %d bytes after the stop", taken)
		}
	}
	out.Close() // the writer gets EPIPE and ends; the cleanup's Close is a no-op
}

func TestOpenForWriting(t *testing.T) {
	for info, want := range map[string]bool{
		"pos:\t0\nflags:\t02004000\nmnt_id:\t13\n": false, // O_RDONLY|O_NONBLOCK|O_CLOEXEC
		"pos:\t0\nflags:\t01\nmnt_id:\t13\n":       true,  // O_WRONLY
		"pos:\t0\nflags:\t02\n":                    true,  // O_RDWR
		"pos:\t0\n":                                true,  // unknown: assume a writer
		"flags:\tzz\n":                             true,
	} {
		if got := openForWriting([]byte(info)); got != want {
			t.Errorf("%q: got %v, want %v", info, got, want)
		}
	}
}

func TestWriterElsewhere(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	fd := int(r.Fd())
	if !writerElsewhere(fd) {
		t.Fatal("the write end is open in this process")
	}
	w.Close()
	if writerElsewhere(fd) {
		t.Fatal("no process holds the write end")
	}
}

// A bulk writer's 8 KiB writes, paced as a sandbox's are (a pipe on the
// host alone fills faster than any reader), reach the host byte-exact and
// in order, in frames that each hold gatherFor bytes or span gatherMax:
// so at most one frame per gatherMax of the stream's time, besides the
// full ones and the last. A slow host stretches the writer's pauses and
// the stream's time alike, so the bound holds however busy it is; a frame
// per read (what the gather replaces) passes it by far on a quiet host.
func TestGatherFramesABulkWriter(t *testing.T) {
	out, w, _ := newTestOutputPipe(t)
	growPipe(w)
	const total, write = 2 << 20, 8 << 10
	want := make([]byte, total)
	for i := range want {
		want[i] = byte(i*7 + i>>13)
	}
	go func() {
		for off := 0; off < total; off += write {
			if _, err := w.Write(want[off : off+write]); err != nil {
				return
			}
			time.Sleep(50 * time.Microsecond)
		}
		w.Close()
	}()
	var got []byte
	frames := 0
	start := time.Now()
	for {
		chunk, err := out.gather(make([]byte, outputChunk))
		got = append(got, chunk...)
		if len(chunk) > 0 {
			frames++
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(start)
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, not the %d written, or not in order", len(got), len(want))
	}
	if most := int(took/gatherMax) + total/gatherFor + 1; frames > most {
		t.Fatalf("%d writes over %v came in %d frames, more than the %d a gather of %v or %d bytes allows", total/write, took, frames, most, gatherMax, gatherFor)
	}
}

// A write under bulkRead (a prompt, a line of a log) is handed on at
// once, without a gather, even while the writer keeps the pipe open.
func TestGatherHandsOnASmallWriteAtOnce(t *testing.T) {
	out, w, _ := newTestOutputPipe(t)
	if _, err := w.WriteString("prompt> "); err != nil {
		t.Fatal(err)
	}
	chunk, err := out.gather(make([]byte, outputChunk))
	if err != nil || string(chunk) != "prompt> " {
		t.Fatalf("next = %q, %v", chunk, err)
	}
	// Nothing more is read before the writer writes again.
	if n, err := out.readReady(make([]byte, 16)); n != 0 || err != nil {
		t.Fatalf("readReady on an empty pipe = %d, %v", n, err)
	}
}
