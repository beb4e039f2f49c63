package gvisor_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

func newSandbox(t *testing.T, env *testenv.Env) runtime.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sb, err := env.Driver.Create(ctx, runtime.Spec{Template: "debian-12", Rootfs: testenv.Rootfs(t, "debian-12"), Resources: testenv.Small})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Destroy(context.Background()) })
	return sb
}

type execOut struct {
	runtime.ExecResult
	Stdout, Stderr string
}

func run(t *testing.T, sb runtime.Sandbox, req runtime.ExecRequest) execOut {
	t.Helper()
	var o, e bytes.Buffer
	req.Stdout, req.Stderr = &o, &e
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := sb.Exec(ctx, req)
	if err != nil {
		t.Fatalf("exec %q: %v", req.Command, err)
	}
	return execOut{res, o.String(), e.String()}
}

func TestSmoke(t *testing.T) {
	env := testenv.NewDriver(t)
	sb := newSandbox(t, env)
	out := run(t, sb, runtime.ExecRequest{Command: "echo hello; echo oops >&2; exit 3"})
	if out.Stdout != "hello\n" || out.Stderr != "oops\n" || out.ExitCode != 3 {
		t.Fatalf("got %+v", out)
	}
}
