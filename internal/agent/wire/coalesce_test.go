package wire

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
)

// recordingConn records each Write as one element.
type recordingConn struct {
	net.Conn
	writes [][]byte
}

func (r *recordingConn) Write(p []byte) (int, error) {
	r.writes = append(r.writes, append([]byte(nil), p...))
	return len(p), nil
}

func yamuxHeader(typ byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderSize)
	h[1] = typ
	binary.BigEndian.PutUint32(h[4:8], 7)
	binary.BigEndian.PutUint32(h[8:12], length)
	return h
}

func TestCoalescingConnMergesADataHeaderWithItsBody(t *testing.T) {
	rec := &recordingConn{}
	c := &CoalescingConn{Conn: rec}
	hdr, body := yamuxHeader(yamuxTypeData, 5), []byte("hello")
	if n, err := c.Write(hdr); n != len(hdr) || err != nil {
		t.Fatalf("header: %d %v", n, err)
	}
	if len(rec.writes) != 0 {
		t.Fatal("a data header went out before its body")
	}
	if n, err := c.Write(body); n != len(body) || err != nil {
		t.Fatalf("body: %d %v, want %d (the header is not counted twice)", n, err, len(body))
	}
	if len(rec.writes) != 1 || !bytes.Equal(rec.writes[0], append(hdr, body...)) {
		t.Fatalf("writes %q", rec.writes)
	}
}

func TestCoalescingConnPassesOtherFramesThrough(t *testing.T) {
	rec := &recordingConn{}
	c := &CoalescingConn{Conn: rec}
	frames := [][]byte{
		yamuxHeader(1, 4096),          // window update: its length is a delta, no body follows
		yamuxHeader(2, 1),             // ping
		yamuxHeader(yamuxTypeData, 0), // a data frame without body (SYN, FIN)
		[]byte("not a header at all"), // anything else
	}
	for _, f := range frames {
		if _, err := c.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	if len(rec.writes) != len(frames) {
		t.Fatalf("%d writes for %d frames", len(rec.writes), len(frames))
	}
	for i := range frames {
		if !bytes.Equal(rec.writes[i], frames[i]) {
			t.Fatalf("write %d = %q, want %q", i, rec.writes[i], frames[i])
		}
	}
}

func TestCoalescingConnDoesNotCopyLargeBodies(t *testing.T) {
	rec := &recordingConn{}
	c := &CoalescingConn{Conn: rec}
	body := make([]byte, coalesceMax+1)
	hdr := yamuxHeader(yamuxTypeData, uint32(len(body)))
	_, _ = c.Write(hdr)
	if n, err := c.Write(body); n != len(body) || err != nil {
		t.Fatalf("%d %v", n, err)
	}
	// recordingConn has no writev: net.Buffers falls back to one write
	// per buffer, but never to a copy.
	if len(rec.writes) != 2 || !bytes.Equal(rec.writes[0], hdr) || len(rec.writes[1]) != len(body) {
		t.Fatalf("%d writes", len(rec.writes))
	}
}

func TestSmallFramesAreOneWrite(t *testing.T) {
	rec := &recordingConn{}
	w := NewWriter(rec)
	if err := w.Frame(KindStdout, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	if err := w.Frame(KindDone, nil); err != nil {
		t.Fatal(err)
	}
	if len(rec.writes) != 2 {
		t.Fatalf("%d writes for 2 frames", len(rec.writes))
	}
	r := NewReader(bytes.NewReader(bytes.Join(rec.writes, nil)))
	for _, want := range []struct {
		k Kind
		b string
	}{{KindStdout, "abc"}, {KindDone, ""}} {
		k, b, err := r.Next()
		if err != nil || k != want.k || string(b) != want.b {
			t.Fatalf("got %q %q %v, want %q %q", k, b, err, want.k, want.b)
		}
	}
}
