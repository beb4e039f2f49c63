package e2e

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

// printfBytes is a shell printf of these byte values, each an octal escape.
func printfBytes(vals []byte) string {
	var b strings.Builder
	b.WriteString("printf '")
	for _, v := range vals {
		fmt.Fprintf(&b, "\\%03o", v)
	}
	b.WriteString("'")
	return b.String()
}

func byteRange(from, to int) []byte {
	out := make([]byte, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, byte(i))
	}
	return out
}

// TestExecStreamEveryByteOrderAndExit: through the Go SDK's chunks (binary
// framing) every byte value arrives exact, whether a write is cut by the
// frames or not; output without a final newline is kept; stdout and stderr
// keep the order they were written in; the exit code arrives.
func TestExecStreamEveryByteOrderAndExit(t *testing.T) {
	_, sbx, ctx := dataSandbox(t)
	all := byteRange(0, 256)
	rev := bytes.Clone(all)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	cmd := printfBytes(all[:100]) + "; sleep 0.3; " + printfBytes(all[100:195]) + "; sleep 0.3; " + printfBytes(all[195:]) +
		"; " + printfBytes(rev) + " >&2"
	var out, errb bytes.Buffer
	res, err := sbx.ExecStreamTo(ctx, cmd, orkestr.ExecOptions{}, &out, &errb)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%v %+v", err, res)
	}
	if !bytes.Equal(out.Bytes(), all) || !bytes.Equal(errb.Bytes(), rev) {
		t.Fatalf("stdout %q\nstderr %q", out.Bytes(), errb.Bytes())
	}

	// 4 MiB of 0..255 repeated, written 1000 bytes at a time and cut
	// wherever the frames fall, through Chunks (a buffer per chunk) rather
	// than ExecStreamTo.
	sh(t, ctx, sbx, printfBytes(all)+" > /tmp/b; for i in $(seq 14); do cat /tmp/b /tmp/b > /tmp/b2; mv /tmp/b2 /tmp/b; done")
	st, err := sbx.ExecStream(ctx, "dd if=/tmp/b bs=1000 status=none", orkestr.ExecOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for c := range st.Chunks() {
		got = append(got, c.Data)
	}
	if res, err := st.Wait(); err != nil || res.ExitCode != 0 {
		t.Fatalf("%v %+v", err, res)
	}
	if joined := strings.Join(got, ""); joined != strings.Repeat(string(all), 1<<14) {
		t.Fatalf("%d bytes in %d chunks, not 4 MiB of 0..255 repeated", len(joined), len(got))
	}

	// No final newline, and the exit code of the command.
	out.Reset()
	errb.Reset()
	res, err = sbx.ExecStreamTo(ctx, "printf 'no newline'; printf 'on stderr either' >&2; exit 7", orkestr.ExecOptions{}, &out, &errb)
	if err != nil || res.ExitCode != 7 || out.String() != "no newline" || errb.String() != "on stderr either" {
		t.Fatalf("%v %+v %q %q", err, res, out.String(), errb.String())
	}

	// stdout and stderr in the order they were written.
	st, err = sbx.ExecStream(ctx, "for i in 1 2 3; do echo out$i; sleep 0.3; echo err$i >&2; sleep 0.3; done", orkestr.ExecOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for c := range st.Chunks() {
		if n := len(order); n > 0 && strings.HasPrefix(order[n-1], c.Stream+":") {
			order[n-1] += c.Data
		} else {
			order = append(order, c.Stream+":"+c.Data)
		}
	}
	if _, err := st.Wait(); err != nil {
		t.Fatal(err)
	}
	want := []string{"stdout:out1\n", "stderr:err1\n", "stdout:out2\n", "stderr:err2\n", "stdout:out3\n", "stderr:err3\n"}
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Fatalf("order %q, want %q", order, want)
	}
}
