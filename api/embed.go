// Package api holds the REST API's OpenAPI 3.1 description, embedded so the
// server can serve it at /v1/openapi.yaml.
package api

import _ "embed"

// OpenAPI is openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte
