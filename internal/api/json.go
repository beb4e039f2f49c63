package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
)

// maxJSONBody is the limit on JSON request bodies.
const maxJSONBody = 1 << 20

// timeFormat is RFC 3339 UTC with milliseconds.
const timeFormat = "2006-01-02T15:04:05.000Z"

func fmtTime(t time.Time) string { return t.UTC().Format(timeFormat) }

func fmtTimePtr(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := fmtTime(*t)
	return &s
}

// decode reads a JSON body strictly: at most 1 MiB, exactly one JSON
// object (not null, not an array), no unknown fields. An empty body
// decodes as {} when allowEmpty. A number with a zero fraction (5.0, 5e0)
// is an integer, as in JSON Schema; null for an optional field is the same
// as leaving it out.
func decode(r *http.Request, v any, allowEmpty bool) error {
	raw, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxJSONBody))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return apiErr(http.StatusRequestEntityTooLarge, "payload_too_large", "JSON request bodies are limited to 1 MiB.")
	}
	if err != nil {
		return invalid("body", "The request body could not be read: %s.", err.Error())
	}
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 {
		if allowEmpty {
			return nil
		}
		return invalid("body", "The request body is empty; send a JSON object.")
	}
	// First pass: the shape (one object) and integral numbers.
	gen := json.NewDecoder(bytes.NewReader(trimmed))
	gen.UseNumber()
	var top any
	if err := gen.Decode(&top); err != nil {
		return invalid("body", "The request body is not valid JSON: %s.", strings.TrimPrefix(err.Error(), "json: "))
	}
	if _, err := gen.Token(); err != io.EOF {
		return invalid("body", "The request body must hold exactly one JSON object.")
	}
	obj, ok := top.(map[string]any)
	if !ok {
		return invalid("body", "The request body must be a JSON object, not %s.", jsonKind(top))
	}
	for k, fv := range obj {
		if hasNull(fv) {
			return invalid(k, "%s holds a null; only a whole optional field may be null (the same as leaving it out).", k)
		}
	}
	normalized, err := json.Marshal(integralNumbers(obj))
	if err != nil {
		return invalid("body", "The request body is not valid JSON: %s.", err.Error())
	}
	dec := json.NewDecoder(bytes.NewReader(normalized))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) {
			return typeError(v, ute)
		}
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			f = strings.Trim(f, `"`)
			return invalid(f, "Unknown field %q.", f)
		}
		return invalid("body", "The request body is not valid JSON: %s.", err.Error())
	}
	return nil
}

// integralNumbers rewrites numbers with a zero fraction (5.0, 5e0) as
// integers, so they decode into integer fields; others stay as they are.
func integralNumbers(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = integralNumbers(e)
		}
	case []any:
		for i, e := range t {
			t[i] = integralNumbers(e)
		}
	case json.Number:
		if _, err := t.Int64(); err == nil {
			return t
		}
		if f, err := t.Float64(); err == nil && f == math.Trunc(f) && math.Abs(f) <= 1<<53 {
			return json.Number(strconv.FormatInt(int64(f), 10))
		}
	}
	return v
}

// hasNull reports whether a null is inside the object or array v.
func hasNull(v any) bool {
	switch t := v.(type) {
	case map[string]any:
		for _, e := range t {
			if e == nil || hasNull(e) {
				return true
			}
		}
	case []any:
		for _, e := range t {
			if e == nil || hasNull(e) {
				return true
			}
		}
	}
	return false
}

// typeError names the field at fault and what it must be. For a value
// inside a map or list field it says so: {"metadata": {"a": 5}} is about
// the values of metadata, which must be strings, not about metadata.
func typeError(v any, ute *json.UnmarshalTypeError) error {
	field := ute.Field
	if field == "" {
		return invalid("body", "The request body must be a JSON object.")
	}
	want := jsonType(ute.Type.Kind())
	if ft, ok := fieldType(v, field); ok {
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if (ft.Kind() == reflect.Map || ft.Kind() == reflect.Slice) && ft.Elem() == ute.Type {
			return invalid(field, "Every value in %s must be of JSON type %s.", field, want)
		}
	}
	return invalid(field, "Field %q must be of JSON type %s.", field, want)
}

// fieldType finds the Go type of the struct field with JSON name name.
func fieldType(v any, name string) (reflect.Type, bool) {
	t := reflect.TypeOf(v)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil, false
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == name {
			return f.Type, true
		}
	}
	return nil, false
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	default:
		return "a number"
	}
}

func jsonType(kind reflect.Kind) string {
	switch kind {
	case reflect.String:
		return "string"
	case reflect.Map, reflect.Struct:
		return "object"
	case reflect.Slice, reflect.Array:
		return "array"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	default:
		return "number"
	}
}

// sandboxJSON is the Sandbox object of the API.
type sandboxJSON struct {
	ID             string            `json:"id"`
	Status         string            `json:"status"`
	Template       string            `json:"template"`
	Size           string            `json:"size"`
	CPU            float64           `json:"cpu"`
	MemoryMB       int               `json:"memory_mb"`
	Network        string            `json:"network"`
	Region         string            `json:"region"`
	TimeoutSeconds int               `json:"timeout_seconds"`
	ExpiresAt      *string           `json:"expires_at"`
	EnvKeys        []string          `json:"env_keys"`
	Metadata       map[string]string `json:"metadata"`
	CreatedAt      string            `json:"created_at"`
	PausedAt       *string           `json:"paused_at"`
	TerminatedAt   *string           `json:"terminated_at"`
	// ErrorReason says why a sandbox in status error stopped (its
	// memory limit, its task limit, a crash…); null otherwise.
	ErrorReason *string `json:"error_reason"`
}

func toJSON(sb store.Sandbox) sandboxJSON {
	keys := sb.EnvKeys
	if keys == nil {
		keys = []string{}
	}
	md := sb.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return sandboxJSON{
		ID: sb.ID, Status: string(sb.Status), Template: sb.Template, Size: sb.Size, CPU: sb.CPU,
		MemoryMB: sb.MemoryMB, Network: sb.Network, Region: sb.Region, TimeoutSeconds: sb.TimeoutSeconds,
		ExpiresAt: fmtTimePtr(sb.ExpiresAt), EnvKeys: keys, Metadata: md, CreatedAt: fmtTime(sb.CreatedAt),
		PausedAt: fmtTimePtr(sb.PausedAt), TerminatedAt: fmtTimePtr(sb.TerminatedAt),
		ErrorReason: errorReason(sb),
	}
}

func errorReason(sb store.Sandbox) *string {
	if sb.Status != store.StatusError {
		return nil
	}
	r := sb.ErrorMessage
	if r == "" {
		r = "the sandbox stopped unexpectedly"
	}
	return &r
}
