package runtimetest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/orkestr-eu/orkestr/internal/runtime"
)

// reopen is the harness's second driver over d's state, closed (destroying
// what it holds) when t ends.
func (s *suite) reopen(t *testing.T, d runtime.Driver) runtime.Driver {
	t.Helper()
	d2 := s.h.Reopen(t, d)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := d2.Close(ctx, true); err != nil {
			t.Errorf("close the reopened driver: %v", err)
		}
	})
	return d2
}

func (s *suite) reconcile(t *testing.T) {
	s.need(t, s.h.Caps.Reconcile && s.h.Reopen != nil, "Reconcile")

	t.Run("AdoptsKeptDestroysOthers", func(t *testing.T) {
		d := s.driver(t)
		ctx := s.ctx(t)
		// Sandboxes the old driver leaves behind: no cleanup of their own,
		// the reopened driver owns them.
		mk := func(labels map[string]string) runtime.Sandbox {
			sb, err := d.Create(ctx, s.spec(labels))
			if err != nil {
				t.Fatal(err)
			}
			return sb
		}
		keep := mk(map[string]string{"keep": "yes", "owner": "acct-1"})
		drop := mk(map[string]string{"keep": "no"})
		// A pooled sandbox belongs to a pool that is gone: never adopted.
		pooled := mk(map[string]string{"keep": "yes", "pool": "tmpl/small"})
		s.write(t, keep, "/workspace/kept.txt", "still here")
		if err := d.Close(ctx, false); err != nil {
			t.Fatal(err)
		}

		d2 := s.reopen(t, d)
		var asked []string
		rep, err := d2.Reconcile(ctx, func(i runtime.Info) bool {
			asked = append(asked, i.ID)
			return i.Labels["keep"] == "yes"
		})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(rep.Adopted, []string{keep.ID()}) {
			t.Errorf("adopted %v, want [%s]", rep.Adopted, keep.ID())
		}
		for _, id := range []string{drop.ID(), pooled.ID()} {
			if !slices.Contains(rep.Destroyed, id) {
				t.Errorf("report %+v does not list %s as destroyed", rep, id)
			}
		}
		if !slices.Contains(asked, keep.ID()) || !slices.Contains(asked, drop.ID()) {
			t.Errorf("keep was asked about %v", asked)
		}
		list, err := d2.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].ID != keep.ID() || list[0].Labels["owner"] != "acct-1" || list[0].State != runtime.StateRunning {
			t.Fatalf("list after reconcile: %+v", list)
		}
		adopted, ok := d2.Get(keep.ID())
		if !ok {
			t.Fatal("Get does not find the adopted sandbox")
		}
		if got := s.read(t, adopted, "/workspace/kept.txt"); got != "still here" {
			t.Errorf("file in the adopted sandbox: %q", got)
		}
		if got := s.sh(t, adopted, "echo adopted"); got != "adopted\n" {
			t.Errorf("exec in the adopted sandbox: %q", got)
		}
		if _, ok := d2.Get(drop.ID()); ok {
			t.Error("Get finds a sandbox reconcile destroyed")
		}
		// A second reconcile finds nothing new.
		rep, err = d2.Reconcile(ctx, func(runtime.Info) bool { return true })
		if err != nil || len(rep.Adopted)+len(rep.Destroyed) != 0 {
			t.Errorf("second reconcile: %+v %v", rep, err)
		}

		// Closed with destroy, nothing is left for the next driver.
		if err := d2.Close(ctx, true); err != nil {
			t.Fatal(err)
		}
		waitDone(t, adopted, 30*time.Second)
		d3 := s.reopen(t, d2)
		rep, err = d3.Reconcile(ctx, func(runtime.Info) bool { return true })
		if err != nil || len(rep.Adopted)+len(rep.Destroyed) != 0 {
			t.Errorf("reconcile after a destroying close: %+v %v", rep, err)
		}
	})

	t.Run("NilKeepDestroysAll", func(t *testing.T) {
		d := s.driver(t)
		ctx := s.ctx(t)
		sb, err := d.Create(ctx, s.spec(map[string]string{"keep": "yes"}))
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Close(ctx, false); err != nil {
			t.Fatal(err)
		}
		d2 := s.reopen(t, d)
		rep, err := d2.Reconcile(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Adopted) != 0 || !slices.Contains(rep.Destroyed, sb.ID()) {
			t.Errorf("reconcile with no keep: %+v", rep)
		}
		if list, _ := d2.List(ctx); len(list) != 0 {
			t.Errorf("list: %+v", list)
		}
	})
}
