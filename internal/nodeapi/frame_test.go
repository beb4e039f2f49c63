package nodeapi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func TestFramesRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	fw := &frameWriter{w: &buf}
	big := bytes.Repeat([]byte{0, 1, 2, 0xff}, MaxFrame/2) // two frames' worth
	if n, err := fw.data(frameStdout, big); err != nil || n != len(big) {
		t.Fatal(n, err)
	}
	if err := fw.frame(frameEOF, nil); err != nil {
		t.Fatal(err)
	}
	if err := fw.frame(frameInput, make([]byte, MaxFrame+1)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("oversized frame written: %v", err)
	}
	fr := frameReader{r: &buf}
	var got []byte
	for {
		typ, b, err := fr.next()
		if err != nil {
			t.Fatal(err)
		}
		if typ == frameEOF {
			break
		}
		if typ != frameStdout || len(b) > MaxFrame {
			t.Fatalf("frame %q of %d bytes", typ, len(b))
		}
		got = append(got, b...)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("data changed")
	}
	if _, _, err := fr.next(); err != io.EOF {
		t.Fatalf("after the last frame: %v", err)
	}
}

// FuzzFrameReader: whatever a peer sends, the reader returns frames within
// the bound or an error, and never holds more than one frame's memory.
func FuzzFrameReader(f *testing.F) {
	f.Add([]byte{'P', 0, 0, 0, 2, '{', '}'})
	f.Add([]byte{'i', 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{'i', 0, 4, 0, 1})
	f.Add([]byte{'E', 0, 0, 0, 5, 'x'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		fr := frameReader{r: bytes.NewReader(in)}
		for range 1000 {
			_, b, err := fr.next()
			if err != nil {
				if len(in) >= 5 && binary.BigEndian.Uint32(in[1:5]) > MaxFrame && !errors.Is(err, ErrProtocol) && len(fr.buf) == 0 {
					t.Fatalf("oversized first frame: %v", err)
				}
				return
			}
			if len(b) > MaxFrame || cap(fr.buf) > MaxFrame {
				t.Fatalf("frame of %d bytes (buffer %d)", len(b), cap(fr.buf))
			}
		}
	})
}

// FuzzDecodeError: any code and message from a node decode to an error
// whose text is the message and that matches at most one sentinel.
func FuzzDecodeError(f *testing.F) {
	for _, c := range errorCodes {
		f.Add(c.Code, c.Sentinel.Error()+": detail")
	}
	f.Add("", "")
	f.Add("internal", "\x00\xff")
	f.Fuzz(func(t *testing.T, code, msg string) {
		err := decodeError(wireError{Code: code, Message: msg})
		if msg != "" && err.Error() != msg {
			t.Fatalf("text %q, want %q", err.Error(), msg)
		}
		n := 0
		for _, c := range errorCodes {
			if errors.Is(err, c.Sentinel) {
				n++
			}
		}
		if n > 1 {
			t.Fatalf("%q matches %d sentinels", code, n)
		}
	})
}
