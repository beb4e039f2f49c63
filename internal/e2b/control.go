package e2b

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/orkestr-eu/orkestr/internal/auth"
)

// sandbox is the native Sandbox as this package reads it.
type sandbox struct {
	ID             string            `json:"id"`
	Status         string            `json:"status"`
	Template       string            `json:"template"`
	CPU            float64           `json:"cpu"`
	MemoryMB       int               `json:"memory_mb"`
	Network        string            `json:"network"`
	TimeoutSeconds int               `json:"timeout_seconds"`
	ExpiresAt      *time.Time        `json:"expires_at"`
	Metadata       map[string]string `json:"metadata"`
	CreatedAt      time.Time         `json:"created_at"`
	PausedAt       *time.Time        `json:"paused_at"`
}

// writeErr answers in E2B's error shape.
func writeErr(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"code": status, "message": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// unsupported answers a call orkestr cannot serve.
func unsupported(w http.ResponseWriter, what string) {
	writeErr(w, http.StatusNotImplemented, "orkestr does not support "+what+" through its E2B-compatible API.")
}

// fail answers err: a native error keeps its status (with E2B's meaning
// where they differ) and message; anything else is a 502 naming the step.
func (s *Server) fail(w http.ResponseWriter, step string, err error) {
	var ne *nativeError
	if errors.As(err, &ne) {
		status := ne.Status
		switch {
		case ne.Code == "concurrency_limit" || ne.Code == "rate_limited":
			status = http.StatusTooManyRequests
		case ne.Code == "sandbox_not_found":
			status = http.StatusNotFound
		}
		writeErr(w, status, ne.Message)
		return
	}
	if errors.Is(err, context.Canceled) {
		return
	}
	s.o.Log.Warn("e2b call failed", "step", step, "err", err)
	writeErr(w, http.StatusBadGateway, "orkestr could not "+step+"; retry, and see the server log if it persists.")
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, c *caller)

func (s *Server) routes() {
	m := http.NewServeMux()
	h := func(pattern string, f handlerFunc) { m.HandleFunc(pattern, s.withKey(f)) }
	h("POST /sandboxes", s.create)
	h("POST /v2/sandboxes", s.create)
	h("GET /sandboxes", s.listV1)
	h("GET /v2/sandboxes", s.listV2)
	h("GET /sandboxes/{id}", s.get)
	h("DELETE /sandboxes/{id}", s.kill)
	h("POST /sandboxes/{id}/timeout", s.setTimeout)
	h("POST /sandboxes/{id}/pause", s.pause)
	h("POST /sandboxes/{id}/resume", s.resume)
	h("POST /sandboxes/{id}/connect", s.connect)
	h("POST /v2/sandboxes/{id}/connect", s.connect)
	h("POST /sandboxes/{id}/refreshes", s.refresh)
	h("GET /sandboxes/{id}/metrics", s.metrics)
	for _, u := range []struct{ pattern, what string }{
		{"POST /sandboxes/{id}/fork", "forking a sandbox"},
		{"POST /sandboxes/{id}/snapshots", "named snapshots"},
		{"GET /snapshots", "named snapshots"},
		{"PUT /sandboxes/{id}/network", "changing a running sandbox's network"},
		{"GET /sandboxes/{id}/logs", "sandbox logs"},
		{"GET /v2/sandboxes/{id}/logs", "sandbox logs"},
		{"GET /sandboxes/metrics", "metrics of many sandboxes in one call"},
		{"/templates", "building templates (build them with `orkestrd admin template build`)"},
		{"/templates/", "building templates (build them with `orkestrd admin template build`)"},
		{"/v2/templates", "building templates (build them with `orkestrd admin template build`)"},
		{"/v2/templates/", "building templates (build them with `orkestrd admin template build`)"},
		{"/v3/templates", "building templates (build them with `orkestrd admin template build`)"},
		{"/volumes", "volumes"},
		{"/volumes/", "volumes"},
		{"/secrets", "secrets"},
		{"/secrets/", "secrets"},
	} {
		what := u.what
		m.HandleFunc(u.pattern, func(w http.ResponseWriter, r *http.Request) { unsupported(w, what) })
	}
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, fmt.Sprintf("No such endpoint in orkestr's E2B-compatible API: %s %s.", r.Method, r.URL.Path))
	})
	s.mux = m
}

// withKey authenticates the control plane's X-API-Key: an orkestr key or
// its e2b_ alias; the native handlers check it (and everything else).
func (s *Server) withKey(f handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key, err := orkestrKey(r.Header.Get("X-API-Key"))
		if err != nil {
			writeErr(w, http.StatusUnauthorized, "Missing or malformed API key: send X-API-Key with an orkestr key (ork_…) or its e2b_ alias (`orkestrd admin e2b-key` prints it).")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
		f(w, r, &caller{native: s.o.Native, key: key, remoteAddr: r.RemoteAddr})
	}
}

// accountOf is the account of a control-plane caller's key.
func (s *Server) accountOf(ctx context.Context, c *caller) (string, error) {
	k, err := s.o.Store.KeyByHash(ctx, auth.Hash(c.key))
	if err != nil {
		return "", err
	}
	return k.AccountID, nil
}

func decodeBody(r *http.Request, v any) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	return json.Unmarshal(b, v)
}

type newSandbox struct {
	TemplateID          string            `json:"templateID"`
	Timeout             *int              `json:"timeout"`
	Metadata            map[string]string `json:"metadata"`
	EnvVars             map[string]string `json:"envVars"`
	Secure              *bool             `json:"secure"`
	AllowInternetAccess *bool             `json:"allow_internet_access"`
	AutoPause           *bool             `json:"autoPause"`
	AutoPauseMemory     *bool             `json:"autoPauseMemory"`
	AutoResume          json.RawMessage   `json:"autoResume"`
	Network             json.RawMessage   `json:"network"`
	Mcp                 json.RawMessage   `json:"mcp"`
	Iam                 json.RawMessage   `json:"iam"`
	VolumeMounts        json.RawMessage   `json:"volumeMounts"`
}

func present(m json.RawMessage) bool {
	s := strings.TrimSpace(string(m))
	return s != "" && s != "null"
}

func (s *Server) create(w http.ResponseWriter, r *http.Request, c *caller) {
	var in newSandbox
	if err := decodeBody(r, &in); err != nil {
		writeErr(w, http.StatusBadRequest, "The body is not a NewSandbox JSON object: "+err.Error())
		return
	}
	switch {
	case in.AutoPause != nil && *in.AutoPause:
		unsupported(w, "pausing a sandbox at its timeout (lifecycle.onTimeout 'pause'): an orkestr sandbox ends at its timeout")
		return
	case present(in.AutoResume) && !strings.Contains(string(in.AutoResume), "false"):
		unsupported(w, "auto-resume")
		return
	case present(in.Network):
		unsupported(w, "per-sandbox network rules (network); use allowInternetAccess")
		return
	case present(in.Mcp):
		unsupported(w, "MCP gateways")
		return
	case present(in.Iam):
		unsupported(w, "workload identity tokens (iam)")
		return
	case present(in.VolumeMounts) && string(in.VolumeMounts) != "[]":
		unsupported(w, "volumes")
		return
	}
	tmpl := in.TemplateID
	if t, ok := s.o.Templates[tmpl]; ok {
		tmpl = t
	}
	network := "open"
	if in.AllowInternetAccess != nil && !*in.AllowInternetAccess {
		network = "off"
	}
	// E2B's default lifetime is 300 s (orkestr's own is longer).
	timeout := 300
	if in.Timeout != nil {
		timeout = *in.Timeout
	}
	body := map[string]any{"template": tmpl, "network": network, "timeout_seconds": timeout}
	if len(in.EnvVars) > 0 {
		body["env"] = in.EnvVars
	}
	if len(in.Metadata) > 0 {
		body["metadata"] = in.Metadata
	}
	var sb sandbox
	if err := c.json(r.Context(), "POST", "/v1/sandboxes", nil, body, &sb); err != nil {
		s.fail(w, "create the sandbox", err)
		return
	}
	s.answerSandbox(w, r, c, http.StatusCreated, sb, in.TemplateID)
}

// answerSandbox answers create, resume and connect: the sandbox with its
// envd access token.
func (s *Server) answerSandbox(w http.ResponseWriter, r *http.Request, c *caller, status int, sb sandbox, templateID string) {
	acct, err := s.accountOf(r.Context(), c)
	if err != nil {
		s.fail(w, "look up the key's account", err)
		return
	}
	if templateID == "" {
		templateID = sb.Template
	}
	writeJSON(w, status, map[string]any{
		"sandboxID": sb.ID, "templateID": templateID, "clientID": "orkestr",
		"envdVersion": EnvdVersion, "envdAccessToken": accessToken(s.o.Secret, acct, sb.ID),
	})
}

// live fetches a sandbox; a terminated or failed one is gone (404), as a
// killed E2B sandbox is.
func (s *Server) live(ctx context.Context, c *caller, id string) (sandbox, error) {
	var sb sandbox
	if err := c.json(ctx, "GET", "/v1/sandboxes/"+url.PathEscape(id), nil, nil, &sb); err != nil {
		return sb, err
	}
	if sb.Status == "terminated" || sb.Status == "error" {
		return sb, &nativeError{Status: http.StatusNotFound, Code: "sandbox_not_found", Message: fmt.Sprintf("Sandbox %s was terminated.", id)}
	}
	return sb, nil
}

func (s *Server) state(sb sandbox) string {
	if sb.Status == "paused" {
		return "paused"
	}
	return "running"
}

// detail is E2B's SandboxDetail / ListedSandbox of a native sandbox.
func (s *Server) detail(sb sandbox, now time.Time) map[string]any {
	end := now
	if sb.ExpiresAt != nil {
		end = *sb.ExpiresAt
	}
	md := sb.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return map[string]any{
		"templateID": sb.Template, "sandboxID": sb.ID, "clientID": "orkestr",
		"startedAt": sb.CreatedAt.UTC().Format(time.RFC3339Nano), "endAt": end.UTC().Format(time.RFC3339Nano),
		"envdVersion": EnvdVersion, "cpuCount": int(math.Ceil(sb.CPU)), "memoryMB": sb.MemoryMB, "diskSizeMB": 0,
		"metadata": md, "state": s.state(sb), "allowInternetAccess": sb.Network != "off",
		"volumeMounts": []any{},
	}
}

func (s *Server) get(w http.ResponseWriter, r *http.Request, c *caller) {
	sb, err := s.live(r.Context(), c, r.PathValue("id"))
	if err != nil {
		s.fail(w, "get the sandbox", err)
		return
	}
	writeJSON(w, http.StatusOK, s.detail(sb, time.Now()))
}

func (s *Server) kill(w http.ResponseWriter, r *http.Request, c *caller) {
	id := r.PathValue("id")
	if _, err := s.live(r.Context(), c, id); err != nil {
		s.fail(w, "kill the sandbox", err)
		return
	}
	if err := c.json(r.Context(), "DELETE", "/v1/sandboxes/"+url.PathEscape(id), nil, nil, nil); err != nil {
		s.fail(w, "kill the sandbox", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) setTimeout(w http.ResponseWriter, r *http.Request, c *caller) {
	var in struct {
		Timeout *int `json:"timeout"`
	}
	if err := decodeBody(r, &in); err != nil || in.Timeout == nil {
		writeErr(w, http.StatusBadRequest, "The body must be {\"timeout\": seconds}.")
		return
	}
	id := r.PathValue("id")
	if _, err := s.live(r.Context(), c, id); err != nil {
		s.fail(w, "set the timeout", err)
		return
	}
	if err := c.json(r.Context(), "PATCH", "/v1/sandboxes/"+url.PathEscape(id), nil, map[string]any{"timeout_seconds": *in.Timeout}, nil); err != nil {
		s.fail(w, "set the timeout", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) refresh(w http.ResponseWriter, r *http.Request, c *caller) {
	var in struct {
		Duration *int `json:"duration"`
	}
	_ = decodeBody(r, &in)
	id := r.PathValue("id")
	if _, err := s.live(r.Context(), c, id); err != nil {
		s.fail(w, "refresh the sandbox", err)
		return
	}
	if in.Duration != nil && *in.Duration > 0 {
		if err := c.json(r.Context(), "PATCH", "/v1/sandboxes/"+url.PathEscape(id), nil, map[string]any{"timeout_seconds": *in.Duration}, nil); err != nil {
			s.fail(w, "refresh the sandbox", err)
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) pause(w http.ResponseWriter, r *http.Request, c *caller) {
	id := r.PathValue("id")
	sb, err := s.live(r.Context(), c, id)
	if err != nil {
		s.fail(w, "pause the sandbox", err)
		return
	}
	if sb.Status == "paused" {
		writeErr(w, http.StatusConflict, fmt.Sprintf("Sandbox %s is already paused.", id))
		return
	}
	if err := c.json(r.Context(), "POST", "/v1/sandboxes/"+url.PathEscape(id)+"/pause", nil, nil, nil); err != nil {
		s.fail(w, "pause the sandbox", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// resumeTo resumes a paused sandbox and gives it timeout seconds from now.
func (s *Server) resumeTo(ctx context.Context, c *caller, id string, timeout *int) (sandbox, error) {
	var sb sandbox
	if err := c.json(ctx, "POST", "/v1/sandboxes/"+url.PathEscape(id)+"/resume", nil, nil, &sb); err != nil {
		return sb, err
	}
	if timeout != nil && *timeout > 0 {
		if err := c.json(ctx, "PATCH", "/v1/sandboxes/"+url.PathEscape(id), nil, map[string]any{"timeout_seconds": *timeout}, &sb); err != nil {
			return sb, err
		}
	}
	return sb, nil
}

func (s *Server) resume(w http.ResponseWriter, r *http.Request, c *caller) {
	var in struct {
		Timeout   *int  `json:"timeout"`
		AutoPause *bool `json:"autoPause"`
	}
	_ = decodeBody(r, &in)
	if in.AutoPause != nil && *in.AutoPause {
		unsupported(w, "pausing a sandbox at its timeout (autoPause)")
		return
	}
	id := r.PathValue("id")
	sb, err := s.live(r.Context(), c, id)
	if err != nil {
		s.fail(w, "resume the sandbox", err)
		return
	}
	if sb.Status != "paused" {
		writeErr(w, http.StatusConflict, fmt.Sprintf("Sandbox %s is already running.", id))
		return
	}
	if sb, err = s.resumeTo(r.Context(), c, id, in.Timeout); err != nil {
		s.fail(w, "resume the sandbox", err)
		return
	}
	s.answerSandbox(w, r, c, http.StatusCreated, sb, "")
}

// connect resumes a paused sandbox (201) or returns a running one (200);
// the timeout is only ever extended, as E2B does.
func (s *Server) connect(w http.ResponseWriter, r *http.Request, c *caller) {
	var in struct {
		Timeout *int  `json:"timeout"`
		Memory  *bool `json:"memory"`
	}
	_ = decodeBody(r, &in)
	if in.Memory != nil && !*in.Memory {
		unsupported(w, "resuming from the filesystem only (onResume 'reboot'): a paused orkestr sandbox resumes with its memory")
		return
	}
	id := r.PathValue("id")
	sb, err := s.live(r.Context(), c, id)
	if err != nil {
		s.fail(w, "connect to the sandbox", err)
		return
	}
	if sb.Status == "paused" {
		if sb, err = s.resumeTo(r.Context(), c, id, in.Timeout); err != nil {
			s.fail(w, "resume the sandbox", err)
			return
		}
		s.answerSandbox(w, r, c, http.StatusCreated, sb, "")
		return
	}
	if in.Timeout != nil && *in.Timeout > 0 && sb.ExpiresAt != nil && time.Until(*sb.ExpiresAt) < time.Duration(*in.Timeout)*time.Second {
		if err := c.json(r.Context(), "PATCH", "/v1/sandboxes/"+url.PathEscape(id), nil, map[string]any{"timeout_seconds": *in.Timeout}, &sb); err != nil {
			s.fail(w, "extend the sandbox's timeout", err)
			return
		}
	}
	s.answerSandbox(w, r, c, http.StatusOK, sb, "")
}

// listAll pages through the native list for the given statuses.
func (s *Server) listAll(ctx context.Context, c *caller, statuses []string) ([]sandbox, error) {
	var all []sandbox
	for _, st := range statuses {
		cursor := ""
		for pages := 0; pages < 100; pages++ {
			q := url.Values{"status": {st}, "limit": {"200"}}
			if cursor != "" {
				q.Set("cursor", cursor)
			}
			var page struct {
				Data       []sandbox `json:"data"`
				NextCursor *string   `json:"next_cursor"`
			}
			if err := c.json(ctx, "GET", "/v1/sandboxes", q, nil, &page); err != nil {
				return nil, err
			}
			all = append(all, page.Data...)
			if page.NextCursor == nil || *page.NextCursor == "" {
				break
			}
			cursor = *page.NextCursor
		}
	}
	return all, nil
}

// parseMetadataFilter reads E2B's metadata filter: one query value that is
// itself a query string whose keys and values the SDKs percent-encoded
// once more before joining them (k%20x=v1&k2=v2).
func parseMetadataFilter(v string) (map[string]string, error) {
	if v == "" {
		return nil, nil
	}
	q, err := url.ParseQuery(v)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, vs := range q {
		if len(vs) == 0 {
			continue
		}
		v := vs[0]
		if u, err := url.PathUnescape(k); err == nil {
			k = u
		}
		if u, err := url.PathUnescape(v); err == nil {
			v = u
		}
		out[k] = v
	}
	return out, nil
}

func (s *Server) listV1(w http.ResponseWriter, r *http.Request, c *caller) {
	s.list(w, r, c, []string{"running"}, false)
}

func (s *Server) listV2(w http.ResponseWriter, r *http.Request, c *caller) {
	var states []string
	for _, v := range r.URL.Query()["state"] {
		for _, st := range strings.Split(v, ",") {
			switch st = strings.TrimSpace(st); st {
			case "running", "paused":
				states = append(states, st)
			case "":
			default:
				writeErr(w, http.StatusBadRequest, fmt.Sprintf("Unknown state %q: running or paused.", st))
				return
			}
		}
	}
	if len(states) == 0 {
		states = []string{"running", "paused"}
	}
	s.list(w, r, c, states, true)
}

func (s *Server) list(w http.ResponseWriter, r *http.Request, c *caller, states []string, paged bool) {
	q := r.URL.Query()
	md, err := parseMetadataFilter(q.Get("metadata"))
	if err != nil {
		writeErr(w, http.StatusBadRequest, "metadata must be a URL-encoded query string (key=value&…).")
		return
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			writeErr(w, http.StatusBadRequest, "limit must be an integer from 1 to 100.")
			return
		}
		limit = n
	}
	var after string
	if v := q.Get("nextToken"); v != "" {
		b, err := base64.RawURLEncoding.DecodeString(v)
		if err != nil || !strings.HasPrefix(string(b), "sbx_") {
			writeErr(w, http.StatusBadRequest, "nextToken is not one this API returned.")
			return
		}
		after = string(b)
	}
	// "running" includes sandboxes still starting.
	native := append([]string(nil), states...)
	for _, st := range states {
		if st == "running" {
			native = append(native, "starting")
		}
	}
	all, err := s.listAll(r.Context(), c, native)
	if err != nil {
		s.fail(w, "list sandboxes", err)
		return
	}
	sort.Slice(all, func(i, j int) bool {
		if !all[i].CreatedAt.Equal(all[j].CreatedAt) {
			return all[i].CreatedAt.After(all[j].CreatedAt)
		}
		return all[i].ID > all[j].ID
	})
	if q.Get("order") == "asc" {
		for i, j := 0, len(all)-1; i < j; i, j = i+1, j-1 {
			all[i], all[j] = all[j], all[i]
		}
	}
	var startedAfter time.Time
	if v := q.Get("startedAfter"); v != "" {
		if startedAfter, err = time.Parse(time.RFC3339Nano, v); err != nil {
			writeErr(w, http.StatusBadRequest, "startedAfter must be an RFC 3339 time.")
			return
		}
	}
	tmpl := q.Get("template")
	out := []any{}
	skipping := after != ""
	next := ""
	now := time.Now()
	for _, sb := range all {
		if skipping {
			if sb.ID == after {
				skipping = false
			}
			continue
		}
		if !matches(sb, md) || (!startedAfter.IsZero() && !sb.CreatedAt.After(startedAfter)) || (tmpl != "" && tmpl != sb.Template && s.o.Templates[tmpl] != sb.Template) {
			continue
		}
		if paged && len(out) == limit {
			next = base64.RawURLEncoding.EncodeToString([]byte(out[len(out)-1].(map[string]any)["sandboxID"].(string)))
			break
		}
		out = append(out, s.detail(sb, now))
	}
	if next != "" {
		w.Header().Set("X-Next-Token", next)
	}
	writeJSON(w, http.StatusOK, out)
}

func matches(sb sandbox, md map[string]string) bool {
	for k, v := range md {
		if sb.Metadata[k] != v {
			return false
		}
	}
	return true
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request, c *caller) {
	id := r.PathValue("id")
	if _, err := s.live(r.Context(), c, id); err != nil {
		s.fail(w, "get the sandbox's metrics", err)
		return
	}
	var m struct {
		CPU *struct {
			Cores float64 `json:"cores"`
		} `json:"cpu"`
		Memory *struct {
			LimitBytes int64 `json:"limit_bytes"`
		} `json:"memory"`
		Samples []struct {
			T          time.Time `json:"t"`
			CPUPercent float64   `json:"cpu_percent"`
			MemBytes   int64     `json:"mem_bytes"`
		} `json:"samples"`
	}
	if err := c.json(r.Context(), "GET", "/v1/sandboxes/"+url.PathEscape(id)+"/metrics", nil, nil, &m); err != nil {
		s.fail(w, "get the sandbox's metrics", err)
		return
	}
	q := r.URL.Query()
	start, _ := strconv.ParseInt(q.Get("start"), 10, 64)
	end, _ := strconv.ParseInt(q.Get("end"), 10, 64)
	out := []any{}
	cores, limit := 0, int64(0)
	if m.CPU != nil {
		cores = int(math.Ceil(m.CPU.Cores))
	}
	if m.Memory != nil {
		limit = m.Memory.LimitBytes
	}
	for _, sm := range m.Samples {
		u := sm.T.Unix()
		if (start > 0 && u < start) || (end > 0 && u > end) {
			continue
		}
		out = append(out, map[string]any{
			"timestamp": sm.T.UTC().Format(time.RFC3339Nano), "timestampUnix": u, "cpuCount": cores,
			"cpuUsedPct": sm.CPUPercent, "memUsed": sm.MemBytes, "memTotal": limit, "memCache": 0,
			"diskUsed": 0, "diskTotal": 0,
		})
	}
	writeJSON(w, http.StatusOK, out)
}
