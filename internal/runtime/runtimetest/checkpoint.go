package runtimetest

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// restore restores dir on d, destroyed when t ends.
func (s *suite) restore(t *testing.T, d runtime.Driver, dir string, labels map[string]string) runtime.Sandbox {
	t.Helper()
	sb, err := d.Restore(s.ctx(t), dir, s.h.Spec.Rootfs, labels)
	if err != nil {
		t.Fatalf("restore %s: %v", dir, err)
	}
	t.Cleanup(func() { destroy(t, sb) })
	return sb
}

func (s *suite) checkpoint(t *testing.T) {
	s.need(t, s.h.Caps.Checkpoint, "Checkpoint")

	t.Run("KeepsFilesEnvAndLabels", func(t *testing.T) {
		d := s.driver(t)
		sb := s.create(t, d, nil)
		ctx := s.ctx(t)
		if err := sb.Configure(ctx, runtime.Claim{Env: map[string]string{"CLAIM_SECRET": "s3cr3t"}, Labels: map[string]string{"owner": "acct-1"}}); err != nil {
			t.Fatal(err)
		}
		s.write(t, sb, "/workspace/ws.txt", "in workspace")
		s.write(t, sb, "/tmp/tmp.txt", "in tmp")
		s.write(t, sb, "/etc/conformance-note", "on the root file system")
		big := strings.Repeat("0123456789abcdef", 1<<16)
		s.write(t, sb, "/workspace/deep/big.txt", big)
		dir := filepath.Join(t.TempDir(), "snap")
		id := sb.ID()
		snap, err := sb.Checkpoint(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		if snap.Dir != dir || snap.Bytes <= 0 || snap.Template != s.h.Spec.Template || snap.Resources != s.h.Spec.Resources || snap.Labels["owner"] != "acct-1" {
			t.Fatalf("snapshot: %+v", snap)
		}
		if time.Since(snap.CreatedAt) > time.Hour {
			t.Errorf("snapshot created at %v", snap.CreatedAt)
		}
		// The checkpointed sandbox is gone.
		waitDone(t, sb, 30*time.Second)
		if _, ok := d.Get(id); ok {
			t.Error("the driver still has the checkpointed sandbox")
		}
		if list, _ := d.List(ctx); len(list) != 0 {
			t.Errorf("the driver lists %d sandboxes after the checkpoint", len(list))
		}
		_, err = sb.Exec(ctx, runtime.ExecRequest{Command: "true"})
		wantErr(t, "exec on a checkpointed sandbox", err, runtime.ErrStopped)
		if err := sb.Destroy(ctx); err != nil {
			t.Errorf("destroy after checkpoint: %v", err)
		}

		// Restored with new labels: a new sandbox with everything kept.
		r := s.restore(t, d, dir, map[string]string{"restored": "yes"})
		if r.ID() == id {
			t.Error("the restored sandbox has the checkpointed one's id")
		}
		if got, ok := d.Get(r.ID()); !ok || got.ID() != r.ID() {
			t.Error("the restored sandbox is not known to the driver")
		}
		info := r.Info()
		if info.State != runtime.StateRunning || !maps.Equal(info.Labels, map[string]string{"restored": "yes"}) || info.Template != s.h.Spec.Template || info.Resources != s.h.Spec.Resources {
			t.Errorf("restored info: %+v", info)
		}
		for p, want := range map[string]string{"/workspace/ws.txt": "in workspace", "/tmp/tmp.txt": "in tmp", "/etc/conformance-note": "on the root file system", "/workspace/deep/big.txt": big} {
			if got := s.read(t, r, p); got != want {
				t.Errorf("%s after restore: %q", p, short(got))
			}
		}
		if got := s.sh(t, r, `printf '%s' "$CLAIM_SECRET"`); got != "s3cr3t" {
			t.Errorf("claim env after restore: %q", got)
		}
		// Restored without labels: the snapshot's.
		r2 := s.restore(t, d, dir, nil)
		if got := r2.Info().Labels; got["owner"] != "acct-1" {
			t.Errorf("labels of a restore without labels: %v", got)
		}
		// The two restores are separate sandboxes.
		s.write(t, r, "/workspace/ws.txt", "changed in one")
		if got := s.read(t, r2, "/workspace/ws.txt"); got != "in workspace" {
			t.Errorf("a write in one restore shows in the other: %q", got)
		}
	})

	t.Run("RefusesWhatIsNotASnapshot", func(t *testing.T) {
		d := s.driver(t)
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "snapshot.json"), []byte("{not json"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{t.TempDir(), dir, filepath.Join(dir, "missing")} {
			if sb, err := d.Restore(s.ctx(t), p, s.h.Spec.Rootfs, nil); err == nil {
				destroy(t, sb)
				t.Errorf("restore of %s succeeded", p)
			}
		}
		if list, _ := d.List(s.ctx(t)); len(list) != 0 {
			t.Errorf("failed restores left %d sandboxes", len(list))
		}
	})

	t.Run("StoppedSandbox", func(t *testing.T) {
		d := s.driver(t)
		sb := s.create(t, d, nil)
		if err := sb.Destroy(s.ctx(t)); err != nil {
			t.Fatal(err)
		}
		_, err := sb.Checkpoint(s.ctx(t), t.TempDir())
		wantErr(t, "checkpoint of a destroyed sandbox", err, runtime.ErrStopped)
	})

	t.Run("BackgroundProcess", func(t *testing.T) {
		s.need(t, s.h.Caps.Processes, "Processes")
		d := s.driver(t)
		sb := s.create(t, d, nil)
		ps := sb.(runtime.Processes)
		ctx := s.ctx(t)
		p, err := ps.StartProcess(ctx, runtime.ProcessRequest{Command: "echo started; cat"})
		if err != nil {
			t.Fatal(err)
		}
		if err := ps.ProcessInput(ctx, p.PID, []byte("before\n"), false); err != nil {
			t.Fatal(err)
		}
		s.waitOutput(t, ps, p.PID, "started\nbefore\n")
		dir := filepath.Join(t.TempDir(), "snap")
		if _, err := sb.Checkpoint(ctx, dir); err != nil {
			t.Fatal(err)
		}
		r := s.restore(t, d, dir, nil)
		rps := r.(runtime.Processes)
		list, err := rps.ListProcesses(ctx)
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(list, func(q runtime.ProcessInfo) bool { return q.PID == p.PID })
		if i < 0 || !list[i].Running {
			t.Fatalf("after restore the process is not running: %+v", list)
		}
		if err := rps.ProcessInput(ctx, p.PID, []byte("after\n"), true); err != nil {
			t.Fatal(err)
		}
		sw := newStreamWriter()
		end, err := rps.AttachProcess(ctx, p.PID, true, runtime.ProcessOutput{Stdout: sw})
		if err != nil {
			t.Fatal(err)
		}
		if end.Running || end.ExitCode == nil || *end.ExitCode != 0 || sw.String() != "started\nbefore\nafter\n" {
			t.Fatalf("the restored process ended %+v with output %q", end, sw.String())
		}
	})

	t.Run("ProcessMemory", func(t *testing.T) {
		s.need(t, s.h.Caps.CheckpointMemory && s.h.Caps.RealCommands, "CheckpointMemory and RealCommands")
		d := s.driver(t)
		sb := s.create(t, d, nil)
		// A counter that lives only in a shell's memory, written out on
		// every tick.
		s.sh(t, sb, `i=0; while true; do i=$((i+1)); echo $i > /workspace/count.tmp; mv /workspace/count.tmp /workspace/count; sleep 0.05; done > /dev/null 2>&1 &`)
		before := s.waitCount(t, sb, 3)
		dir := filepath.Join(t.TempDir(), "snap")
		if _, err := sb.Checkpoint(s.ctx(t), dir); err != nil {
			t.Fatal(err)
		}
		r := s.restore(t, d, dir, nil)
		at := s.count(t, r)
		if at < before {
			t.Fatalf("the counter went back from %d to %d", before, at)
		}
		s.waitCount(t, r, at+3)
	})
}

func (s *suite) count(t *testing.T, sb runtime.Sandbox) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(s.read(t, sb, "/workspace/count")))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (s *suite) waitCount(t *testing.T, sb runtime.Sandbox, above int) int {
	t.Helper()
	var n int
	if !eventually(30*time.Second, func() bool {
		var b strings.Builder
		if _, err := sb.ReadFile(s.ctx(t), "/workspace/count", &b); err != nil {
			return false
		}
		n, _ = strconv.Atoi(strings.TrimSpace(b.String()))
		return n > above
	}) {
		t.Fatalf("the counter is stuck at %d, want > %d", n, above)
	}
	return n
}

// waitOutput waits until process pid's kept output is want.
func (s *suite) waitOutput(t *testing.T, ps runtime.Processes, pid int, want string) {
	t.Helper()
	var got string
	if !eventually(30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		sw := newStreamWriter()
		_, err := ps.AttachProcess(ctx, pid, true, runtime.ProcessOutput{Stdout: sw})
		got = sw.String()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("attach %d: %v", pid, err)
		}
		return got == want
	}) {
		t.Fatalf("process %d output %q, want %q", pid, got, want)
	}
}
