package api

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/orkestr-eu/orkestr/internal/agent"
)

var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,255}$`)

const (
	maxEnvVars       = 200
	maxEnvValueChars = 64 << 10
	maxMetadataKeys  = 64
	maxMetadataKey   = 128
	maxMetadataValue = 1024
)

// checkEnv validates env names and values. Messages name the variable,
// never its value.
func checkEnv(field string, env map[string]string) error {
	if len(env) > maxEnvVars {
		return invalid(field, "At most %d environment variables are allowed.", maxEnvVars)
	}
	for k, v := range env {
		if !envKeyRE.MatchString(k) {
			return invalid(field, "Environment variable name %q is invalid: use letters, digits and '_' (not starting with a digit), at most 256.", truncate(k, 64))
		}
		if strings.IndexByte(v, 0) >= 0 {
			return invalid(field, "The value of environment variable %s contains a NUL byte.", k)
		}
		if utf8.RuneCountInString(v) > maxEnvValueChars {
			return invalid(field, "The value of environment variable %s is longer than %d characters.", k, maxEnvValueChars)
		}
	}
	return nil
}

func checkMetadata(md map[string]string) error {
	if len(md) > maxMetadataKeys {
		return invalid("metadata", "At most %d metadata keys are allowed.", maxMetadataKeys)
	}
	for k, v := range md {
		if k == "" || utf8.RuneCountInString(k) > maxMetadataKey || hasControl(k) {
			return invalid("metadata", "Metadata key %q is invalid: 1 to %d characters, no control characters.", truncate(k, 64), maxMetadataKey)
		}
		if utf8.RuneCountInString(v) > maxMetadataValue || strings.IndexByte(v, 0) >= 0 || !utf8.ValidString(v) {
			return invalid("metadata", "The value of metadata key %q is longer than %d characters, contains NUL or is not UTF-8.", truncate(k, 64), maxMetadataValue)
		}
	}
	return nil
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return !utf8.ValidString(s)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// checkPath applies the files API's path rules.
func checkPath(field, p string) error {
	if err := agent.CheckPath(p); err != nil {
		return apiErr(http.StatusBadRequest, "invalid_path", "Path %q is invalid: %s.", truncate(p, 128), err.Error()).with("field", field)
	}
	return nil
}

func checkSandboxID(id string) bool {
	if len(id) != 30 || !strings.HasPrefix(id, "sbx_") {
		return false
	}
	for _, c := range id[4:] {
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// noEmptyQuery refuses an optional query parameter that is given with an
// empty value (?status=): the contract has no empty value for any of
// them, so it is a mistake, not a way to leave the parameter out.
func noEmptyQuery(q url.Values, names ...string) error {
	for _, n := range names {
		if vs, ok := q[n]; ok {
			for _, v := range vs {
				if v == "" {
					return invalid(n, "Query parameter %s is empty; give a value or leave it out.", n)
				}
			}
		}
	}
	return nil
}
