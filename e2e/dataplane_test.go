package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"

	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	orkestr "github.com/orkestr-eu/orkestr/sdk/go"
)

// dataSandbox starts a server and one medium sandbox on it.
func dataSandbox(t *testing.T) (*apiServer, *orkestr.Sandbox, context.Context) {
	t.Helper()
	s := startAPI(t, serverOpts{logLevel: "info"})
	c := sdkClient(t, s, s.key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	sbx, err := c.CreateSandbox(ctx, orkestr.CreateParams{Template: "debian-12", Size: "medium"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sbx.Terminate(context.Background()) })
	return s, sbx, ctx
}

// sh runs command in sbx and returns its stdout; it fails the test unless
// the command exits 0.
func sh(t *testing.T, ctx context.Context, sbx *orkestr.Sandbox, command string) string {
	t.Helper()
	res, err := sbx.Exec(ctx, command, orkestr.ExecOptions{TimeoutSeconds: 300})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%s: %v %+v", command, err, res)
	}
	return res.Stdout
}

// cancelAfter is a reader that cancels ctx once n bytes have been read.
type cancelAfter struct {
	r      io.Reader
	n      int64
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	if c.n <= 0 {
		c.cancel()
		time.Sleep(50 * time.Millisecond)
	}
	n, err := c.r.Read(p)
	c.n -= int64(n)
	return n, err
}

// TestFilesRoundTripByteExact: a random 256 MiB file and an empty one go
// up and come back byte for byte; an upload cut by the client leaves
// neither the target nor a temporary file behind.
func TestFilesRoundTripByteExact(t *testing.T) {
	_, sbx, ctx := dataSandbox(t)
	files := sbx.Files()

	data := make([]byte, 256<<20)
	_, _ = rand.Read(data)
	want := sha256.Sum256(data)
	n, err := files.WriteFrom(ctx, "/workspace/big.bin", bytes.NewReader(data))
	if err != nil || n != int64(len(data)) {
		t.Fatalf("upload: %d, %v", n, err)
	}
	if got := strings.Fields(sh(t, ctx, sbx, "sha256sum /workspace/big.bin"))[0]; got != fmt.Sprintf("%x", want) {
		t.Fatalf("sha256 in the sandbox %s, want %x", got, want)
	}
	h := sha256.New()
	n, err = files.ReadTo(ctx, "/workspace/big.bin", h)
	if err != nil || n != int64(len(data)) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("download: %d bytes, %v, sha256 %x", n, err, h.Sum(nil))
	}

	if err := files.WriteBytes(ctx, "/workspace/empty", nil); err != nil {
		t.Fatal(err)
	}
	if got, err := files.ReadBytes(ctx, "/workspace/empty"); err != nil || len(got) != 0 {
		t.Fatalf("empty file: %q %v", got, err)
	}
	if out := sh(t, ctx, sbx, "stat -c %s /workspace/empty"); out != "0\n" {
		t.Fatalf("empty file has size %q in the sandbox", out)
	}

	// Cut after 64 MiB: nothing at the target, no temporary file beside it.
	cctx, cancel := context.WithCancel(ctx)
	_, err = files.WriteFrom(cctx, "/workspace/cut/cut.bin", &cancelAfter{r: bytes.NewReader(data), n: 64 << 20, cancel: cancel})
	cancel()
	if err == nil {
		t.Fatal("an upload cut by the client succeeded")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := sh(t, ctx, sbx, "ls -A /workspace/cut 2>/dev/null; true")
		if out == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a cut upload left %q in /workspace/cut", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestExecStreamBinarySafe: output that is not UTF-8, NUL bytes and no
// trailing newline arrive byte-exact through the Go SDK (binary framing),
// and the NDJSON default still serves text.
func TestExecStreamBinarySafe(t *testing.T) {
	s, sbx, ctx := dataSandbox(t)
	const cmd = `printf '\377\376\000abc\303'; printf 'err\375' >&2; printf '\342\202'; printf '\254 end'`
	want := "\xff\xfe\x00abc\xc3\xe2\x82\xac end"
	var out, errb bytes.Buffer
	res, err := sbx.ExecStreamTo(ctx, cmd, orkestr.ExecOptions{}, &out, &errb)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%v %+v", err, res)
	}
	if out.String() != want || errb.String() != "err\xfd" {
		t.Fatalf("stdout %q stderr %q, want %q and %q", out.String(), errb.String(), want, "err\xfd")
	}

	// The default (no Accept) is NDJSON as before.
	r := s.do("POST", "/v1/sandboxes/"+sbx.ID+"/exec/stream", s.key, map[string]any{"command": "printf 'a\\nb'"})
	if r.status != 200 || r.header.Get("Content-Type") != "application/x-ndjson" || !strings.Contains(string(r.body), `{"type":"stdout","data":"a\nb"}`) {
		t.Fatalf("NDJSON stream: %d %s %s", r.status, r.header.Get("Content-Type"), r.body)
	}
}

// slowWriter takes its time over every write and checks the pattern.
type patternChecker struct {
	pattern []byte
	n       int64
	writes  int
	delay   time.Duration
	bad     error
}

func (p *patternChecker) Write(b []byte) (int, error) {
	for i, c := range b {
		if c != p.pattern[(p.n+int64(i))%int64(len(p.pattern))] && p.bad == nil {
			p.bad = fmt.Errorf("byte %d is %q", p.n+int64(i), c)
		}
	}
	p.n += int64(len(b))
	p.writes++
	if p.delay > 0 {
		time.Sleep(p.delay)
	}
	return len(b), nil
}

// TestExecStreamBackPressure: a 0.5 GiB stream whose reader stops stops the
// command (nothing piles up in the server), then arrives whole and
// byte-exact when read slowly.
func TestExecStreamBackPressure(t *testing.T) {
	s, sbx, ctx := dataSandbox(t)
	const mib = 512
	cmd := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do yes 0123456789abcde | head -c 1048576; i=$((i+1)); echo $i > /tmp/progress; done`, mib)
	st, err := sbx.ExecStream(ctx, cmd, orkestr.ExecOptions{TimeoutSeconds: 600})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	check := &patternChecker{pattern: []byte("0123456789abcde\n")}
	next, stop := iterPull(st)
	defer stop()
	c, ok := next()
	if !ok {
		t.Fatal("no output")
	}
	_, _ = check.Write([]byte(c.Data))
	rss0 := rssMiB(t, s.cmd.Process.Pid)
	agent0 := agentRSSMiB(t, ctx, sbx)

	// The reader stalls: the command must stall too, early. On a loaded
	// host the buffers in between may take a while to fill, so it is
	// stalled once two readings 2 s apart agree (within 30 s).
	time.Sleep(3 * time.Second)
	p1 := sh(t, ctx, sbx, "cat /tmp/progress")
	var p2 string
	for deadline := time.Now().Add(30 * time.Second); ; p1 = p2 {
		time.Sleep(2 * time.Second)
		p2 = sh(t, ctx, sbx, "cat /tmp/progress")
		if p1 == p2 || time.Now().After(deadline) {
			break
		}
	}
	progress, _ := strconv.Atoi(strings.TrimSpace(p2))
	if p1 != p2 || progress >= 128 {
		t.Fatalf("with the reader stalled the command went on: %q then %q MiB of %d", p1, p2, mib)
	}
	if grew := rssMiB(t, s.cmd.Process.Pid) - rss0; grew > 64 {
		t.Fatalf("orkestrd grew by %d MiB while the reader stalled", grew)
	}
	if grew := agentRSSMiB(t, ctx, sbx) - agent0; grew > 64 {
		t.Fatalf("the agent grew by %d MiB while the reader stalled", grew)
	}

	// Read the rest slowly, then all of it must be there, byte-exact.
	check.delay = time.Millisecond
	for {
		c, ok := next()
		if !ok {
			break
		}
		_, _ = check.Write([]byte(c.Data))
	}
	res, err := st.Wait()
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%v %+v", err, res)
	}
	if check.bad != nil || check.n != mib<<20 {
		t.Fatalf("got %d bytes of %d: %v", check.n, mib<<20, check.bad)
	}
}

// iterPull pulls chunks one at a time.
func iterPull(st *orkestr.ExecStream) (func() (orkestr.ExecChunk, bool), func()) {
	ch := make(chan orkestr.ExecChunk)
	done := make(chan struct{})
	go func() {
		defer close(ch)
		for c := range st.Chunks() {
			select {
			case ch <- c:
			case <-done:
				return
			}
		}
	}()
	return func() (orkestr.ExecChunk, bool) { c, ok := <-ch; return c, ok },
		func() { close(done) }
}

// agentRSSMiB is the resident memory of the agent (PID 1 in the sandbox)
// as the sandbox's /proc reports it.
func agentRSSMiB(t *testing.T, ctx context.Context, sbx *orkestr.Sandbox) int {
	t.Helper()
	for _, l := range strings.Split(sh(t, ctx, sbx, "cat /proc/1/status"), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return kb / 1024
		}
	}
	t.Fatal("no VmRSS for the agent")
	return 0
}

func rssMiB(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return kb / 1024
		}
	}
	t.Fatal("no VmRSS")
	return 0
}
