package api

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/orkestr-eu/orkestr/api"
)

// openAPIDoc is the part of api/openapi.yaml the consistency tests read.
type openAPIDoc struct {
	OpenAPI    string                    `yaml:"openapi"`
	Paths      map[string]map[string]any `yaml:"paths"`
	Components struct {
		Schemas map[string]struct {
			Enum []string `yaml:"enum"`
		} `yaml:"schemas"`
	} `yaml:"components"`
}

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

func loadOpenAPI(t *testing.T) (openAPIDoc, map[string]any) {
	t.Helper()
	var doc openAPIDoc
	if err := yaml.Unmarshal(api.OpenAPI, &doc); err != nil {
		t.Fatalf("api/openapi.yaml does not parse: %v", err)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(api.OpenAPI, &raw); err != nil {
		t.Fatalf("api/openapi.yaml does not parse: %v", err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi: %q, want 3.1.0", doc.OpenAPI)
	}
	return doc, raw
}

// specOperations lists "METHOD /path" of every operation in the spec.
func specOperations(doc openAPIDoc) map[string]map[string]any {
	ops := map[string]map[string]any{}
	for path, item := range doc.Paths {
		for key, op := range item {
			if m, ok := op.(map[string]any); ok && slices.Contains(httpMethods, key) {
				ops[strings.ToUpper(key)+" "+path] = m
			}
		}
	}
	return ops
}

// TestOpenAPIRoutes: the spec documents exactly the router's endpoints.
func TestOpenAPIRoutes(t *testing.T) {
	doc, _ := loadOpenAPI(t)
	ops := specOperations(doc)
	routes := map[string]bool{}
	for _, r := range New(Options{}).Routes() {
		key := r.Method + " " + r.Path
		routes[key] = true
		if _, ok := ops[key]; !ok {
			t.Errorf("route %s is not documented in api/openapi.yaml", key)
		}
	}
	if len(routes) == 0 {
		t.Fatal("the router lists no routes")
	}
	for key := range ops {
		if !routes[key] {
			t.Errorf("api/openapi.yaml documents %s, which the router does not serve", key)
		}
	}
}

// TestOpenAPIOperations checks each operation: its path parameters are
// declared, it has responses, and only the public endpoints opt out of
// authentication.
func TestOpenAPIOperations(t *testing.T) {
	doc, raw := loadOpenAPI(t)
	public := map[string]bool{"GET /v1/openapi.yaml": true}
	braces := regexp.MustCompile(`\{([^}]+)\}`)
	for key, op := range specOperations(doc) {
		path := strings.SplitN(key, " ", 2)[1]
		declared := map[string]bool{}
		for _, list := range []any{doc.Paths[path]["parameters"], op["parameters"]} {
			params, _ := list.([]any)
			for _, p := range params {
				m, _ := p.(map[string]any)
				if ref, ok := m["$ref"].(string); ok {
					v, _ := lookup(raw, ref)
					m, _ = v.(map[string]any)
				}
				if name, _ := m["name"].(string); m["in"] == "path" {
					declared[name] = true
				}
			}
		}
		for _, m := range braces.FindAllStringSubmatch(path, -1) {
			if !declared[m[1]] {
				t.Errorf("%s: path parameter %q is not declared", key, m[1])
			}
		}
		if resp, _ := op["responses"].(map[string]any); len(resp) == 0 {
			t.Errorf("%s: no responses", key)
		}
		sec, hasSec := op["security"].([]any)
		isPublic := hasSec && len(sec) == 0
		if isPublic != public[key] {
			t.Errorf("%s: public (security: []) is %v, want %v", key, isPublic, public[key])
		}
	}
}

// TestOpenAPIRefs: every $ref in the spec points at something.
func TestOpenAPIRefs(t *testing.T) {
	_, raw := loadOpenAPI(t)
	var walk func(v any, at string)
	walk = func(v any, at string) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if k == "$ref" {
					ref, _ := x.(string)
					if _, ok := lookup(raw, ref); !ok {
						t.Errorf("%s: $ref %q does not resolve", at, ref)
					}
					continue
				}
				walk(x, at+"/"+k)
			}
		case []any:
			for _, x := range v {
				walk(x, at)
			}
		}
	}
	walk(raw, "#")
}

// lookup follows a local $ref ("#/components/...") in the parsed spec.
func lookup(raw map[string]any, ref string) (any, bool) {
	if !strings.HasPrefix(ref, "#/") {
		return nil, false
	}
	var cur any = raw
	for _, part := range strings.Split(ref[2:], "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// errorCodeRE finds the code of every API error made in this package: the
// second argument of apiErr(status, "code", ...) and Code: "code" literals.
var errorCodeRE = regexp.MustCompile(`(?:apiErr\(\s*[^,()]+,\s*|Code:\s*)"([a-z0-9_]+)"`)

// TestOpenAPIErrorCodes: every error code the package's source can answer
// with is listed in the spec's ErrorCode enum.
func TestOpenAPIErrorCodes(t *testing.T) {
	doc, _ := loadOpenAPI(t)
	documented := doc.Components.Schemas["ErrorCode"].Enum
	if len(documented) == 0 {
		t.Fatal("api/openapi.yaml has no components/schemas/ErrorCode enum")
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	used := map[string][]string{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range errorCodeRE.FindAllStringSubmatch(string(src), -1) {
			used[m[1]] = append(used[m[1]], f)
		}
	}
	// The scan must keep seeing the codes made through the helpers; if
	// these vanish, the pattern no longer matches how errors are built.
	for _, code := range []string{"invalid_request", "sandbox_not_found", "sandbox_not_ready", "internal", "unauthenticated", "rate_limited"} {
		if _, ok := used[code]; !ok {
			t.Errorf("the source scan did not find error code %q: update errorCodeRE to how errors are made", code)
		}
	}
	for code, where := range used {
		if !slices.Contains(documented, code) {
			t.Errorf("error code %q (used in %s) is not in api/openapi.yaml's ErrorCode enum", code, strings.Join(slices.Compact(where), ", "))
		}
	}
}

// TestOpenAPIOptionalFieldsAreNullable: decode takes null for a whole
// optional field as leaving it out (docs/api.md, "One contract"), so every
// optional property of a JSON request body admits null in the document;
// otherwise the contract run sends null, expects a 400 and gets a 2xx.
func TestOpenAPIOptionalFieldsAreNullable(t *testing.T) {
	doc, raw := loadOpenAPI(t)
	resolve := func(v any) map[string]any {
		for i := 0; i < 8; i++ {
			m, _ := v.(map[string]any)
			ref, ok := m["$ref"].(string)
			if !ok {
				return m
			}
			if v, ok = lookup(raw, ref); !ok {
				t.Fatalf("unresolved %s", ref)
			}
		}
		return nil
	}
	var nullable func(v any) bool
	nullable = func(v any) bool {
		s := resolve(v)
		switch ty := s["type"].(type) {
		case string:
			if ty == "null" {
				return true
			}
		case []any:
			if slices.Contains(ty, any("null")) {
				return true
			}
		}
		for _, k := range []string{"anyOf", "oneOf"} {
			alts, _ := s[k].([]any)
			if slices.ContainsFunc(alts, nullable) {
				return true
			}
		}
		return false
	}
	checked := 0
	for name, op := range specOperations(doc) {
		rb := resolve(op["requestBody"])
		content, _ := rb["content"].(map[string]any)
		media, _ := content["application/json"].(map[string]any)
		if media == nil {
			continue
		}
		s := resolve(media["schema"])
		required, _ := s["required"].([]any)
		props, _ := s["properties"].(map[string]any)
		for field, ps := range props {
			if slices.Contains(required, any(field)) {
				continue
			}
			checked++
			if !nullable(ps) {
				t.Errorf("%s: optional field %s does not admit null", name, field)
			}
		}
	}
	if checked < 20 {
		t.Fatalf("only %d optional fields found: the walk is broken", checked)
	}
}
