package api

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// The contract of the operations added after the first contract run
// (processes, stat/exists/mkdir/rename/watch, archives), where the
// schemathesis run found the server and api/openapi.yaml apart: each
// refusal is checked with its code and field, and next to it the nearest
// request that is accepted, against a real sandbox.

// rawDo sends body as it is (nil: no body at all; chunked: without a
// Content-Length).
func (h *harness) rawDo(method, path, key string, body []byte, chunked bool) resp {
	h.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
		if chunked {
			rd = io.MultiReader(rd) // hides the length from net/http
		}
	}
	req, err := http.NewRequest(method, h.http.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/x-tar")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, b}
}

func wantError(t *testing.T, what string, r resp, status int, code, field string) {
	t.Helper()
	if r.status != status || r.code() != code {
		t.Errorf("%s: %d %s, want %d %s", what, r.status, r.body, status, code)
		return
	}
	if field == "" {
		return
	}
	d, _ := r.json(t)["error"].(map[string]any)["details"].(map[string]any)
	if d["field"] != field {
		t.Errorf("%s: details %v, want field %s", what, d, field)
	}
}

func oneFileTar(t *testing.T, name, content string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestContractOfTheNewOperations(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("contract-ops", "team")
	id := h.create(key)
	base := "/v1/sandboxes/" + id

	// mkdir and rename refuse / in every spelling, naming the field; a
	// name that only starts with a dot is a name.
	for _, p := range []string{"/", "//", "/.", "/./", "//./."} {
		wantError(t, "mkdir "+p, h.do("POST", base+"/files/mkdir", key, map[string]any{"path": p}), 400, "invalid_path", "path")
		wantError(t, "rename from "+p, h.do("POST", base+"/files/rename", key, map[string]any{"from": p, "to": "/workspace/x"}), 400, "invalid_path", "from")
		wantError(t, "rename to "+p, h.do("POST", base+"/files/rename", key, map[string]any{"from": "/workspace", "to": p}), 400, "invalid_path", "to")
	}
	if r := h.do("POST", base+"/files/mkdir", key, map[string]any{"path": "/.x", "mode": nil, "parents": nil, "user": nil}); r.status != 200 || r.json(t)["path"] != "/.x" {
		t.Errorf("mkdir /.x with nulls: %d %s", r.status, r.body)
	}
	if r := h.do("POST", base+"/files/rename", key, map[string]any{"from": "/.x", "to": "/.y", "overwrite": nil}); r.status != 200 || r.json(t)["path"] != "/.y" {
		t.Errorf("rename /.x to /.y with overwrite null: %d %s", r.status, r.body)
	}

	// PUT archive: no body is a mistake, whether said by Content-Length: 0
	// or by an empty chunked body; a tar is extracted.
	arch := base + "/files/archive?path=/workspace/arch"
	wantError(t, "archive without a body", h.rawDo("PUT", arch, key, nil, false), 400, "invalid_request", "body")
	wantError(t, "archive with an empty chunked body", h.rawDo("PUT", arch, key, []byte{}, true), 400, "invalid_request", "body")
	wantError(t, "archive of JSON", h.rawDo("PUT", arch, key, []byte(`{"a":1}`), false), 400, "invalid_archive", "")
	if r := h.rawDo("PUT", arch, key, oneFileTar(t, "f.txt", "hello"), true); r.status != 200 || r.json(t)["entries"] != 1.0 {
		t.Errorf("archive of one file: %d %s", r.status, r.body)
	}
	if out := h.exec(key, id, "cat /workspace/arch/f.txt"); out != "hello" {
		t.Errorf("extracted: %q", out)
	}
	// An archive GET of a file is the path's mistake, before any byte.
	wantError(t, "archive of a file", h.do("GET", base+"/files/archive?path=/workspace/arch/f.txt", key, nil), 400, "not_a_directory", "path")

	// Query values given empty are mistakes, as on every route.
	wantError(t, "compression=", h.do("GET", base+"/files/archive?path=/workspace&compression=", key, nil), 400, "invalid_request", "compression")
	wantError(t, "recursive=", h.do("GET", base+"/files/watch?path=/workspace&recursive=", key, nil), 400, "invalid_request", "recursive")
	if r := h.do("GET", base+"/files/archive?path=/workspace&compression=none", key, nil); r.status != 200 || r.header.Get("Content-Type") != "application/x-tar" {
		t.Errorf("compression=none: %d %s", r.status, r.header.Get("Content-Type"))
	}
	// An unknown query parameter is ignored, on a stream as on every route:
	// the watch starts as without it.
	req, _ := http.NewRequest("GET", h.http.URL+base+"/files/watch?path=/workspace&bogus=1&x=", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(res.Body).ReadString('\n')
	res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/x-ndjson" || !strings.Contains(line, `"type":"started"`) {
		t.Errorf("watch with unknown parameters: %d %s %q", res.StatusCode, res.Header.Get("Content-Type"), line)
	}

	// Processes: stdin takes data or data_base64 (strict base64), never
	// both; a signal name is ASCII in any case, with or without SIG.
	r := h.do("POST", base+"/processes", key, map[string]any{"command": "cat", "cwd": nil, "env": nil, "user": nil})
	if r.status != 201 {
		t.Fatalf("start cat with nulls: %d %s", r.status, r.body)
	}
	pid := strconv.Itoa(int(r.json(t)["pid"].(float64)))
	proc := base + "/processes/" + pid
	wantError(t, "stdin with both", h.do("POST", proc+"/stdin", key, map[string]any{"data": "", "data_base64": ""}), 400, "invalid_request", "data")
	wantError(t, "stdin with neither", h.do("POST", proc+"/stdin", key, map[string]any{"eof": false}), 400, "invalid_request", "data")
	wantError(t, "base64 with a line break", h.do("POST", proc+"/stdin", key, map[string]any{"data_base64": "aGk=\n"}), 400, "invalid_request", "data_base64")
	if r := h.do("POST", proc+"/stdin", key, map[string]any{"data": "x", "data_base64": nil}); r.status != 204 {
		t.Errorf("stdin data with data_base64 null: %d %s", r.status, r.body)
	}
	for _, sig := range []any{"", "ſigterm", "TERM ", "SIGSIGTERM", 0, 65} {
		wantError(t, "signal "+strings.TrimSpace(strconv.Quote(toString(sig))), h.do("POST", proc+"/signal", key, map[string]any{"signal": sig}), 400, "invalid_request", "signal")
	}
	if r := h.do("POST", proc+"/signal", key, map[string]any{"signal": "sigTerm"}); r.status != 204 {
		t.Errorf("signal sigTerm: %d %s", r.status, r.body)
	}
	if r := h.do("POST", proc+"/wait", key, map[string]any{"timeout_seconds": nil}); r.status != 200 || r.json(t)["running"] != false {
		t.Errorf("wait with timeout null: %d %s", r.status, r.body)
	}
	wantError(t, "replay=", h.do("GET", proc+"/output?replay=", key, nil), 400, "invalid_request", "replay")
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return strconv.Itoa(v.(int))
}

// TestArchivesAndMovesKeepToTheGuards: archives, mkdir and rename keep to
// the files API's guards (the agent's own files, kernel filesystems, other
// filesystems), as read, write and delete do.
func TestArchivesAndMovesKeepToTheGuards(t *testing.T) {
	h := newHarness(t, testConfig(), true)
	_, key := h.account("guards", "team")
	id := h.create(key)
	base := "/v1/sandboxes/" + id
	token := h.exec(key, id, "echo in-tmp > /tmp/marker && sha256sum /run/agent/token")

	wantError(t, "GET archive of /run/agent", h.do("GET", base+"/files/archive?path=/run/agent", key, nil), 403, "permission_denied", "path")
	wantError(t, "GET archive of /proc/1", h.do("GET", base+"/files/archive?path=/proc/1", key, nil), 403, "permission_denied", "path")
	wantError(t, "GET archive of /proc", h.do("GET", base+"/files/archive?path=/proc", key, nil), 400, "invalid_path", "path")
	wantError(t, "PUT archive into /run/agent", h.rawDo("PUT", base+"/files/archive?path=/run/agent", key, oneFileTar(t, "token", "x"), false), 403, "permission_denied", "path")
	wantError(t, "PUT archive into /sys/kernel", h.rawDo("PUT", base+"/files/archive?path=/sys/kernel", key, oneFileTar(t, "x", "x"), false), 409, "read_only", "path")
	r := h.rawDo("PUT", base+"/files/archive?path=/", key, oneFileTar(t, "run/agent/token", "pwned"), false)
	if r.status != 403 || r.code() != "permission_denied" || !strings.Contains(string(r.body), "/run/agent") {
		t.Errorf("PUT archive at / with an entry in /run/agent: %d %s", r.status, r.body)
	}
	for _, c := range []struct{ path, body, field string }{
		{"/files/mkdir", `{"path":"/run/agent/x"}`, "path"},
		{"/files/rename", `{"from":"/run/agent/token","to":"/workspace/token"}`, "path"},
		{"/files/rename", `{"from":"/workspace","to":"/run/agent/token","overwrite":true}`, "path"},
		{"/files/rename", `{"from":"/agent","to":"/workspace/agent"}`, "path"},
	} {
		var body map[string]any
		_ = json.Unmarshal([]byte(c.body), &body)
		wantError(t, c.path+" "+c.body, h.do("POST", base+c.path, key, body), 403, "permission_denied", c.field)
	}
	wantError(t, "mkdir in /proc", h.do("POST", base+"/files/mkdir", key, map[string]any{"path": "/proc/x"}), 409, "read_only", "path")
	if after := h.exec(key, id, "sha256sum /run/agent/token; ls /agent"); after != token+"orkestr-agent\n" {
		t.Fatalf("the agent's files changed: %q, was %q", after, token)
	}

	// An archive of / stays on /'s filesystem and leaves the agent out.
	r = h.do("GET", base+"/files/archive?path=/", key, nil)
	if r.status != 200 {
		t.Fatalf("GET archive of /: %d %.300s", r.status, r.body)
	}
	names := map[string]bool{}
	tr := tar.NewReader(bytes.NewReader(r.body))
	for {
		hd, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("archive of /: %v", err)
		}
		names[hd.Name] = true
	}
	for _, n := range []string{"etc/", "etc/passwd", "usr/bin/", "workspace/", "proc/", "tmp/"} {
		if !names[n] {
			t.Errorf("archive of / lacks %s", n)
		}
	}
	for n := range names {
		for _, out := range []string{"run/agent", "agent/", "proc/", "sys/", "tmp/"} {
			if strings.HasPrefix(n, out) && n != out && n != "run/" {
				t.Errorf("archive of / holds %s", n)
			}
		}
	}
}
