package nodeapi_test

// The node API end to end: a real gVisor driver behind NewHandler on a
// loopback HTTP server, called through the Client. Root and runsc needed
// (skipped under -short).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// run execs cmd through sb and returns stdout, stderr and the result.
func run(t *testing.T, sb runtime.Sandbox, req runtime.ExecRequest) (string, string, runtime.ExecResult) {
	t.Helper()
	var o, e bytes.Buffer
	req.Stdout, req.Stderr = &o, &e
	res, err := sb.Exec(ctxT(t, 2*time.Minute), req)
	if err != nil {
		t.Fatalf("exec %q: %v", req.Command, err)
	}
	return o.String(), e.String(), res
}

func sh(t *testing.T, sb runtime.Sandbox, cmd string) string {
	t.Helper()
	o, e, res := run(t, sb, runtime.ExecRequest{Command: cmd})
	if res.ExitCode != 0 {
		t.Fatalf("%q: exit %d, stderr %q", cmd, res.ExitCode, e)
	}
	return o
}

// prng is a deterministic byte stream of n bytes.
type prng struct {
	r *rand.ChaCha8
	n int64
}

func newPRNG(seed byte, n int64) *prng {
	var s [32]byte
	s[0] = seed
	return &prng{r: rand.NewChaCha8(s), n: n}
}

func (p *prng) Read(b []byte) (int, error) {
	if p.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n {
		b = b[:p.n]
	}
	n, _ := p.r.Read(b)
	p.n -= int64(n)
	return n, nil
}

// waitWriter records what is written and tells when it contains a string.
type waitWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *waitWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *waitWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func (w *waitWriter) waitFor(t *testing.T, s string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(w.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q within %v; got %q", s, d, w.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRemoteSandbox(t *testing.T) {
	s := serve(t)
	sb := s.create(t, runtime.Claim{Env: map[string]string{"GREETING": "hello from the claim"}, Hostname: "remote-box"})
	direct, ok := s.node.env.Driver.Get(sb.ID())
	if !ok {
		t.Fatal("the node does not know the sandbox the client created")
	}

	// The optional interfaces api asserts are there.
	for name, ok := range map[string]bool{
		"FileOps": is[runtime.FileOps](sb), "UserFiles": is[runtime.UserFiles](sb), "Processes": is[runtime.Processes](sb),
		"TerminalOpener": is[runtime.TerminalOpener](sb), "Archiver": is[runtime.Archiver](sb),
		"DiskReader": is[runtime.DiskReader](sb), "UsageReader": is[runtime.UsageReader](sb),
	} {
		if !ok {
			t.Errorf("the remote sandbox is no runtime.%s", name)
		}
	}

	t.Run("exec", func(t *testing.T) {
		o, e, res := run(t, sb, runtime.ExecRequest{Command: `echo "$GREETING $X $(cat /etc/hostname) $(pwd)"; echo oops >&2; exit 3`, Env: map[string]string{"X": "x!"}, Cwd: "/tmp"})
		if o != "hello from the claim x! remote-box /tmp\n" || e != "oops\n" || res.ExitCode != 3 {
			t.Fatalf("got %q %q %+v", o, e, res)
		}
		o, _, res = run(t, sb, runtime.ExecRequest{Command: "id -un", User: runtime.UserUser})
		if o != "user\n" || res.ExitCode != 0 {
			t.Fatalf("as user: %q %+v", o, res)
		}
	})

	t.Run("stdin", func(t *testing.T) {
		const n = 20 << 20
		want := sha256.New()
		_, _ = io.Copy(want, newPRNG(1, n))
		o, _, res := run(t, sb, runtime.ExecRequest{Command: "sha256sum | cut -d' ' -f1", Stdin: newPRNG(1, n)})
		if res.ExitCode != 0 || strings.TrimSpace(o) != hex.EncodeToString(want.Sum(nil)) {
			t.Fatalf("stdin of %d bytes: %q %+v", n, o, res)
		}
		// Small stdin of known length goes with the parameters.
		o, _, res = run(t, sb, runtime.ExecRequest{Command: "cat; echo", Stdin: strings.NewReader("inline\x00bytes")})
		if o != "inline\x00bytes\n" || res.ExitCode != 0 {
			t.Fatalf("inline stdin: %q %+v", o, res)
		}
		o, _, _ = run(t, sb, runtime.ExecRequest{Command: "wc -c", Stdin: bytes.NewReader(nil)})
		if o != "0\n" {
			t.Fatalf("empty stdin: %q", o)
		}
		// Input the command does not read holds nothing up.
		o, _, res = run(t, sb, runtime.ExecRequest{Command: "echo done", Stdin: newPRNG(2, 50<<20)})
		if o != "done\n" || res.ExitCode != 0 {
			t.Fatalf("unread stdin: %q %+v", o, res)
		}
	})

	t.Run("large output", func(t *testing.T) {
		const n = 64 << 20
		sum := strings.Fields(sh(t, sb, fmt.Sprintf("head -c %d /dev/urandom > /tmp/big && sha256sum /tmp/big", n)))[0]
		h := sha256.New()
		cw := &countWriter{w: h}
		var e bytes.Buffer
		res, err := sb.Exec(ctxT(t, 3*time.Minute), runtime.ExecRequest{Command: "cat /tmp/big; head -c 100000 /tmp/big >&2", Stdout: cw, Stderr: &e})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("cat: %v %+v", err, res)
		}
		if cw.n != n || hex.EncodeToString(h.Sum(nil)) != sum || e.Len() != 100000 {
			t.Fatalf("got %d bytes (want %d), sha %x (want %s), stderr %d bytes", cw.n, n, h.Sum(nil), sum, e.Len())
		}
		sh(t, sb, "rm /tmp/big")
	})

	t.Run("signals", func(t *testing.T) {
		sigs := make(chan syscall.Signal, 1)
		out := &waitWriter{}
		done := make(chan struct{})
		var res runtime.ExecResult
		var err error
		go func() {
			defer close(done)
			res, err = sb.Exec(ctxT(t, time.Minute), runtime.ExecRequest{Command: `trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.1; done`, Stdout: out, Signals: sigs})
		}()
		out.waitFor(t, "ready", 30*time.Second)
		sigs <- syscall.SIGTERM
		<-done
		if err != nil || res.ExitCode != 7 || !strings.Contains(out.String(), "got TERM") {
			t.Fatalf("signal: %v %+v %q", err, res, out.String())
		}
	})

	t.Run("timeout", func(t *testing.T) {
		_, _, res := run(t, sb, runtime.ExecRequest{Command: "sleep 60", Timeout: time.Second})
		if !res.TimedOut {
			t.Fatalf("not timed out: %+v", res)
		}
	})

	t.Run("files", func(t *testing.T) {
		ctx := ctxT(t, 5*time.Minute)
		const n = 100 << 20
		want := sha256.New()
		_, _ = io.Copy(want, newPRNG(3, n))
		wrote, err := sb.WriteFile(ctx, "/workspace/big.bin", 0o640, newPRNG(3, n))
		if err != nil || wrote != n {
			t.Fatalf("write: %d %v", wrote, err)
		}
		if got := strings.Fields(sh(t, direct, "sha256sum /workspace/big.bin"))[0]; got != hex.EncodeToString(want.Sum(nil)) {
			t.Fatalf("written file's sha %s, want %x", got, want.Sum(nil))
		}
		h := sha256.New()
		cw := &countWriter{w: h}
		fi, err := sb.ReadFile(ctx, "/workspace/big.bin", cw)
		if err != nil || cw.n != n || !bytes.Equal(h.Sum(nil), want.Sum(nil)) || fi.Size != n || fi.Mode&0o777 != 0o640 {
			t.Fatalf("read: %+v %v, %d bytes, sha %x", fi, err, cw.n, h.Sum(nil))
		}
		// Small writes go with the parameters, larger ones as a stream:
		// both sides of the boundary, and nothing.
		for _, size := range []int64{0, 1, 64<<10 - 1, 64 << 10, 64<<10 + 1} {
			h := sha256.New()
			_, _ = io.Copy(h, newPRNG(4, size))
			if n, err := sb.WriteFile(ctx, "/workspace/s.bin", 0o600, newPRNG(4, size)); err != nil || n != size {
				t.Fatalf("write of %d bytes: %d %v", size, n, err)
			}
			if got := strings.Fields(sh(t, direct, "sha256sum /workspace/s.bin"))[0]; got != hex.EncodeToString(h.Sum(nil)) {
				t.Fatalf("write of %d bytes: sha %s", size, got)
			}
		}
		sh(t, direct, "rm /workspace/s.bin")
		st, err := sb.Stat(ctx, "/workspace/big.bin")
		if err != nil || st.Size != n || st.IsDir {
			t.Fatalf("stat: %+v %v", st, err)
		}
		if err := sb.MkdirAll(ctx, "/workspace/d/e", 0o755); err != nil {
			t.Fatal(err)
		}
		ents, err := sb.List(ctx, "/workspace")
		if err != nil || len(ents) != 2 {
			t.Fatalf("list: %+v %v", ents, err)
		}
		if err := sb.Remove(ctx, "/workspace/big.bin", false); err != nil {
			t.Fatal(err)
		}
		// The same errors, word for word, as in process.
		for _, call := range []func(runtime.Sandbox) error{
			func(x runtime.Sandbox) error { _, err := x.ReadFile(ctx, "/workspace/big.bin", io.Discard); return err },
			func(x runtime.Sandbox) error { _, err := x.Stat(ctx, "/nope/x"); return err },
			func(x runtime.Sandbox) error { return x.Remove(ctx, "/workspace/d", false) },
			func(x runtime.Sandbox) error { _, err := x.ReadFile(ctx, "relative", io.Discard); return err },
			func(x runtime.Sandbox) error {
				_, err := x.WriteFile(ctx, "/proc/nope/x", 0o644, strings.NewReader("x"))
				return err
			},
			func(x runtime.Sandbox) error {
				_, err := x.(runtime.UserFiles).WriteFileAs(ctx, runtime.UserUser, "/root/x", 0o644, strings.NewReader("x"))
				return err
			},
		} {
			errRemote, errDirect := call(sb), call(direct)
			if errRemote == nil || errDirect == nil || errRemote.Error() != errDirect.Error() {
				t.Errorf("remote %v, in process %v", errRemote, errDirect)
			}
			var re *nodeapi.RemoteError
			if !errors.As(errRemote, &re) || !errors.Is(errRemote, errors.Unwrap(errDirect)) && !errors.Is(errRemote, errDirect) {
				t.Errorf("remote %v (%T) is not in-process %v's sentinel", errRemote, errRemote, errDirect)
			}
		}
		if _, err := sb.ReadFile(ctx, "/workspace/missing", io.Discard); !errors.Is(err, runtime.ErrFileNotFound) {
			t.Errorf("missing: %v", err)
		}
		// As a user.
		uf := sb.(runtime.UserFiles)
		if _, err := uf.WriteFileAs(ctx, runtime.UserUser, "/home/user/u.txt", 0o600, strings.NewReader("mine")); err != nil {
			t.Fatal(err)
		}
		if o := sh(t, direct, "stat -c %U /home/user/u.txt"); o != "user\n" {
			t.Fatalf("owner %q", o)
		}
		var b bytes.Buffer
		if _, err := uf.ReadFileAs(ctx, runtime.UserUser, "/home/user/u.txt", &b); err != nil || b.String() != "mine" {
			t.Fatalf("read as user: %q %v", b.String(), err)
		}
		if _, err := uf.ListAs(ctx, runtime.UserUser, "/root"); !errors.Is(err, runtime.ErrPermission) {
			t.Fatalf("list /root as user: %v", err)
		}
		if err := uf.RemoveAs(ctx, runtime.UserUser, "/home/user/u.txt", false); err != nil {
			t.Fatal(err)
		}
		// The extended calls.
		fo := sb.(runtime.FileOps)
		if st, err := fo.Mkdir(ctx, runtime.FSRequest{Path: "/workspace/m/n", Parents: true}); err != nil || st.Type != "dir" {
			t.Fatalf("mkdir: %+v %v", st, err)
		}
		if st, err := fo.Rename(ctx, runtime.FSRequest{Path: "/workspace/m", Dest: "/workspace/m2"}); err != nil || st.Path != "/workspace/m2" {
			t.Fatalf("rename: %+v %v", st, err)
		}
		if st, err := fo.Exists(ctx, runtime.FSRequest{Path: "/workspace/m"}); err != nil || st.Exists {
			t.Fatalf("exists: %+v %v", st, err)
		}
		if st, err := fo.StatPath(ctx, runtime.FSRequest{Path: "/workspace/m2/n"}); err != nil || st.Type != "dir" || st.Owner != "root" {
			t.Fatalf("stat path: %+v %v", st, err)
		}
		if _, err := fo.Mkdir(ctx, runtime.FSRequest{Path: "/workspace/m2"}); !errors.Is(err, runtime.ErrExists) {
			t.Fatalf("mkdir existing: %v", err)
		}
		if err := sb.Remove(ctx, "/workspace/m2", true); err != nil {
			t.Fatal(err)
		}
		if err := sb.Remove(ctx, "/workspace/d", true); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("tar", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		sh(t, direct, "mkdir -p /workspace/src/sub && echo one > /workspace/src/a && head -c 3000000 /dev/urandom > /workspace/src/sub/b")
		var tarball bytes.Buffer
		if err := sb.(runtime.Archiver).Tar(ctx, "/workspace/src", "gzip", &tarball); err != nil {
			t.Fatal(err)
		}
		x, err := sb.(runtime.Archiver).Untar(ctx, "/workspace/dst", 1<<30, bytes.NewReader(tarball.Bytes()))
		if err != nil || x.Entries < 3 || x.Bytes != 3000004 {
			t.Fatalf("untar: %+v %v", x, err)
		}
		if o := sh(t, direct, "cd /workspace && cmp src/sub/b dst/sub/b && cat dst/a"); o != "one\n" {
			t.Fatalf("extracted: %q", o)
		}
		if _, err := sb.(runtime.Archiver).Untar(ctx, "/workspace/dst2", 1<<20, strings.NewReader("this is no tar")); !errors.Is(err, runtime.ErrInvalidArchive) {
			t.Fatalf("garbage tar: %v", err)
		}
		sh(t, direct, "rm -rf /workspace/src /workspace/dst /workspace/dst2")
	})

	t.Run("processes", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		ps := sb.(runtime.Processes)
		p, err := ps.StartProcess(ctx, runtime.ProcessRequest{Command: `echo started; read line; echo "got $line"; echo err >&2; read line; echo "then $line"; exec sleep 600`})
		if err != nil || p.PID == 0 || !p.Running {
			t.Fatalf("start: %+v %v", p, err)
		}
		list, err := ps.ListProcesses(ctx)
		if err != nil || len(list) == 0 || list[len(list)-1].PID != p.PID {
			t.Fatalf("list: %+v %v", list, err)
		}
		out, errOut := &waitWriter{}, &waitWriter{}
		attached := make(chan struct{})
		var final runtime.ProcessInfo
		var attachErr error
		go func() {
			defer close(attached)
			final, attachErr = ps.AttachProcess(ctx, p.PID, true, runtime.ProcessOutput{Stdout: out, Stderr: errOut})
		}()
		out.waitFor(t, "started\n", 30*time.Second) // replayed
		if err := ps.ProcessInput(ctx, p.PID, []byte("hello\n"), false); err != nil {
			t.Fatal(err)
		}
		out.waitFor(t, "got hello\n", 30*time.Second)
		errOut.waitFor(t, "err\n", 30*time.Second)
		// An attach from now acknowledges its place through the node API:
		// what the process writes after that is in its stream, and
		// nothing from before.
		now := &waitWriter{}
		placed := make(chan struct{})
		nctx, detach := context.WithCancel(ctx)
		defer detach()
		go func() {
			_, _ = ps.AttachProcess(nctx, p.PID, false, runtime.ProcessOutput{Stdout: now, Attached: func() { close(placed) }})
		}()
		select {
		case <-placed:
		case <-time.After(30 * time.Second):
			t.Fatal("an attach from now was not acknowledged")
		}
		if err := ps.ProcessInput(ctx, p.PID, []byte("again\n"), false); err != nil {
			t.Fatal(err)
		}
		now.waitFor(t, "then again\n", 30*time.Second)
		if got := now.String(); got != "then again\n" {
			t.Fatalf("an attach from now got %q", got)
		}
		detach()
		if err := ps.SignalProcess(ctx, p.PID, int(syscall.SIGKILL)); err != nil {
			t.Fatal(err)
		}
		<-attached
		if attachErr != nil || final.Running || final.ExitCode == nil || *final.ExitCode != 128+9 {
			t.Fatalf("attach: %+v %v", final, attachErr)
		}
		if err := ps.SignalProcess(ctx, 99999, 15); !errors.Is(err, runtime.ErrNoProcess) {
			t.Fatalf("signal of no process: %v", err)
		}
	})

	t.Run("terminal", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		term, err := sb.(runtime.TerminalOpener).OpenTerminal(ctx, runtime.TerminalRequest{
			Command: `while read l; do [ "$l" = q ] && exit 3; stty size; done`, Rows: 24, Cols: 80})
		if err != nil {
			t.Fatal(err)
		}
		defer term.Close()
		if term.PID() == 0 {
			t.Fatal("no pid")
		}
		out := &waitWriter{}
		done := make(chan struct{})
		var res runtime.ExecResult
		var outErr error
		go func() {
			defer close(done)
			res, outErr = term.Output(out)
		}()
		if _, err := term.Write([]byte("\n")); err != nil {
			t.Fatal(err)
		}
		out.waitFor(t, "24 80", 30*time.Second)
		if err := term.Resize(40, 100); err != nil {
			t.Fatal(err)
		}
		if err := term.Resize(0, 100); !errors.Is(err, runtime.ErrInvalidRequest) {
			t.Fatalf("bad size: %v", err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(out.String(), "40 100") {
			if time.Now().After(deadline) {
				t.Fatalf("resize never showed: %q", out.String())
			}
			_, _ = term.Write([]byte("\n"))
			time.Sleep(100 * time.Millisecond)
		}
		if _, err := term.Write([]byte("q\n")); err != nil {
			t.Fatal(err)
		}
		<-done
		if outErr != nil || res.ExitCode != 3 {
			t.Fatalf("output: %+v %v", res, outErr)
		}
	})

	t.Run("watch", func(t *testing.T) {
		sh(t, direct, "mkdir -p /workspace/w")
		ctx, cancel := context.WithCancel(ctxT(t, time.Minute))
		started := make(chan int, 1)
		events := make(chan runtime.WatchEvent, 64)
		done := make(chan error, 1)
		go func() {
			done <- sb.(runtime.FileOps).Watch(ctx, runtime.FSRequest{Path: "/workspace/w", Recursive: true},
				func(dirs int) { started <- dirs },
				func(ev runtime.WatchEvent) error { events <- ev; return nil })
		}()
		select {
		case d := <-started:
			if d != 1 {
				t.Errorf("watching %d dirs", d)
			}
		case err := <-done:
			t.Fatalf("watch ended: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("watch never started")
		}
		sh(t, direct, "echo x > /workspace/w/f")
		select {
		case ev := <-events:
			if ev.Path != "f" || ev.Type != "create" {
				t.Errorf("event %+v", ev)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no event")
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("watch after cancel: %v", err)
		}
		sh(t, direct, "rm -rf /workspace/w")
	})

	t.Run("concurrent", func(t *testing.T) {
		ctx := ctxT(t, 2*time.Minute)
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var o, e bytes.Buffer
				res, err := sb.Exec(ctx, runtime.ExecRequest{Command: "cat; echo -n $N", Env: map[string]string{"N": fmt.Sprint(i)}, Stdin: strings.NewReader("in"), Stdout: &o, Stderr: &e})
				if err != nil || res.ExitCode != 0 || o.String() != fmt.Sprintf("in%d", i) {
					errs <- fmt.Errorf("exec %d: %q %+v %v; stderr %q", i, o.String(), res, err, e.String())
				}
			}()
		}
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				path := fmt.Sprintf("/workspace/c%d", i)
				if _, err := sb.WriteFile(ctx, path, 0o644, newPRNG(byte(10+i), 2<<20)); err != nil {
					errs <- err
					return
				}
				h, want := sha256.New(), sha256.New()
				_, _ = io.Copy(want, newPRNG(byte(10+i), 2<<20))
				if _, err := sb.ReadFile(ctx, path, h); err != nil || !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
					errs <- fmt.Errorf("file %d: %v", i, err)
				}
				_ = sb.Remove(ctx, path, false)
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("unary", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		if i := sb.Info(); i.ID != sb.ID() || i.State != runtime.StateRunning || i.Template != "debian-12" {
			t.Errorf("info %+v", i)
		}
		st, err := sb.Stats(ctx)
		if err != nil || st.MemoryLimitBytes == 0 || st.CPUNanos == 0 {
			t.Errorf("stats %+v %v", st, err)
		}
		u, err := sb.(runtime.UsageReader).Usage(ctx)
		if err != nil || u.MemoryBytes == 0 {
			t.Errorf("usage %+v %v", u, err)
		}
		if d, err := sb.(runtime.DiskReader).Disk(); err != nil || d.UsedBytes == 0 {
			t.Errorf("disk %+v %v", d, err)
		}
		res := sb.Info().Resources
		res.MemoryBytes += 64 << 20
		if err := sb.SetResources(res); err != nil || sb.Info().Resources.MemoryBytes != res.MemoryBytes {
			t.Errorf("set resources: %v, %+v", err, sb.Info().Resources)
		}
		res.DiskBytes = 1
		if err := sb.SetResources(res); !errors.Is(err, runtime.ErrInvalidRequest) {
			t.Errorf("set disk: %v", err)
		}
		if err := sb.Configure(ctx, runtime.Claim{Env: map[string]string{"GREETING": "again"}, Labels: map[string]string{"k": "v"}, Resources: sb.Info().Resources}); err != nil {
			t.Fatal(err)
		}
		if sb.Info().Labels["k"] != "v" {
			t.Errorf("labels after configure: %+v", sb.Info().Labels)
		}
		if o := sh(t, sb, "echo $GREETING"); o != "again\n" {
			t.Errorf("env after configure %q", o)
		}
		m, err := s.client.Metrics(ctx, sb.ID(), time.Time{})
		if err != nil || m.Latest == nil || m.Latest.MemBytes == 0 {
			t.Errorf("metrics %+v %v", m, err)
		}
		info, err := s.client.Info(ctx)
		if err != nil || info.ID != "test-node" || info.Running < 1 {
			t.Errorf("node info %+v %v", info, err)
		}
		if _, err := sb.Checkpoint(ctx, "/tmp/x"); !errors.Is(err, runtime.ErrInvalidRequest) || !strings.Contains(err.Error(), "Node.Checkpoint") {
			t.Errorf("checkpoint on a remote sandbox: %v", err)
		}
		again, err := s.client.Sandbox(ctx, sb.ID())
		if err != nil || again.ID() != sb.ID() {
			t.Errorf("sandbox: %v", err)
		}
	})
}

func is[T any](v any) bool { _, ok := v.(T); return ok }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.w.Write(p)
}
