package pool_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/pool"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/testenv"
)

func setup(t *testing.T, target int) (*pool.Pool, pool.Key, runtime.Spec, *testenv.Env) {
	t.Helper()
	env := testenv.NewDriver(t)
	p := pool.New(env.Driver, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	t.Cleanup(func() {
		if err := p.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	key := pool.Key{Template: "debian-12", Size: "small"}
	spec := runtime.Spec{Template: "debian-12", Rootfs: testenv.Rootfs(t, "debian-12"), Resources: testenv.Small}
	if target > 0 {
		p.SetTarget(key, spec, target)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := p.WaitFull(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return p, key, spec, env
}

func output(t *testing.T, sb runtime.Sandbox, cmd string) string {
	t.Helper()
	var out bytes.Buffer
	res, err := sb.Exec(context.Background(), runtime.ExecRequest{Command: cmd, Stdout: &out, Stderr: &out})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%q: %v %+v %s", cmd, err, res, out.String())
	}
	return out.String()
}

func TestClaimAppliesEnvLimitsAndLabelsAtClaim(t *testing.T) {
	p, key, spec, env := setup(t, 2)
	if got := p.Ready(key); got != 2 {
		t.Fatalf("ready = %d, want 2", got)
	}
	// Pooled sandboxes carry no owner: nothing in their env, no labels.
	infos, _ := env.Driver.List(context.Background())
	for _, i := range infos {
		if !i.Pooled || i.Labels["owner"] != "" {
			t.Fatalf("pooled sandbox %+v carries owner data", i)
		}
	}
	medium := runtime.Resources{CPU: 1, MemoryBytes: 256 << 20, PIDs: 300}
	sb, warm, err := p.Claim(context.Background(), key, spec, runtime.Claim{
		Env: map[string]string{"SECRET_TOKEN": "s3cr3t"}, Labels: map[string]string{"owner": "acct_1"}, Resources: medium,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(context.Background())
	if !warm {
		t.Fatal("claim from a full pool was not warm")
	}
	if got := output(t, sb, `printf %s "$SECRET_TOKEN"`); got != "s3cr3t" {
		t.Fatalf("env not applied at claim: %q", got)
	}
	st, err := sb.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.MemoryLimitBytes != 256<<20 || st.CPUQuotaMicros != 100000 || st.PIDsLimit != 300 {
		t.Fatalf("limits not applied at claim: %+v", st)
	}
	if i := sb.Info(); i.Pooled || i.Labels["owner"] != "acct_1" || i.Labels["pool"] != "" {
		t.Fatalf("labels not applied at claim: %+v", i)
	}
	// The pool refills behind the claim, and the refill knows nothing of it.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.WaitFull(ctx); err != nil {
		t.Fatal(err)
	}
	sb2, _, err := p.Claim(context.Background(), key, spec, runtime.Claim{})
	if err != nil {
		t.Fatal(err)
	}
	defer sb2.Destroy(context.Background())
	if got := output(t, sb2, `printf %s "${SECRET_TOKEN-unset}"`); got != "unset" {
		t.Fatalf("another claim's env leaked into a pooled sandbox: %q", got)
	}
}

func TestConcurrentClaimsNeverShareASandbox(t *testing.T) {
	p, key, spec, _ := setup(t, 3)
	const n = 6
	var wg sync.WaitGroup
	var mu sync.Mutex
	ids := map[string]int{}
	warmCount := 0
	var sbs []runtime.Sandbox
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			sb, warm, err := p.Claim(ctx, key, spec, runtime.Claim{Env: map[string]string{"N": fmt.Sprint(i)}})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			ids[sb.ID()]++
			sbs = append(sbs, sb)
			if warm {
				warmCount++
			}
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	defer func() {
		for _, sb := range sbs {
			_ = sb.Destroy(context.Background())
		}
	}()
	if len(ids) != n {
		t.Fatalf("%d claims got %d distinct sandboxes: %v", n, len(ids), ids)
	}
	if warmCount < 3 {
		t.Fatalf("only %d of %d claims were warm with 3 ready", warmCount, n)
	}
}

func TestZeroTargetMeansColdStart(t *testing.T) {
	p, key, spec, env := setup(t, 0)
	p.SetTarget(key, spec, 0)
	time.Sleep(200 * time.Millisecond)
	if infos, _ := env.Driver.List(context.Background()); len(infos) != 0 {
		t.Fatalf("pool of size 0 started %d sandboxes", len(infos))
	}
	sb, warm, err := p.Claim(context.Background(), key, spec, runtime.Claim{Env: map[string]string{"A": "b"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(context.Background())
	if warm {
		t.Fatal("claim from a disabled pool reported warm")
	}
	if got := output(t, sb, `printf %s "$A"`); got != "b" {
		t.Fatalf("env on cold start: %q", got)
	}
}

func TestShrinkingAndClosingDestroyPooledSandboxes(t *testing.T) {
	p, key, spec, env := setup(t, 3)
	p.SetTarget(key, spec, 1)
	deadline := time.Now().Add(30 * time.Second)
	for {
		infos, _ := env.Driver.List(context.Background())
		if len(infos) == 1 && p.Ready(key) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool did not shrink: %d sandboxes, %d ready", len(infos), p.Ready(key))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if infos, _ := env.Driver.List(context.Background()); len(infos) != 0 {
		t.Fatalf("close left %d sandboxes", len(infos))
	}
	if _, _, err := p.Claim(context.Background(), key, spec, runtime.Claim{}); err == nil {
		t.Fatal("claim after close succeeded")
	}
}

func TestDeadPooledSandboxIsReplaced(t *testing.T) {
	p, key, spec, env := setup(t, 1)
	infos, _ := env.Driver.List(context.Background())
	if len(infos) != 1 {
		t.Fatalf("want 1 pooled sandbox, have %d", len(infos))
	}
	victim, _ := env.Driver.Get(infos[0].ID)
	// Kill it from the inside: PID 1 exiting stops the sandbox.
	_, _ = victim.Exec(context.Background(), runtime.ExecRequest{Command: "kill -9 1"})
	select {
	case <-victim.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("sandbox whose agent was killed did not stop")
	}
	_ = victim.Destroy(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.WaitFull(ctx); err != nil {
		t.Fatal(err)
	}
	sb, warm, err := p.Claim(context.Background(), key, spec, runtime.Claim{})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(context.Background())
	if !warm || sb.ID() == victim.ID() {
		t.Fatalf("claim got warm=%v id=%s (victim %s)", warm, sb.ID(), victim.ID())
	}
}

// TestPoolFollowsDemand: claims that find the pool empty grow its target
// (up to Max, within Budget); idle, it shrinks back to its base and
// destroys what it no longer needs.
func TestPoolFollowsDemand(t *testing.T) {
	p, key, spec, _ := setup(t, 1)
	p.SetDemand(pool.Demand{Max: 4, Budget: 3, IdleShrink: 3 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	target := func() (ready, target int) {
		for _, d := range p.Depths() {
			if d.Key == key {
				return d.Ready, d.Target
			}
		}
		return 0, 0
	}
	// Rounds of concurrent claims: one is warm, the others find the pool
	// empty and grow it, never past the budget.
	claimRound := func(n int) {
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sb, _, err := p.Claim(ctx, key, spec, runtime.Claim{Resources: testenv.Small})
				if err != nil {
					t.Error(err)
					return
				}
				t.Cleanup(func() { _ = sb.Destroy(context.Background()) })
			}()
		}
		wg.Wait()
	}
	for round := 0; round < 3; round++ {
		claimRound(3)
		_, tg := target()
		t.Logf("round %d: target %d", round, tg)
		if tg > 3 {
			t.Fatalf("target %d over the budget of 3", tg)
		}
		if tg == 3 {
			break
		}
	}
	if _, tg := target(); tg != 3 {
		t.Fatalf("target after claims that found the pool empty: %d, want 3 (the budget; max 4)", tg)
	}
	if err := p.WaitFull(ctx); err != nil {
		t.Fatal(err)
	}
	if r, _ := target(); r != 3 {
		t.Fatalf("grown pool holds %d", r)
	}
	// Idle: it halves back to its base.
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, tg := target()
		if tg == 1 && r == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("idle pool still at %d ready, target %d", r, tg)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
