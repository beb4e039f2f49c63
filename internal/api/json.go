package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
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

// decode reads a JSON body strictly: at most 1 MiB, no unknown fields, one
// value. An empty body decodes as {} when allowEmpty.
func decode(r *http.Request, v any, allowEmpty bool) error {
	body := http.MaxBytesReader(nil, r.Body, maxJSONBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return apiErr(http.StatusRequestEntityTooLarge, "payload_too_large", "JSON request bodies are limited to 1 MiB.")
	case errors.Is(err, io.EOF) && allowEmpty:
		return nil
	case errors.Is(err, io.EOF):
		return invalid("body", "The request body is empty; send a JSON object.")
	case err != nil:
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) {
			return invalid(ute.Field, "Field %q must be of JSON type %s.", ute.Field, jsonType(ute.Type.Kind().String()))
		}
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			f = strings.Trim(f, `"`)
			return invalid(f, "Unknown field %q.", f)
		}
		return invalid("body", "The request body is not valid JSON: %s.", err.Error())
	}
	if dec.More() {
		return invalid("body", "The request body must hold exactly one JSON object.")
	}
	if _, err := dec.Token(); err != io.EOF {
		if errors.As(err, &mbe) {
			return apiErr(http.StatusRequestEntityTooLarge, "payload_too_large", "JSON request bodies are limited to 1 MiB.")
		}
		return invalid("body", "The request body must hold exactly one JSON object.")
	}
	return nil
}

func jsonType(kind string) string {
	switch kind {
	case "string":
		return "string"
	case "map", "struct":
		return "object"
	case "slice":
		return "array"
	case "bool":
		return "boolean"
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
