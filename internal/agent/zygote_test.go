package agent

import (
	"io"
	"log/slog"
	"testing"
	"time"
)

func testAgent(t *testing.T) *Agent {
	t.Helper()
	return New(t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// A zygote whose script pipe closes without a script (its Agent gone and
// collected, say) must not write a status: the fd number it would write to
// may by then belong to another command's output pipe.
func TestZygoteWithoutScriptReportsNothing(t *testing.T) {
	a := testAgent(t)
	p, err := a.spawn("", "/", a.envMap(nil), true)
	if err != nil {
		t.Fatal(err)
	}
	defer p.closeAll()
	p.script.Close()
	p.script = nil
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		a.discard(p)
		t.Fatal("the zygote did not exit when its script pipe closed")
	}
	// The shell has exited, so whatever it wrote is in the pipe.
	p.statusW.Close()
	p.statusW = nil
	if got, err := io.ReadAll(p.statusR); err != nil || len(got) != 0 {
		t.Fatalf("a zygote without a script reported %q (%v)", got, err)
	}
}

// The report is what ends a handed-over command; check it still comes.
func TestZygoteReportsItsCommandsStatus(t *testing.T) {
	a := testAgent(t)
	p, err := a.spawn("", "/", a.envMap(nil), true)
	if err != nil {
		t.Fatal(err)
	}
	defer a.discard(p)
	status := p.watchStatus()
	if _, ok := handOver(p, "(exit 3)", "/", a.envMap(nil)); !ok {
		t.Fatal("hand over failed")
	}
	select {
	case code := <-status:
		if code != 3 {
			t.Fatalf("reported %d, want 3", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no report")
	}
}

// Once Run has returned no zygote is left running, and none is started by
// an exec that ends afterwards.
func TestStopZygotesKillsTheReadyOne(t *testing.T) {
	a := testAgent(t)
	a.refillZygote()
	var p *proc
	for deadline := time.Now().Add(10 * time.Second); p == nil; {
		a.zygotes.mu.Lock()
		p = a.zygotes.ready
		a.zygotes.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("no zygote started")
		}
		time.Sleep(time.Millisecond)
	}
	a.stopZygotes()
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the ready zygote still runs after stopZygotes")
	}
	a.refillZygote()
	a.zygotes.mu.Lock()
	defer a.zygotes.mu.Unlock()
	if a.zygotes.ready != nil || a.zygotes.filling {
		t.Fatal("a zygote was started after stopZygotes")
	}
}
