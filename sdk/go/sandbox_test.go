package orkestr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strconv"
	"testing"
	"time"
)

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestCreateSandboxWire(t *testing.T) {
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "POST" || r.URL.Path != "/v1/sandboxes" {
			t.Errorf("%s %s", r.Method, r.URL.Path)
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type = %q", ct)
		}
		got := bodyMap(t, r)
		want := map[string]any{
			"template": "python-3.12", "size": "medium", "network": "restricted", "timeout_seconds": 120.0,
			"env":      map[string]any{"OPENAI_API_KEY": "sk-1"},
			"metadata": map[string]any{"agentRun": "r_123", "Mixed_Case-Key": "V"},
			"region":   "fsn1",
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("body = %v\nwant  %v", got, want)
		}
		w.Header().Set("X-Request-Id", "req_1")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(201)
		_, _ = w.Write([]byte(sandboxJSON))
	})
	sb, err := c.CreateSandbox(context.Background(), CreateParams{
		Template: "python-3.12", Size: "medium", Network: NetworkRestricted, TimeoutSeconds: 120,
		Env: map[string]string{"OPENAI_API_KEY": "sk-1"}, Metadata: map[string]string{"agentRun": "r_123", "Mixed_Case-Key": "V"},
		Region: "fsn1",
	})
	if err != nil {
		t.Fatal(err)
	}
	exp := mustTime(t, "2026-05-01T10:10:00Z")
	want := Sandbox{
		ID: "sbx_01HXYZ", Status: StatusRunning, Template: "python-3.12", Size: "small", CPU: 0.5, MemoryMB: 512,
		Network: "off", Region: "fsn1", TimeoutSeconds: 600, ExpiresAt: &exp, EnvKeys: []string{"OPENAI_API_KEY"},
		Metadata:  map[string]string{"agentRun": "r_123", "Mixed_Case-Key": "V"},
		CreatedAt: mustTime(t, "2026-05-01T10:00:00.123Z"), client: c,
	}
	if !reflect.DeepEqual(*sb, want) {
		t.Errorf("sandbox = %+v\nwant      %+v", *sb, want)
	}
	if sb.Client() != c {
		t.Error("the sandbox lost its client")
	}
}

func TestCreateSandboxSendsOnlyWhatIsSet(t *testing.T) {
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Template string `json:"template"`
		}
		decodeStrict(t, r, &req) // defaults are left to the API: no other field
		if req.Template != "node-22" {
			t.Errorf("template = %q", req.Template)
		}
		writeJSON(w, 201, sandboxObj("sbx_2", "running"))
	})
	if _, err := c.CreateSandbox(context.Background(), CreateParams{Template: "node-22"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSandbox(context.Background(), CreateParams{}); err == nil {
		t.Error("no template: no error")
	}
}

func TestSandboxLifecycleWire(t *testing.T) {
	paused := sandboxObj("sbx_1", "paused")
	paused["expires_at"], paused["paused_at"] = nil, "2026-05-01T10:05:00.000Z"
	var seen []string
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Method+" "+r.URL.Path)
		switch r.Method + " " + r.URL.Path {
		case "GET /v1/sandboxes/sbx_1":
			writeJSON(w, 200, paused)
		case "PATCH /v1/sandboxes/sbx_1":
			got := bodyMap(t, r)
			obj := sandboxObj("sbx_1", "running")
			if v, ok := got["timeout_seconds"]; ok {
				obj["timeout_seconds"] = v
			}
			if v, ok := got["metadata"]; ok {
				obj["metadata"] = v
			}
			obj["patched"] = fmt.Sprint(len(got)) // unknown answer fields are ignored
			writeJSON(w, 200, obj)
		case "POST /v1/sandboxes/sbx_1/pause":
			writeJSON(w, 200, map[string]any{"id": "sbx_1", "status": "paused", "snapshot_bytes": 123456789})
		case "POST /v1/sandboxes/sbx_1/resume":
			writeJSON(w, 200, sandboxObj("sbx_1", "running"))
		case "DELETE /v1/sandboxes/sbx_1":
			obj := sandboxObj("sbx_1", "terminated")
			obj["expires_at"], obj["terminated_at"] = nil, "2026-05-01T11:00:00.000Z"
			writeJSON(w, 200, obj)
		default:
			t.Errorf("unexpected %s %s", r.Method, r.URL.Path)
		}
	})
	ctx := context.Background()
	sb, err := c.GetSandbox(ctx, "sbx_1")
	if err != nil {
		t.Fatal(err)
	}
	if sb.Status != StatusPaused || sb.ExpiresAt != nil || sb.PausedAt == nil || !sb.PausedAt.Equal(mustTime(t, "2026-05-01T10:05:00Z")) {
		t.Errorf("paused sandbox: %+v", sb)
	}
	if err := sb.Resume(ctx); err != nil || sb.Status != StatusRunning || sb.PausedAt != nil {
		t.Fatalf("Resume: %v, %+v", err, sb)
	}
	ten := 10
	if err := sb.Update(ctx, UpdateParams{TimeoutSeconds: &ten}); err != nil || sb.TimeoutSeconds != 10 {
		t.Fatalf("Update timeout: %v, %d", err, sb.TimeoutSeconds)
	}
	if sb.Metadata["agentRun"] != "r_123" {
		t.Errorf("metadata changed by a timeout-only update: %v", sb.Metadata)
	}
	if err := sb.Update(ctx, UpdateParams{Metadata: map[string]string{}}); err != nil || len(sb.Metadata) != 0 {
		t.Fatalf("Update clearing metadata: %v, %v", err, sb.Metadata)
	}
	res, err := sb.Pause(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if *res != (PauseResult{ID: "sbx_1", Status: StatusPaused, SnapshotBytes: 123456789}) || sb.Status != StatusPaused {
		t.Errorf("Pause = %+v, status %s", res, sb.Status)
	}
	sb2, err := c.ResumeSandbox(ctx, res.ID)
	if err != nil || sb2.Status != StatusRunning || sb2.ID != "sbx_1" {
		t.Fatalf("ResumeSandbox: %v %+v", err, sb2)
	}
	if err := sb.Terminate(ctx); err != nil || sb.Status != StatusTerminated || sb.TerminatedAt == nil {
		t.Fatalf("Terminate: %v %+v", err, sb)
	}
	if err := sb.Refresh(ctx); err != nil || sb.Status != StatusPaused || sb.client != c {
		t.Fatalf("Refresh: %v %+v", err, sb)
	}
	want := []string{"GET /v1/sandboxes/sbx_1", "POST /v1/sandboxes/sbx_1/resume", "PATCH /v1/sandboxes/sbx_1",
		"PATCH /v1/sandboxes/sbx_1", "POST /v1/sandboxes/sbx_1/pause", "POST /v1/sandboxes/sbx_1/resume",
		"DELETE /v1/sandboxes/sbx_1", "GET /v1/sandboxes/sbx_1"}
	if !reflect.DeepEqual(seen, want) {
		t.Errorf("requests:\n%v\nwant\n%v", seen, want)
	}
}

func TestUpdateBody(t *testing.T) {
	var bodies []string
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		raw := bodyMap(t, r)
		b, _ := json.Marshal(raw)
		bodies = append(bodies, string(b))
		writeJSON(w, 200, sandboxObj("sbx_1", "running"))
	})
	sb, ctx, n := c.Sandbox("sbx_1"), context.Background(), 30
	_ = sb.Update(ctx, UpdateParams{})
	_ = sb.Update(ctx, UpdateParams{TimeoutSeconds: &n})
	_ = sb.Update(ctx, UpdateParams{Metadata: map[string]string{}})
	_ = sb.Update(ctx, UpdateParams{Metadata: map[string]string{"camelCase": "x"}})
	want := []string{`{}`, `{"timeout_seconds":30}`, `{"metadata":{}}`, `{"metadata":{"camelCase":"x"}}`}
	if !reflect.DeepEqual(bodies, want) {
		t.Errorf("bodies = %v, want %v", bodies, want)
	}
}

func TestListSandboxesIteratesAllPages(t *testing.T) {
	var cursors []string
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("status") != "running" || q.Get("limit") != "2" {
			t.Errorf("query = %v", q)
		}
		cursors = append(cursors, q.Get("cursor"))
		var page map[string]any
		switch q.Get("cursor") {
		case "":
			page = map[string]any{"data": []any{sandboxObj("sbx_6", "running"), sandboxObj("sbx_5", "running")}, "next_cursor": "c2"}
		case "c2":
			page = map[string]any{"data": []any{sandboxObj("sbx_4", "running"), sandboxObj("sbx_3", "running")}, "next_cursor": "c3"}
		case "c3":
			page = map[string]any{"data": []any{sandboxObj("sbx_2", "running")}, "next_cursor": nil}
		default:
			writeAPIError(w, 400, "invalid_request", "bad cursor", map[string]any{"field": "cursor"})
			return
		}
		writeJSON(w, 200, page)
	})
	ctx := context.Background()
	var ids []string
	for sb, err := range c.ListSandboxes(ctx, ListParams{Status: StatusRunning, Limit: 2}) {
		if err != nil {
			t.Fatal(err)
		}
		if sb.client != c {
			t.Error("listed sandbox has no client")
		}
		ids = append(ids, sb.ID)
	}
	if want := []string{"sbx_6", "sbx_5", "sbx_4", "sbx_3", "sbx_2"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("ids = %v, want %v", ids, want)
	}
	if want := []string{"", "c2", "c3"}; !reflect.DeepEqual(cursors, want) {
		t.Errorf("cursors = %v, want %v", cursors, want)
	}

	// Stopping early fetches no further page.
	cursors = nil
	for sb, err := range c.ListSandboxes(ctx, ListParams{Status: StatusRunning, Limit: 2}) {
		if err != nil || sb.ID == "sbx_5" {
			break
		}
	}
	if len(cursors) != 1 {
		t.Errorf("early stop fetched %d pages", len(cursors))
	}

	// The page-level call.
	page, err := c.ListSandboxesPage(ctx, ListParams{Status: StatusRunning, Limit: 2, Cursor: "c3"})
	if err != nil || len(page.Data) != 1 || page.NextCursor != "" {
		t.Fatalf("page = %+v, %v", page, err)
	}

	// An error is yielded once and ends the iteration.
	var errs int
	for sb, err := range c.ListSandboxes(ctx, ListParams{Status: StatusRunning, Limit: 2, Cursor: "bogus"}) {
		if err == nil || sb != nil {
			t.Fatalf("got %v, %v", sb, err)
		}
		errs++
	}
	if errs != 1 {
		t.Errorf("%d errors yielded", errs)
	}
}

func TestWithTempSandbox(t *testing.T) {
	var terminated []string
	var created int
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case "POST":
			created++
			writeJSON(w, 201, sandboxObj("sbx_"+strconv.Itoa(created), "running"))
		case "DELETE":
			id := r.URL.Path[len("/v1/sandboxes/"):]
			terminated = append(terminated, id)
			writeJSON(w, 200, sandboxObj(id, "terminated"))
		}
	})
	ctx := context.Background()
	params := CreateParams{Template: "python-3.12"}

	// Success.
	var got *Sandbox
	if err := c.WithTempSandbox(ctx, params, func(sb *Sandbox) error { got = sb; return nil }); err != nil {
		t.Fatal(err)
	}
	if got.ID != "sbx_1" || len(terminated) != 1 || terminated[0] != "sbx_1" {
		t.Fatalf("terminated = %v", terminated)
	}

	// The callback's error is returned, and the sandbox still terminated.
	boom := errors.New("boom")
	if err := c.WithTempSandbox(ctx, params, func(*Sandbox) error { return boom }); err != boom {
		t.Errorf("err = %v, want the callback's error itself", err)
	}
	if len(terminated) != 2 {
		t.Errorf("terminated = %v after a failed callback", terminated)
	}

	// A panic propagates after the sandbox is terminated.
	func() {
		defer func() {
			if v := recover(); v != "panic!" {
				t.Errorf("recovered %v", v)
			}
		}()
		_ = c.WithTempSandbox(ctx, params, func(*Sandbox) error { panic("panic!") })
	}()
	if len(terminated) != 3 {
		t.Errorf("terminated = %v after a panic", terminated)
	}

	// A context cancelled in the callback does not stop the termination.
	cctx, cancel := context.WithCancel(ctx)
	err := c.WithTempSandbox(cctx, params, func(*Sandbox) error { cancel(); return cctx.Err() })
	if !errors.Is(err, context.Canceled) || len(terminated) != 4 {
		t.Errorf("err = %v, terminated = %v", err, terminated)
	}
}

func TestWithTempSandboxTerminateFailure(t *testing.T) {
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" {
			writeJSON(w, 201, sandboxObj("sbx_1", "running"))
			return
		}
		writeAPIError(w, 500, "internal", "Something went wrong.", nil)
	}, WithMaxRetries(0))
	boom := errors.New("boom")
	err := c.WithTempSandbox(context.Background(), CreateParams{Template: "x"}, func(*Sandbox) error { return boom })
	var e *Error
	if !errors.Is(err, boom) || !errors.As(err, &e) || e.Code != "internal" {
		t.Errorf("err = %v, want both the callback's and the terminate error", err)
	}
}

func TestFork(t *testing.T) {
	var seen []string
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Method+" "+r.URL.Path)
		switch {
		case r.URL.Path == "/v1/sandboxes/sbx_1/fork":
			if b := bodyMap(t, r); b["count"] != 2.0 {
				t.Errorf("fork body: %v", b)
			}
			writeJSON(w, 201, map[string]any{"data": []any{sandboxObj("sbx_2", "running"), sandboxObj("sbx_3", "running")}})
		case r.URL.Path == "/v1/sandboxes/sbx_9/fork":
			writeJSON(w, 402, map[string]any{"error": map[string]any{"code": "fork_limit", "message": "at most 10", "details": map[string]any{"max_fork": 10}}})
		default:
			writeJSON(w, 200, sandboxObj(r.URL.Path[len("/v1/sandboxes/"):], "running"))
		}
	})
	ctx := context.Background()
	clones, err := c.Sandbox("sbx_1").Fork(ctx, 2)
	if err != nil || len(clones) != 2 || clones[0].ID != "sbx_2" || clones[1].Status != StatusRunning {
		t.Fatalf("Fork: %v %+v", err, clones)
	}
	// The clones are usable sandboxes of the same client.
	if err := clones[1].Refresh(ctx); err != nil || clones[1].ID != "sbx_3" {
		t.Fatalf("Refresh of a clone: %v", err)
	}
	_, err = c.Sandbox("sbx_9").Fork(ctx, 11)
	var pl *PlanLimitError
	if !errors.As(err, &pl) || pl.Code != "fork_limit" {
		t.Fatalf("over max_fork: %#v", err)
	}
	want := []string{"POST /v1/sandboxes/sbx_1/fork", "GET /v1/sandboxes/sbx_3", "POST /v1/sandboxes/sbx_9/fork"}
	if !reflect.DeepEqual(seen, want) {
		t.Errorf("requests %v, want %v", seen, want)
	}
}
