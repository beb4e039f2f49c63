package runtimetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

func (s *suite) lifecycle(t *testing.T) {
	t.Run("CreateInfoGetList", func(t *testing.T) {
		d := s.driver(t)
		if d.Name() == "" {
			t.Error("Name is empty")
		}
		labels := map[string]string{"owner": "acct-1", "quoted": `a "b" 'c'`}
		before := time.Now()
		a := s.create(t, d, labels)
		b := s.create(t, d, nil)
		if a.ID() == "" || a.ID() == b.ID() {
			t.Fatalf("ids %q and %q: want distinct and non-empty", a.ID(), b.ID())
		}
		info := a.Info()
		if info.ID != a.ID() || info.Template != s.h.Spec.Template || info.Resources != s.h.Spec.Resources ||
			info.State != runtime.StateRunning || info.Pooled || info.Network != runtime.NetworkOff || !maps.Equal(info.Labels, labels) {
			t.Errorf("info: %+v (spec %+v)", info, s.h.Spec)
		}
		if info.CreatedAt.Before(before.Add(-time.Minute)) || info.CreatedAt.After(time.Now().Add(time.Minute)) {
			t.Errorf("created at %v, the test started at %v", info.CreatedAt, before)
		}
		// The caller's map is not the driver's.
		labels["owner"] = "changed"
		if a.Info().Labels["owner"] != "acct-1" {
			t.Error("changing the caller's label map changed the sandbox's labels")
		}
		if got, ok := d.Get(a.ID()); !ok || got.ID() != a.ID() {
			t.Errorf("Get(%s) = %v, %v", a.ID(), got, ok)
		}
		if _, ok := d.Get("no-such-sandbox"); ok {
			t.Error("Get of an unknown id succeeded")
		}
		list, err := d.List(s.ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		ids := map[string]runtime.Info{}
		for _, i := range list {
			ids[i.ID] = i
		}
		if len(list) != 2 || ids[a.ID()].Labels["owner"] != "acct-1" || ids[b.ID()].State != runtime.StateRunning {
			t.Errorf("list: %+v", list)
		}
		select {
		case <-a.Done():
			t.Fatal("Done is closed on a running sandbox")
		default:
		}
		if err := a.Err(); err != nil {
			t.Fatalf("Err of a running sandbox: %v", err)
		}
	})

	t.Run("CreateRefusesBadSpec", func(t *testing.T) {
		d := s.driver(t)
		sp := s.spec(nil)
		sp.Rootfs = "relative/rootfs"
		if sb, err := d.Create(s.ctx(t), sp); err == nil {
			destroy(t, sb)
			t.Error("create with a relative rootfs succeeded")
		}
		sp.Rootfs = "/nonexistent-orkestr-template/rootfs"
		if sb, err := d.Create(s.ctx(t), sp); err == nil {
			destroy(t, sb)
			t.Error("create with a missing rootfs succeeded")
		}
		if list, _ := d.List(s.ctx(t)); len(list) != 0 {
			t.Errorf("failed creates left %d sandboxes", len(list))
		}
	})

	t.Run("PooledThenConfigured", func(t *testing.T) {
		d := s.driver(t)
		sb := s.create(t, d, map[string]string{"pool": "tmpl/small"})
		if i := sb.Info(); !i.Pooled || i.Labels["pool"] != "tmpl/small" {
			t.Fatalf("a sandbox started with a pool label: %+v", i)
		}
		if got := s.sh(t, sb, `printf '%s|%s' "$CLAIM_A" "$CLAIM_B"`); got != "|" {
			t.Fatalf("env before the claim: %q", got)
		}
		err := sb.Configure(s.ctx(t), runtime.Claim{
			Env:    map[string]string{"CLAIM_A": "a value", "CLAIM_B": "it's \"quoted\" $x\nand two lines"},
			Labels: map[string]string{"owner": "acct-2"}, Hostname: "claimed",
		})
		if err != nil {
			t.Fatal(err)
		}
		i := sb.Info()
		if i.Pooled || i.Labels["pool"] != "" || i.Labels["owner"] != "acct-2" {
			t.Fatalf("info after the claim: %+v", i)
		}
		if got := s.sh(t, sb, `printf '%s|%s' "$CLAIM_A" "$CLAIM_B"`); got != "a value|it's \"quoted\" $x\nand two lines" {
			t.Fatalf("env after the claim: %q", got)
		}
		if got := s.sh(t, sb, "cat /etc/hostname"); got != "claimed\n" {
			t.Errorf("/etc/hostname after a claim with a hostname: %q", got)
		}
		// A second claim replaces the env.
		if err := sb.Configure(s.ctx(t), runtime.Claim{Env: map[string]string{"CLAIM_B": "again"}}); err != nil {
			t.Fatal(err)
		}
		if got := s.sh(t, sb, `printf '%s|%s' "$CLAIM_A" "$CLAIM_B"`); got != "|again" {
			t.Fatalf("env after a second claim: %q", got)
		}
		// Bad claims are refused.
		wantErr(t, "configure with a bad env name", sb.Configure(s.ctx(t), runtime.Claim{Env: map[string]string{"A=B": "x"}}), runtime.ErrInvalidRequest)
		if !s.h.Caps.Network {
			wantErr(t, "configure network on a sandbox without one", sb.Configure(s.ctx(t), runtime.Claim{Network: runtime.NetworkOpen}), runtime.ErrInvalidRequest)
		}
	})

	t.Run("ConfiguredBehind", func(t *testing.T) {
		d := s.driver(t)
		sb := s.create(t, d, map[string]string{"pool": "tmpl/small"})
		bc, ok := sb.(runtime.BackgroundConfigurer)
		if !ok {
			t.Skip("the driver's sandboxes apply claims only in Configure")
		}
		// Refused at once, the sandbox untouched: what any sandbox would
		// refuse for the claim itself.
		wantErr(t, "a bad env name", bc.ConfigureBehind(runtime.Claim{Env: map[string]string{"A=B": "x"}}), runtime.ErrInvalidRequest)
		wantErr(t, "a 2 MiB env", bc.ConfigureBehind(runtime.Claim{Env: map[string]string{"BIG": strings.Repeat("x", 2<<20)}}), runtime.ErrInvalidRequest)
		if !s.h.Caps.Network {
			wantErr(t, "a network on a sandbox without one", bc.ConfigureBehind(runtime.Claim{Network: runtime.NetworkOpen}), runtime.ErrInvalidRequest)
		}
		if i := sb.Info(); !i.Pooled {
			t.Fatalf("a refused claim was taken: %+v", i)
		}
		err := bc.ConfigureBehind(runtime.Claim{
			Env:    map[string]string{"CLAIM_A": "behind", "CLAIM_B": "two\nlines"},
			Labels: map[string]string{"owner": "acct-3"}, Hostname: "behind", Resources: s.h.Spec.Resources,
		})
		if err != nil {
			t.Fatal(err)
		}
		// Taken at once; the first command, sent at once, runs with it.
		if i := sb.Info(); i.Pooled || i.Labels["pool"] != "" || i.Labels["owner"] != "acct-3" {
			t.Fatalf("info right after the claim: %+v", i)
		}
		if got := s.sh(t, sb, `printf '%s|%s|' "$CLAIM_A" "$CLAIM_B"; cat /etc/hostname`); got != "behind|two\nlines|behind\n" {
			t.Fatalf("the first command after a claim taken behind saw %q", got)
		}
		// Claims in a row apply in order.
		for i := range 5 {
			if err := bc.ConfigureBehind(runtime.Claim{Env: map[string]string{"N": fmt.Sprint(i)}}); err != nil {
				t.Fatal(err)
			}
		}
		if got := s.sh(t, sb, `printf '%s' "$N"`); got != "4" {
			t.Fatalf("after 5 claims in a row: N=%q, want 4", got)
		}

		// Destroyed while its claim is applied: the destroy wins, nothing
		// waits for ever.
		other := s.create(t, d, map[string]string{"pool": "tmpl/small"})
		if err := other.(runtime.BackgroundConfigurer).ConfigureBehind(runtime.Claim{Env: map[string]string{"X": "1"}}); err != nil {
			t.Fatal(err)
		}
		if err := other.Destroy(s.ctx(t)); err != nil {
			t.Fatal(err)
		}
		waitDone(t, other, 10*time.Second)
		_, err = other.Exec(s.ctx(t), runtime.ExecRequest{Command: "true"})
		wantErr(t, "exec after a destroy during the claim", err, runtime.ErrStopped)
	})

	t.Run("DestroyIsIdempotentAndFinal", func(t *testing.T) {
		d := s.driver(t)
		sb := s.create(t, d, nil)
		other := s.create(t, d, nil)
		s.write(t, sb, "/workspace/f", "x")
		if err := sb.Destroy(s.ctx(t)); err != nil {
			t.Fatal(err)
		}
		waitDone(t, sb, 10*time.Second)
		if err := sb.Destroy(s.ctx(t)); err != nil {
			t.Errorf("second destroy: %v", err)
		}
		if err := sb.Err(); !errors.Is(err, runtime.ErrStopped) {
			t.Errorf("Err after destroy: %v, want ErrStopped", err)
		}
		if st := sb.Info().State; st != runtime.StateStopped {
			t.Errorf("state after destroy: %s", st)
		}
		if _, ok := d.Get(sb.ID()); ok {
			t.Error("Get finds a destroyed sandbox")
		}
		if list, _ := d.List(s.ctx(t)); len(list) != 1 || list[0].ID != other.ID() {
			t.Errorf("list after destroy: %+v", list)
		}
		ctx := s.ctx(t)
		_, err := sb.Exec(ctx, runtime.ExecRequest{Command: "true"})
		wantErr(t, "exec after destroy", err, runtime.ErrStopped)
		_, err = sb.ReadFile(ctx, "/workspace/f", &strings.Builder{})
		wantErr(t, "read after destroy", err, runtime.ErrStopped)
		_, err = sb.WriteFile(ctx, "/workspace/f", 0, strings.NewReader("y"))
		wantErr(t, "write after destroy", err, runtime.ErrStopped)
		_, err = sb.List(ctx, "/workspace")
		wantErr(t, "list after destroy", err, runtime.ErrStopped)
		wantErr(t, "configure after destroy", sb.Configure(ctx, runtime.Claim{}), runtime.ErrStopped)
		if _, err := sb.Stats(ctx); err == nil {
			t.Error("stats after destroy succeeded")
		}
		// The other sandbox is untouched.
		if got := s.sh(t, other, "echo alive"); got != "alive\n" {
			t.Fatalf("the other sandbox: %q", got)
		}
	})

	t.Run("DestroyEndsCallsInFlight", func(t *testing.T) {
		d := s.driver(t)
		sb := s.create(t, d, nil)
		sw := newStreamWriter()
		errc := make(chan error, 1)
		go func() {
			_, err := sb.Exec(context.Background(), runtime.ExecRequest{Command: "echo started; sleep 1000", Stdout: sw})
			errc <- err
		}()
		if !sw.waitFor("started\n", 30*time.Second) {
			t.Fatal("the command did not start")
		}
		if err := sb.Destroy(s.ctx(t)); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errc:
			wantErr(t, "an exec across a destroy", err, runtime.ErrStopped)
		case <-time.After(30 * time.Second):
			t.Fatal("an exec outlived its sandbox")
		}
	})

	t.Run("CreateWithADoneContext", func(t *testing.T) {
		d := s.driver(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if sb, err := d.Create(ctx, s.spec(nil)); err == nil {
			destroy(t, sb)
			t.Fatal("a create whose context was done succeeded")
		}
		if list, _ := d.List(s.ctx(t)); len(list) != 0 {
			t.Errorf("a cancelled create left %d sandboxes", len(list))
		}
	})

	t.Run("DestroyConcurrent", func(t *testing.T) {
		d := s.driver(t)
		sb := s.create(t, d, nil)
		errs := make(chan error, 4)
		for range 4 {
			go func() { errs <- sb.Destroy(context.Background()) }()
		}
		for range 4 {
			if err := <-errs; err != nil {
				t.Errorf("concurrent destroy: %v", err)
			}
		}
		waitDone(t, sb, 10*time.Second)
	})

	t.Run("CloseDestroysAll", func(t *testing.T) {
		d := s.driver(t)
		a, b := s.create(t, d, nil), s.create(t, d, nil)
		if err := d.Close(s.ctx(t), true); err != nil {
			t.Fatal(err)
		}
		waitDone(t, a, 10*time.Second)
		waitDone(t, b, 10*time.Second)
		if list, _ := d.List(s.ctx(t)); len(list) != 0 {
			t.Errorf("list after close: %+v", list)
		}
	})

	t.Run("StopsWhenItsInitDies", func(t *testing.T) {
		s.need(t, s.h.Caps.RealCommands, "RealCommands")
		d := s.driver(t)
		sb := s.create(t, d, nil)
		// PID 1 (the driver's agent or init) is killed from inside.
		_, _ = sb.Exec(s.ctx(t), runtime.ExecRequest{Command: "kill -9 1"})
		waitDone(t, sb, 30*time.Second)
		if err := sb.Err(); !errors.Is(err, runtime.ErrStopped) {
			t.Errorf("Err of a sandbox whose init died: %v, want ErrStopped", err)
		}
		if st := sb.Info().State; st != runtime.StateStopped {
			t.Errorf("state: %s", st)
		}
		_, err := sb.Exec(s.ctx(t), runtime.ExecRequest{Command: "true"})
		wantErr(t, "exec on a dead sandbox", err, runtime.ErrStopped)
		if err := sb.Destroy(s.ctx(t)); err != nil {
			t.Errorf("destroy a dead sandbox: %v", err)
		}
	})
}

func (s *suite) network(t *testing.T) {
	d := s.driver(t)
	sp := s.spec(nil)
	sp.Networked = true
	if !s.h.Caps.Network {
		sb, err := d.Create(s.ctx(t), sp)
		if err == nil {
			destroy(t, sb)
		}
		wantErr(t, "networked create on a driver without a network", err, runtime.ErrNoNetwork)
		if list, _ := d.List(s.ctx(t)); len(list) != 0 {
			t.Errorf("a refused networked create left %d sandboxes", len(list))
		}
		return
	}
	// A pooled networked sandbox denies everything until its claim.
	sp.Labels = map[string]string{"pool": "tmpl/small/net"}
	sb := s.createSpec(t, d, sp)
	if n := sb.Info().Network; n != "deny" {
		t.Errorf("a pooled networked sandbox reports network %q, want deny", n)
	}
	wantErr(t, "network off on a networked sandbox", sb.Configure(s.ctx(t), runtime.Claim{Network: runtime.NetworkOff}), runtime.ErrInvalidRequest)
	if err := sb.Configure(s.ctx(t), runtime.Claim{Network: runtime.NetworkRestricted}); err != nil {
		t.Fatal(err)
	}
	if n := sb.Info().Network; n != runtime.NetworkRestricted {
		t.Errorf("network after a restricted claim: %q", n)
	}
	if got := s.sh(t, sb, "echo networked"); got != "networked\n" {
		t.Fatalf("exec in a networked sandbox: %q", got)
	}
	// The same claim taken behind: its mode shows at once, an impossible
	// one is refused at once, and the first command runs under it.
	sp.Labels = map[string]string{"pool": "tmpl/small/net"}
	behind := s.createSpec(t, d, sp)
	if bc, ok := behind.(runtime.BackgroundConfigurer); ok {
		wantErr(t, "network off on a networked sandbox, behind", bc.ConfigureBehind(runtime.Claim{Network: runtime.NetworkOff}), runtime.ErrInvalidRequest)
		wantErr(t, "an unknown network mode, behind", bc.ConfigureBehind(runtime.Claim{Network: "wide-open"}), runtime.ErrInvalidRequest)
		if err := bc.ConfigureBehind(runtime.Claim{Network: runtime.NetworkRestricted}); err != nil {
			t.Fatal(err)
		}
		if n := behind.Info().Network; n != runtime.NetworkRestricted {
			t.Errorf("network right after a restricted claim taken behind: %q", n)
		}
		if got := s.sh(t, behind, "echo networked"); got != "networked\n" {
			t.Fatalf("exec in a networked sandbox claimed behind: %q", got)
		}
		if n := behind.Info().Network; n != runtime.NetworkRestricted {
			t.Errorf("network once the claim taken behind is applied: %q", n)
		}
	}
	if !s.h.Caps.Checkpoint {
		return
	}
	// A restored sandbox has the network it was paused with.
	dir := filepath.Join(t.TempDir(), "snap")
	if _, err := sb.Checkpoint(s.ctx(t), dir); err != nil {
		t.Fatal(err)
	}
	r := s.restore(t, d, dir, nil)
	if n := r.Info().Network; n != runtime.NetworkRestricted {
		t.Errorf("network after restore: %q", n)
	}
	if got := s.sh(t, r, "echo restored"); got != "restored\n" {
		t.Fatalf("exec in a restored networked sandbox: %q", got)
	}
}
