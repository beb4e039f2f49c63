package orkestr

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// The process calls' wire format, against a stand-in server (the real one
// is exercised by e2e/sdk_processes_test.go).
func TestProcessWire(t *testing.T) {
	const proc = `{"pid":42,"command":"cat","cwd":"/workspace","user":"user","started_at":"2026-05-01T10:00:00Z","running":true,"exit_code":null,"signal":null,"ended_at":null}`
	c, _ := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.Method + " " + r.URL.Path {
		case "POST /v1/sandboxes/sbx_1/processes":
			got := bodyMap(t, r)
			want := map[string]any{"command": "cat", "user": "user", "cwd": "/tmp", "env": map[string]any{"A": "1"}}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("start body %v", got)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(201)
			_, _ = io.WriteString(w, proc)
		case "POST /v1/sandboxes/sbx_1/processes/42/stdin":
			got := bodyMap(t, r)
			if !reflect.DeepEqual(got, map[string]any{"data_base64": "AAFoaQ==", "eof": false}) && !reflect.DeepEqual(got, map[string]any{"eof": true}) {
				t.Errorf("stdin body %v", got)
			}
			w.WriteHeader(204)
		case "POST /v1/sandboxes/sbx_1/processes/42/signal":
			if got := bodyMap(t, r); got["signal"] != 15.0 {
				t.Errorf("signal body %v", got)
			}
			w.WriteHeader(204)
		case "GET /v1/sandboxes/sbx_1/processes/42/output":
			if r.URL.Query().Get("replay") != "true" {
				t.Errorf("output query %q", r.URL.RawQuery)
			}
			w.Header().Set("Content-Type", "application/x-ndjson")
			_, _ = io.WriteString(w, `{"type":"stdout","data":"a"}`+"\n"+`{"type":"dropped","bytes":7}`+"\n"+
				`{"type":"future-kind"}`+"\n"+`{"type":"stderr","data":"b"}`+"\n"+
				`{"type":"exit","exit_code":143,"signal":15,"process":`+strings.Replace(strings.Replace(proc, `"running":true`, `"running":false`, 1), `"exit_code":null,"signal":null`, `"exit_code":143,"signal":15`, 1)+"}\n")
		case "GET /v1/sandboxes/sbx_1/processes/7/output":
			_, _ = io.WriteString(w, `{"type":"detached","reason":"paused"}`+"\n")
		case "GET /v1/sandboxes/sbx_1/processes/8":
			writeAPIError(w, 404, "process_not_found", "no such process", nil)
		default:
			t.Errorf("unexpected %s %s", r.Method, r.URL.Path)
		}
	})
	ctx := context.Background()
	sb := c.Sandbox("sbx_1")
	p, err := sb.StartProcess(ctx, "cat", ProcessOptions{User: UserUser, Cwd: "/tmp", Env: map[string]string{"A": "1"}})
	if err != nil || p.PID != 42 || !p.Running || p.User != "user" || p.ExitCode != nil {
		t.Fatalf("start: %+v %v", p, err)
	}
	if err := p.WriteStdin(ctx, []byte{0, 1, 'h', 'i'}); err != nil {
		t.Fatal(err)
	}
	if err := p.CloseStdin(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.SendSignal(ctx, 15); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	var dropped int64
	if err := p.Attach(ctx, AttachOptions{Replay: true, Stdout: &out, Stderr: &errOut, Dropped: func(n int64) { dropped += n }}); err != nil {
		t.Fatal(err)
	}
	if out.String() != "a" || errOut.String() != "b" || dropped != 7 || p.Running || *p.ExitCode != 143 || *p.Signal != 15 || p.PID != 42 {
		t.Fatalf("attach: %q %q %d %+v", out.String(), errOut.String(), dropped, p)
	}
	if err := (&Process{PID: 7, sandbox: sb}).Attach(ctx, AttachOptions{}); !errors.Is(err, ErrDetached) {
		t.Fatalf("detached: %v", err)
	}
	if _, err := sb.GetProcess(ctx, 8); !IsProcessNotFound(err) {
		t.Fatalf("not found: %v", err)
	}
}
