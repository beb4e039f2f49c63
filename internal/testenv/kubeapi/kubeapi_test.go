package kubeapi

import (
	"strings"
	"testing"
)

// The harness is a real API server: objects are validated and admitted,
// and --allow-privileged is honoured.
func TestAPIServer(t *testing.T) {
	s := Start(t, Options{AllowPrivileged: false})
	s.Namespace(t, "harness", nil)
	pod := func(privileged bool) map[string]any {
		return map[string]any{
			"metadata": map[string]any{"name": "p"},
			"spec": map[string]any{"containers": []any{map[string]any{
				"name": "c", "image": "registry.example.com/x:1",
				"securityContext": map[string]any{"privileged": privileged},
			}}},
		}
	}
	code, body, err := s.Try("POST", "/api/v1/namespaces/harness/pods?dryRun=All", pod(true), nil)
	if err != nil || code != 422 || !strings.Contains(string(body), "disallowed by cluster policy") {
		t.Errorf("privileged pod without --allow-privileged: %d %s %v", code, body, err)
	}
	if code, body, err := s.Try("POST", "/api/v1/namespaces/harness/pods?dryRun=All", pod(false), nil); err != nil || code != 201 {
		t.Errorf("plain pod: %d %s %v", code, body, err)
	}
	// A misspelt field is refused under strict field validation, as
	// kubectl/helm would send it.
	bad := pod(false)
	bad["spec"].(map[string]any)["containerz"] = []any{}
	if code, body, _ := s.Try("POST", "/api/v1/namespaces/harness/pods?dryRun=All&fieldValidation=Strict", bad, nil); code != 400 || !strings.Contains(string(body), "containerz") {
		t.Errorf("unknown field: %d %s", code, body)
	}
	// Without the admin token nothing is served.
	if code, _, err := s.Raw(t.Context(), "wrong", "GET", "/api/v1/namespaces", nil); err != nil || code != 401 {
		t.Errorf("wrong token: %d %v", code, err)
	}
}
