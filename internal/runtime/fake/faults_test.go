package fake_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/runtime/fake"
)

func spec(t *testing.T) runtime.Spec {
	return runtime.Spec{Template: "fake-template", Rootfs: t.TempDir(), Resources: small}
}

func create(t *testing.T, d runtime.Driver) *fake.Sandbox {
	t.Helper()
	sb, err := d.Create(context.Background(), spec(t))
	if err != nil {
		t.Fatal(err)
	}
	return sb.(*fake.Sandbox)
}

func run(t *testing.T, sb runtime.Sandbox, cmd string) (runtime.ExecResult, string, string) {
	t.Helper()
	var o, e bytes.Buffer
	res, err := sb.Exec(context.Background(), runtime.ExecRequest{Command: cmd, Stdout: &o, Stderr: &e})
	if err != nil {
		t.Fatalf("%q: %v", cmd, err)
	}
	return res, o.String(), e.String()
}

func TestFaultsFailOperations(t *testing.T) {
	h := fake.NewHost(fake.Options{})
	d := newDriver(t, h)
	boom := errors.New("injected")
	h.SetFaults(fake.Faults{Create: func(s runtime.Spec) error {
		if s.Labels["fail"] == "yes" {
			return boom
		}
		return nil
	}})
	sp := spec(t)
	sp.Labels = map[string]string{"fail": "yes"}
	if _, err := d.Create(context.Background(), sp); !errors.Is(err, boom) {
		t.Fatalf("create with the fault: %v", err)
	}
	if len(h.Running()) != 0 || h.Counts().Creates != 0 {
		t.Fatalf("a failed create left %v (counts %+v)", h.Running(), h.Counts())
	}
	sb := create(t, d)
	h.SetFaults(fake.Faults{
		Configure: func(string, runtime.Claim) error { return boom },
		Exec: func(_ string, r runtime.ExecRequest) error {
			if strings.Contains(r.Command, "fail") {
				return boom
			}
			return nil
		},
		Restore: func(string) error { return boom },
	})
	if err := sb.Configure(context.Background(), runtime.Claim{}); !errors.Is(err, boom) {
		t.Errorf("configure: %v", err)
	}
	if _, err := sb.Exec(context.Background(), runtime.ExecRequest{Command: "echo fail"}); !errors.Is(err, boom) {
		t.Errorf("exec: %v", err)
	}
	if _, out, _ := run(t, sb, "echo fine"); out != "fine\n" {
		t.Errorf("exec without the fault: %q", out)
	}
	if _, err := d.Restore(context.Background(), t.TempDir(), "", nil); !errors.Is(err, boom) {
		t.Errorf("restore: %v", err)
	}
	if c := h.Counts(); c.Creates != 1 || c.Restores != 0 {
		t.Errorf("counts: %+v", c)
	}
}

func TestKillStopsTheSandboxForItsReason(t *testing.T) {
	h := fake.NewHost(fake.Options{})
	d := newDriver(t, h)
	sb := create(t, d)
	errc := make(chan error, 1)
	go func() {
		_, err := sb.Exec(context.Background(), runtime.ExecRequest{Command: "sleep 1000"})
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	sb.Kill(runtime.ErrOutOfMemory)
	select {
	case <-sb.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	if err := <-errc; !errors.Is(err, runtime.ErrOutOfMemory) {
		t.Errorf("exec in flight: %v", err)
	}
	if !errors.Is(sb.Err(), runtime.ErrOutOfMemory) || sb.Info().State != runtime.StateStopped {
		t.Errorf("after the kill: %v %+v", sb.Err(), sb.Info())
	}
	if _, err := sb.ReadFile(context.Background(), "/etc/hostname", &bytes.Buffer{}); !errors.Is(err, runtime.ErrOutOfMemory) {
		t.Errorf("read after the kill: %v", err)
	}
	// Like a real driver, it keeps the dead sandbox until it is destroyed.
	if _, ok := d.Get(sb.ID()); !ok {
		t.Error("the driver forgot a sandbox that died")
	}
	if err := sb.Destroy(context.Background()); err != nil || !errors.Is(sb.Err(), runtime.ErrOutOfMemory) {
		t.Errorf("destroy: %v; Err %v", err, sb.Err())
	}
}

func TestOOMCommand(t *testing.T) {
	d := newDriver(t, fake.NewHost(fake.Options{}))
	sb := create(t, d)
	res, out, _ := run(t, sb, "echo before; oom; echo never")
	if !res.OOMKilled || res.Signal != 9 || res.ExitCode != 137 || out != "before\n" {
		t.Fatalf("oom: %+v %q", res, out)
	}
	st, err := sb.Stats(context.Background())
	if err != nil || st.ProcessOOMKills != 1 {
		t.Fatalf("stats: %+v %v", st, err)
	}
	if sb.Err() != nil {
		t.Fatal("a process killed at the limit stopped the sandbox")
	}
}

func TestInterpreter(t *testing.T) {
	d := newDriver(t, fake.NewHost(fake.Options{}))
	sb := create(t, d)
	if err := sb.Configure(context.Background(), runtime.Claim{Env: map[string]string{"NAME": "world", "EMPTY": ""}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ cmd, out, errOut string }{
		{`echo hello "$NAME" '$NAME' ${NAME}x $EMPTY.`, "hello world $NAME worldx .\n", ""},
		{`echo -n a; echo b`, "ab\n", ""},
		{`printf '%s=%d%%\n' a 1 b 2`, "a=1%\nb=2%\n", ""},
		{"echo one\necho two # a comment\n# only a comment", "one\ntwo\n", ""},
		{`echo "a \"quoted\" \$x" \; semi`, "a \"quoted\" $x ; semi\n", ""},
		{`echo to-err >&2; echo out`, "out\n", "to-err\n"},
		{`echo in-file > f.txt; cat f.txt /workspace/f.txt`, "in-file\nin-file\n", ""},
		{`cat /nope`, "", "cat: /nope: file not found: /nope\n"},
		{`echo "unterminated`, "", "sh: 1: Syntax error: unterminated quote or redirection\n"},
	} {
		var o, e bytes.Buffer
		if _, err := sb.Exec(context.Background(), runtime.ExecRequest{Command: tc.cmd, Stdout: &o, Stderr: &e}); err != nil {
			t.Fatal(err)
		}
		if o.String() != tc.out || e.String() != tc.errOut {
			t.Errorf("%q: stdout %q stderr %q; want %q and %q", tc.cmd, o.String(), e.String(), tc.out, tc.errOut)
		}
	}
	var o bytes.Buffer
	if _, err := sb.Exec(context.Background(), runtime.ExecRequest{
		Command: `X=1 Y="two words"; echo "$X|$Y"; false; echo $?; read -r L; echo "[$L]"; cat`,
		Stdin:   strings.NewReader("first line\nthe rest\n"), Stdout: &o,
	}); err != nil || o.String() != "1|two words\n1\n[first line]\nthe rest\n" {
		t.Errorf("variables, $? and read: %q %v", o.String(), err)
	}
	if res, _, _ := run(t, sb, `echo "open`); res.ExitCode != 2 {
		t.Errorf("a syntax error exits %d, want 2", res.ExitCode)
	}
}

// TestSnapshotMovesBetweenHosts: a checkpoint written on one host restores
// on another, as a paused sandbox resumes on any node.
func TestSnapshotMovesBetweenHosts(t *testing.T) {
	a := newDriver(t, fake.NewHost(fake.Options{}))
	b := newDriver(t, fake.NewHost(fake.Options{}))
	sb := create(t, a)
	if _, err := sb.WriteFile(context.Background(), "/workspace/x", 0, strings.NewReader("moved")); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "snap")
	if _, err := sb.Checkpoint(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	r, err := b.Restore(context.Background(), dir, t.TempDir(), map[string]string{"on": "b"})
	if err != nil {
		t.Fatal(err)
	}
	if _, out, _ := run(t, r, "cat /workspace/x"); out != "moved" {
		t.Fatalf("restored on another host: %q", out)
	}
	if list, _ := a.List(context.Background()); len(list) != 0 {
		t.Errorf("the first host still lists %v", list)
	}
}

func TestNetworkedHost(t *testing.T) {
	d := newDriver(t, fake.NewHost(fake.Options{Network: true}))
	sp := spec(t)
	sp.Networked = true
	sp.Labels = map[string]string{"pool": "p"}
	sb, err := d.Create(context.Background(), sp)
	if err != nil {
		t.Fatal(err)
	}
	if n := sb.Info().Network; n != "deny" {
		t.Errorf("pooled networked sandbox: network %q", n)
	}
	if err := sb.Configure(context.Background(), runtime.Claim{Network: runtime.NetworkOpen}); err != nil {
		t.Fatal(err)
	}
	if n := sb.Info().Network; n != runtime.NetworkOpen {
		t.Errorf("after the claim: network %q", n)
	}
}

func TestLoginShellTerminal(t *testing.T) {
	d := newDriver(t, fake.NewHost(fake.Options{}))
	sb := create(t, d)
	term, err := sb.OpenTerminal(context.Background(), runtime.TerminalRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	if _, err := term.Write([]byte("X=4; echo \"hi $X\"\rexit $X\r")); err != nil {
		t.Fatal(err)
	}
	var screen bytes.Buffer
	res, err := term.Output(&screen)
	if err != nil || res.ExitCode != 4 {
		t.Fatalf("login shell: %+v %v", res, err)
	}
	// The echo of what was typed and the prompts interleave as the shell
	// runs; the command's output is there, as a terminal shows it.
	for _, want := range []string{"X=4; echo \"hi $X\"\r\n", "exit $X\r\n", "$ ", "hi 4\r\n"} {
		if !strings.Contains(screen.String(), want) {
			t.Fatalf("screen %q does not show %q", screen.String(), want)
		}
	}
}
