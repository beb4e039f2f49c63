package agent

import (
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

func TestLingerFollowsThePace(t *testing.T) {
	for _, c := range []struct {
		n       int
		elapsed time.Duration
		want    time.Duration
	}{
		{64 << 10, time.Millisecond, 4 * time.Millisecond}, // 64 MB/s: 256 KiB gather in 4 ms
		{256 << 10, time.Millisecond, time.Millisecond},    // 256 MB/s: the least wait
		{900 << 10, time.Millisecond, time.Millisecond},    // faster still: never below minLinger
		{8 << 10, time.Millisecond, 8 * time.Millisecond},  // a trickle: never above maxLinger
		{8 << 10, 24 * time.Hour, 8 * time.Millisecond},    // after a long quiet spell
		{1 << 20, time.Nanosecond, time.Millisecond},       // a full pipe at once
	} {
		if got := linger(c.n, c.elapsed); got != c.want {
			t.Errorf("linger(%d, %v) = %v, want %v", c.n, c.elapsed, got, c.want)
		}
	}
}
