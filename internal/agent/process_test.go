package agent

import "testing"

func TestExecableCommand(t *testing.T) {
	for cmd, want := range map[string]string{
		"python3 -m http.server 8000":            "python3",
		`python3 -c 'import a; print(1)'`:        "python3",
		`sh -c "a && b"`:                         "sh",
		"cat":                                    "cat",
		"  sleep 10 ":                            "sleep",
		"./server --port=8000 > log 2>/dev/null": "./server",
		"echo a; echo b":                         "",
		"a && b":                                 "",
		"a | b":                                  "",
		"sleep 1 &":                              "",
		"(sleep 1)":                              "",
		"X=1 env":                                "",
		"cd /tmp":                                "",
		"read x":                                 "",
		"while true; do :; done":                 "",
		"if true":                                "",
		"$CMD arg":                               "",
		"'quoted' arg":                           "",
		"echo 'unterminated":                     "",
		"a\nb":                                   "",
		`echo "a;b" 'c|d' \; e`:                  "echo",
	} {
		if got := execableCommand(cmd); got != want {
			t.Errorf("execableCommand(%q) = %q, want %q", cmd, got, want)
		}
	}
}

// The ring keeps exactly the newest procOutputBuffer bytes, with their
// offsets, whatever the chunk sizes.
func TestOutputRingKeepsTheNewestBytes(t *testing.T) {
	var r outputRing
	var total int64
	for i := 0; total < 5*procOutputBuffer; i++ {
		n := 1 + (i*7919)%(70<<10)
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(total + int64(j))
		}
		r.add('O', b)
		total += int64(n)
		if r.size > procOutputBuffer {
			t.Fatalf("holds %d bytes", r.size)
		}
	}
	if r.size != procOutputBuffer || r.end != total {
		t.Fatalf("size %d end %d, want %d and %d", r.size, r.end, procOutputBuffer, total)
	}
	chunks, next, dropped := r.since(0)
	if next != total || dropped != total-procOutputBuffer {
		t.Fatalf("next %d dropped %d", next, dropped)
	}
	off := total - procOutputBuffer
	for _, c := range chunks {
		if c.off != off {
			t.Fatalf("chunk at %d, want %d", c.off, off)
		}
		for j, b := range c.data {
			if b != byte(c.off+int64(j)) {
				t.Fatalf("byte at %d is wrong", c.off+int64(j))
			}
		}
		off += int64(len(c.data))
	}
	if chunks, _, dropped := r.since(total - 10); dropped != 0 || len(chunks) != 1 || len(chunks[0].data) != 10 {
		t.Fatalf("since(end-10): %d chunks, dropped %d", len(chunks), dropped)
	}
}
