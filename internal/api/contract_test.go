package api

import (
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
)

// The contract decisions of docs/api.md ("One contract"), each checked on
// the server as it runs.

func decodeBody(t *testing.T, body string, v any) *Error {
	t.Helper()
	r := httptest.NewRequest("POST", "/", strings.NewReader(body))
	err := decode(r, v, false)
	if err == nil {
		return nil
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("decode %s: %v is not an API error", body, err)
	}
	return e
}

func TestDecodeContract(t *testing.T) {
	type req struct {
		Timeout  *int              `json:"timeout_seconds"`
		Metadata map[string]string `json:"metadata"`
		Env      map[string]string `json:"env"`
		Cwd      *string           `json:"cwd"`
	}
	refused := []struct{ body, field, says string }{
		{`null`, "body", "JSON object, not null"},
		{`[]`, "body", "JSON object, not an array"},
		{`"x"`, "body", "JSON object, not a string"},
		{`5`, "body", "JSON object, not a number"},
		{`{} {}`, "body", "exactly one"},
		{`{"timeout_seconds": 5.5}`, "timeout_seconds", "integer"},
		{`{"timeout_seconds": "5"}`, "timeout_seconds", "integer"},
		{`{"metadata": {"a": 5}}`, "metadata", "Every value in metadata must be of JSON type string"},
		{`{"metadata": [1]}`, "metadata", "object"},
		{`{"metadata": {"a": null}}`, "metadata", "null"},
		{`{"env": {"A": null}}`, "env", "null"},
		{`{"nope": 1}`, "nope", "Unknown field"},
	}
	for _, c := range refused {
		var v req
		e := decodeBody(t, c.body, &v)
		if e == nil || e.Status != 400 || e.Code != "invalid_request" || e.Details["field"] != c.field || !strings.Contains(e.Message, c.says) {
			t.Errorf("%s: got %+v, want 400 invalid_request on %s saying %q", c.body, e, c.field, c.says)
		}
	}
	// An integral number is an integer, as in JSON Schema.
	for _, body := range []string{`{"timeout_seconds": 5.0}`, `{"timeout_seconds": 5e0}`, `{"timeout_seconds": 0.5e1}`} {
		var v req
		if e := decodeBody(t, body, &v); e != nil || v.Timeout == nil || *v.Timeout != 5 {
			t.Errorf("%s: %+v, %v", body, e, v.Timeout)
		}
	}
	// null for a whole optional field is leaving it out.
	var v req
	if e := decodeBody(t, `{"timeout_seconds": null, "metadata": null, "cwd": null}`, &v); e != nil || v.Timeout != nil || v.Metadata != nil || v.Cwd != nil {
		t.Errorf("nulls: %+v %+v", e, v)
	}
	// Strings keep their characters and escapes through the normalization.
	if e := decodeBody(t, `{"metadata": {"k": "<a&b> \u00e9 \ud83d\ude00 5.0"}}`, &v); e != nil || v.Metadata["k"] != "<a&b> é 😀 5.0" {
		t.Errorf("string round trip: %+v %q", e, v.Metadata["k"])
	}
}

func TestLengthsCountCharacters(t *testing.T) {
	key := strings.Repeat("é", maxMetadataKey) // 256 bytes, 128 characters
	if err := checkMetadata(map[string]string{key: strings.Repeat("ü", maxMetadataValue)}); err != nil {
		t.Errorf("128-character key, 1024-character value: %v", err)
	}
	if err := checkMetadata(map[string]string{key + "é": "v"}); err == nil {
		t.Errorf("a 129-character key was accepted")
	}
	if err := checkMetadata(map[string]string{"k": strings.Repeat("ü", maxMetadataValue+1)}); err == nil {
		t.Errorf("a 1025-character value was accepted")
	}
	if err := checkEnv("env", map[string]string{"A": strings.Repeat("é", maxEnvValueChars)}); err != nil {
		t.Errorf("a 65536-character env value: %v", err)
	}
	if err := checkEnv("env", map[string]string{"A": strings.Repeat("é", maxEnvValueChars+1)}); err == nil {
		t.Errorf("a 65537-character env value was accepted")
	}
}

func TestHTTPContract(t *testing.T) {
	h := newHarness(t, testConfig(), false)
	_, key := h.account("contract", "team")

	// Empty query values are mistakes, not absent parameters.
	for _, c := range []struct{ path, field string }{
		{"/v1/sandboxes?status=", "status"}, {"/v1/sandboxes?limit=", "limit"}, {"/v1/sandboxes?cursor=", "cursor"},
		{"/v1/usage?from=", "from"}, {"/v1/usage?to=", "to"}, {"/v1/usage?granularity=", "granularity"}, {"/v1/usage?format=", "format"},
	} {
		r := h.do("GET", c.path, key, nil)
		if m := r.json(t); r.status != 400 || r.code() != "invalid_request" || m["error"].(map[string]any)["details"].(map[string]any)["field"] != c.field {
			t.Errorf("GET %s: %d %s", c.path, r.status, r.body)
		}
	}
	if r := h.do("GET", "/v1/sandboxes?status=running&limit=5", key, nil); r.status != 200 {
		t.Errorf("a valid query: %d %s", r.status, r.body)
	}

	// A known path with a wrong method is 405 with Allow.
	for _, c := range []struct{ method, path, allow string }{
		{"PUT", "/v1/limits", "GET"},
		{"POST", "/v1/sandboxes/sbx_01HXYZ7K9Q4R2M8N5P3T6V1W0A", "GET, PATCH, DELETE"},
		{"PATCH", "/v1/sandboxes/sbx_01HXYZ7K9Q4R2M8N5P3T6V1W0A/files", "GET, PUT, DELETE"},
		{"DELETE", "/v1/sandboxes", "POST, GET"},
	} {
		r := h.do(c.method, c.path, key, nil)
		if r.status != 405 || r.code() != "method_not_allowed" || r.header.Get("Allow") != c.allow {
			t.Errorf("%s %s: %d Allow %q %s, want 405 Allow %q", c.method, c.path, r.status, r.header.Get("Allow"), r.body, c.allow)
		}
	}
	if r := h.do("GET", "/v1/nothing", key, nil); r.status != 404 || r.code() != "not_found" || r.header.Get("Allow") != "" {
		t.Errorf("unknown path: %d %s", r.status, r.body)
	}

	// 401 names its scheme.
	for _, k := range []string{"", "ork_nope"} {
		r := h.do("GET", "/v1/limits", k, nil)
		if r.status != 401 || !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("key %q: %d WWW-Authenticate %q", k, r.status, r.header.Get("WWW-Authenticate"))
		}
	}
}
