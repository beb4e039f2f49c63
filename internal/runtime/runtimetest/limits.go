package runtimetest

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// checkLimits fails t unless st reports r's limits.
func checkLimits(t *testing.T, what string, st runtime.Stats, r runtime.Resources) {
	t.Helper()
	if st.MemoryLimitBytes != uint64(r.MemoryBytes) || st.PIDsLimit != uint64(r.PIDs) {
		t.Errorf("%s: memory limit %d, pids limit %d; want %d and %d", what, st.MemoryLimitBytes, st.PIDsLimit, r.MemoryBytes, r.PIDs)
	}
	if st.CPUPeriodMicros == 0 || st.CPUQuotaMicros != int64(r.CPU*float64(st.CPUPeriodMicros)) {
		t.Errorf("%s: CPU quota %d per period %d; want %.2g CPUs", what, st.CPUQuotaMicros, st.CPUPeriodMicros, r.CPU)
	}
}

func (s *suite) limits(t *testing.T) {
	_, sb := s.sandbox(t)

	t.Run("Stats", func(t *testing.T) {
		st, err := sb.Stats(s.ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		checkLimits(t, "stats", st, s.h.Spec.Resources)
		if st.MemoryBytes == 0 || st.PIDs == 0 || time.Since(st.ReadAt) > time.Minute || time.Until(st.ReadAt) > time.Minute {
			t.Errorf("stats: %+v", st)
		}
		s.sh(t, sb, "echo busy; sleep 0.1")
		st2, err := sb.Stats(s.ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if st2.CPUNanos < st.CPUNanos || st2.ReadAt.Before(st.ReadAt) {
			t.Errorf("stats went back: %+v then %+v", st, st2)
		}
	})

	t.Run("Usage", func(t *testing.T) {
		s.need(t, s.h.Caps.Usage, "Usage")
		ur, ok := sb.(runtime.UsageReader)
		if !ok {
			t.Fatal("the sandbox does not implement runtime.UsageReader")
		}
		u, err := ur.Usage(s.ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if u.MemoryLimitBytes != uint64(s.h.Spec.Resources.MemoryBytes) || u.MemoryBytes == 0 {
			t.Errorf("usage: %+v", u)
		}
	})

	t.Run("SetResources", func(t *testing.T) {
		r := runtime.Resources{CPU: 1, MemoryBytes: 256 << 20, PIDs: 300, DiskBytes: s.h.Spec.Resources.DiskBytes}
		if err := sb.SetResources(r); err != nil {
			t.Fatal(err)
		}
		st, err := sb.Stats(s.ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		checkLimits(t, "stats after SetResources", st, r)
		if got := sb.Info().Resources; got != r {
			t.Errorf("info after SetResources: %+v, want %+v", got, r)
		}
		// The disk quota is fixed when the sandbox starts.
		bad := r
		bad.DiskBytes = r.DiskBytes + 64<<20
		wantErr(t, "SetResources with another disk quota", sb.SetResources(bad), runtime.ErrInvalidRequest)
		if got := sb.Info().Resources; got != r {
			t.Errorf("a refused SetResources changed the resources: %+v", got)
		}
		// A claim's resources are applied too.
		r2 := runtime.Resources{CPU: 0.5, MemoryBytes: 384 << 20, PIDs: 256, DiskBytes: r.DiskBytes}
		if err := sb.Configure(s.ctx(t), runtime.Claim{Resources: r2}); err != nil {
			t.Fatal(err)
		}
		st, err = sb.Stats(s.ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		checkLimits(t, "stats after a claim", st, r2)
		if got := sb.Info().Resources; got != r2 {
			t.Errorf("info after a claim: %+v, want %+v", got, r2)
		}
	})

	t.Run("DiskQuota", func(t *testing.T) {
		s.need(t, s.h.Caps.Disk, "Disk")
		d := s.driver(t)
		sp := s.spec(nil)
		sp.Resources.DiskBytes = 32 << 20
		sb := s.createSpec(t, d, sp)
		dr, ok := sb.(runtime.DiskReader)
		if !ok {
			t.Fatal("the sandbox does not implement runtime.DiskReader")
		}
		before, err := dr.Disk()
		if err != nil {
			t.Fatal(err)
		}
		if before.LimitBytes != 32<<20 {
			t.Fatalf("disk limit %d, want %d", before.LimitBytes, 32<<20)
		}
		ctx := s.ctx(t)
		if _, err := sb.WriteFile(ctx, "/workspace/8m", 0, io.LimitReader(rand.NewChaCha8([32]byte{3}), 8<<20)); err != nil {
			t.Fatal(err)
		}
		after, err := dr.Disk()
		if err != nil {
			t.Fatal(err)
		}
		if after.UsedBytes < before.UsedBytes+4<<20 {
			t.Errorf("8 MiB written: disk use went from %d to %d", before.UsedBytes, after.UsedBytes)
		}
		_, err = sb.WriteFile(ctx, "/workspace/40m", 0, io.LimitReader(rand.NewChaCha8([32]byte{4}), 40<<20))
		wantErr(t, "a write past the quota", err, runtime.ErrNoSpace)
		if d, err := dr.Disk(); err != nil || d.UsedBytes > d.LimitBytes+1<<20 {
			t.Errorf("disk after a write past the quota: %+v %v", d, err)
		}
		// Freed space comes back.
		if err := sb.Remove(ctx, "/workspace/8m", false); err != nil {
			t.Fatal(err)
		}
		_ = sb.Remove(ctx, "/workspace/40m", false)
		if !eventually(30*time.Second, func() bool {
			_, err := sb.WriteFile(ctx, "/workspace/20m", 0, io.LimitReader(rand.NewChaCha8([32]byte{5}), 20<<20))
			return err == nil
		}) {
			t.Fatal("freed space did not come back")
		}
	})
}

func (s *suite) hostile(t *testing.T) {
	_, sb := s.sandbox(t)
	ctx := s.ctx(t)

	t.Run("HugeCommandAndEnv", func(t *testing.T) {
		big := strings.Repeat("x", 2<<20)
		_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "echo " + big})
		wantErr(t, "2 MiB command", err, runtime.ErrInvalidRequest)
		_, err = sb.Exec(ctx, runtime.ExecRequest{Command: "true", Env: map[string]string{"BIG": big}})
		wantErr(t, "2 MiB env value", err, runtime.ErrInvalidRequest)
		many := map[string]string{}
		for i := range 200000 {
			many[fmt.Sprintf("V%d", i)] = "0123456789"
		}
		_, err = sb.Exec(ctx, runtime.ExecRequest{Command: "true", Env: many})
		wantErr(t, "200,000 env variables", err, runtime.ErrInvalidRequest)
		wantErr(t, "configure with a 2 MiB env", sb.Configure(ctx, runtime.Claim{Env: map[string]string{"BIG": big}}), runtime.ErrInvalidRequest)
		// Sizes real programs use still work.
		val := strings.Repeat("v", 32<<10)
		some := map[string]string{"LONG": val}
		for i := range 200 {
			some[fmt.Sprintf("SOME_%d", i)] = strings.Repeat("s", 64)
		}
		out := s.run(t, sb, runtime.ExecRequest{Command: `printf '%s' "$LONG"; printf '|%s' "$SOME_199"`, Env: some})
		if out.Stdout != val+"|"+strings.Repeat("s", 64) {
			t.Errorf("a 32 KiB env value and 200 variables: exit %d, %d bytes out, stderr %q", out.ExitCode, len(out.Stdout), short(out.Stderr))
		}
	})

	t.Run("NUL", func(t *testing.T) {
		_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "echo a\x00b"})
		wantErr(t, "command with a NUL", err, runtime.ErrInvalidRequest)
		_, err = sb.Exec(ctx, runtime.ExecRequest{Command: "pwd", Cwd: "/tmp\x00/x"})
		if err == nil {
			t.Error("exec with a NUL in its cwd succeeded")
		}
	})

	t.Run("StdinFlood", func(t *testing.T) {
		// 64 MiB offered to a command that reads none of it: it ends,
		// and nothing holds the call open.
		out := s.run(t, sb, runtime.ExecRequest{Command: "echo done", Stdin: io.LimitReader(rand.NewChaCha8([32]byte{9}), 64<<20), Timeout: time.Minute})
		if out.Stdout != "done\n" || out.TimedOut {
			t.Errorf("got %+v", out)
		}
	})

	t.Run("ManyFiles", func(t *testing.T) {
		for i := range 300 {
			if _, err := sb.WriteFile(ctx, fmt.Sprintf("/workspace/many/f%03d", i), 0, bytes.NewReader([]byte{byte(i)})); err != nil {
				t.Fatal(err)
			}
		}
		if n := len(s.names(t, sb, "/workspace/many")); n != 300 {
			t.Fatalf("listed %d of 300", n)
		}
		if err := sb.Remove(ctx, "/workspace/many", true); err != nil {
			t.Fatal(err)
		}
	})

	if got := s.sh(t, sb, "echo alive"); got != "alive\n" {
		t.Fatalf("after hostile requests: %q", got)
	}
	if err := sb.Err(); err != nil {
		t.Fatalf("hostile requests stopped the sandbox: %v", err)
	}
}
