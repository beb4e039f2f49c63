package gvisor_test

import (
	"testing"

	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

func TestDbgScript(t *testing.T) {
	env := testenv.NewDriver(t)
	a := newSandbox(t, env)
	for _, c := range []string{"ulimit -p 100; ulimit -p; bash -c 'ulimit -u; ulimit -Hu'; ulimit -Hp 200; echo $?", "set -e; echo a; echo b"} {
		for _, u := range []string{"root", "user"} {
			out := run(t, a, runtime.ExecRequest{Command: c, User: u})
			t.Logf("%s %q: %+v", u, c, out)
		}
	}
}
