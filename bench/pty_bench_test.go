// Terminal benchmark: keystroke echo through GET /v1/sandboxes/{id}/pty
// of a real orkestrd, as the Go SDK's Terminal sees it.

package bench

import (
	"bytes"
	"testing"
	"time"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

// BenchmarkAPIPtyEcho is the keystroke echo round trip of a terminal: one
// byte written to the WebSocket until the same byte comes back, over
// loopback, one after another. mode=tty: a program that does not read
// (`sleep`), so the echo is the terminal's own (gVisor's line discipline,
// no process wakes up); mode=program: `stty raw -echo; cat`, so the echo
// is a program reading the byte and writing it back, as a shell's line
// editor does. get-p50-ms is the baseline taken interleaved: a GET of the
// same sandbox over the same loopback (HTTP, authentication and the store,
// without the sandbox).
func BenchmarkAPIPtyEcho(b *testing.B) {
	s := startServer(b, 0, templateName)
	for _, mode := range []struct{ name, cmd string }{
		{"tty", "sleep 3600"},
		{"program", "stty raw -echo; echo ready; exec cat"},
	} {
		b.Run("mode="+mode.name, func(b *testing.B) {
			ctx := timeout(b, 10*time.Minute)
			sb := s.create(ctx, "small")
			b.Cleanup(func() { s.terminate(sb) })
			term, err := sb.Terminal(ctx, orkestr.TerminalOptions{Command: mode.cmd})
			if err != nil {
				b.Fatal(err)
			}
			defer term.Close()
			buf := make([]byte, 4096)
			var seen []byte
			readUntil := func(want []byte) {
				for !bytes.Contains(seen, want) {
					n, err := term.Read(buf)
					if err != nil {
						b.Fatalf("read: %v (seen %q)", err, seen)
					}
					seen = append(seen, buf[:n]...)
				}
				seen = seen[:0]
			}
			if mode.name == "program" {
				readUntil([]byte("ready"))
			}
			key := []byte{0}
			echo := func(i int) {
				key[0] = 'a' + byte(i%26)
				if _, err := term.Write(key); err != nil {
					b.Fatalf("write: %v", err)
				}
				readUntil(key)
			}
			for i := range 20 {
				echo(i)
			}
			var ds, gets durations
			i := 0
			for b.Loop() {
				b.StopTimer()
				t0 := time.Now()
				if err := sb.Refresh(ctx); err != nil {
					b.Fatalf("get: %v", err)
				}
				gets.add(time.Since(t0))
				b.StartTimer()
				t0 = time.Now()
				echo(i)
				ds.add(time.Since(t0))
				i++
			}
			ds.report(b, "p50-ms")
			ds.reportQuantile(b, 0.9, "p90-ms")
			gets.report(b, "get-p50-ms")
		})
	}
}
