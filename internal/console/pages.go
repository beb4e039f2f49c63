package console

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/orkestr-eu/orkestr/internal/auth"
	"github.com/orkestr-eu/orkestr/internal/store"
)

// apiResult is an API answer to the console.
type apiResult struct {
	status int
	header http.Header
	body   []byte
}

// apiError is the API's error body.
func (a apiResult) errMessage() string {
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if json.Unmarshal(a.body, &e) == nil && e.Error.Message != "" {
		return e.Error.Message
	}
	return fmt.Sprintf("The API answered %d.", a.status)
}

// recorder collects an API response in memory.
type recorder struct {
	h      http.Header
	status int
	buf    bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.h }
func (r *recorder) WriteHeader(s int) {
	if r.status == 0 {
		r.status = s
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.buf.Write(b)
}

// callAPI runs an API request for the member's account through the API's
// own handlers.
func (c *Console) callAPI(r *http.Request, s *session, method, path string, body any) (apiResult, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return apiResult{}, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(r.Context(), method, path, rd)
	if err != nil {
		return apiResult{}, err
	}
	req.RemoteAddr = r.RemoteAddr
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := &recorder{h: http.Header{}}
	c.o.API.ServeAccount(rec, req, s.AccountID)
	return apiResult{status: rec.status, header: rec.h, body: rec.buf.Bytes()}, nil
}

func (c *Console) getJSON(r *http.Request, s *session, path string, v any) (apiResult, error) {
	res, err := c.callAPI(r, s, http.MethodGet, path, nil)
	if err != nil || res.status != http.StatusOK {
		return res, err
	}
	return res, json.Unmarshal(res.body, v)
}

// sandbox is the API's sandbox object, as far as the console shows it.
type sandbox struct {
	ID             string            `json:"id"`
	Status         string            `json:"status"`
	Template       string            `json:"template"`
	Size           string            `json:"size"`
	CPU            float64           `json:"cpu"`
	MemoryMB       int               `json:"memory_mb"`
	Network        string            `json:"network"`
	Region         string            `json:"region"`
	TimeoutSeconds int               `json:"timeout_seconds"`
	ExpiresAt      *time.Time        `json:"expires_at"`
	EnvKeys        []string          `json:"env_keys"`
	Metadata       map[string]string `json:"metadata"`
	CreatedAt      time.Time         `json:"created_at"`
	PausedAt       *time.Time        `json:"paused_at"`
	TerminatedAt   *time.Time        `json:"terminated_at"`
	ErrorReason    *string           `json:"error_reason"`
}

type kv struct{ Key, Value string }

// Meta is the metadata sorted by key.
func (s sandbox) Meta() []kv {
	out := make([]kv, 0, len(s.Metadata))
	for k, v := range s.Metadata {
		out = append(out, kv{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// Age is how long ago the sandbox was created, roughly.
func (s sandbox) Age() string { return age(time.Since(s.CreatedAt)) }

func age(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// Active: it can be paused (running) or resumed (paused).
func (s sandbox) Running() bool { return s.Status == "running" }
func (s sandbox) Paused() bool  { return s.Status == "paused" }
func (s sandbox) Ended() bool   { return s.Status == "terminated" || s.Status == "error" }

var statuses = []string{"", "running", "paused", "starting", "terminated", "error"}

type sandboxesData struct {
	Sandboxes []sandbox
	Status    string
	Statuses  []string
	More      bool
}

func (c *Console) listSandboxes(r *http.Request, s *session) (sandboxesData, apiResult, error) {
	status := r.URL.Query().Get("status")
	valid := false
	for _, st := range statuses {
		valid = valid || st == status
	}
	if !valid {
		status = ""
	}
	q := url.Values{"limit": {"200"}}
	if status != "" {
		q.Set("status", status)
	}
	var page struct {
		Data       []sandbox `json:"data"`
		NextCursor *string   `json:"next_cursor"`
	}
	res, err := c.getJSON(r, s, "/v1/sandboxes?"+q.Encode(), &page)
	return sandboxesData{Sandboxes: page.Data, Status: status, Statuses: statuses, More: page.NextCursor != nil}, res, err
}

func (c *Console) sandboxesPage(w http.ResponseWriter, r *http.Request, s *session) {
	d, res, err := c.listSandboxes(r, s)
	if err != nil {
		c.internalError(w, r, s, "listing sandboxes", err)
		return
	}
	if res.status != http.StatusOK {
		c.render(w, r, res.status, "error", s, pageData{Title: "Sandboxes", Nav: "sandboxes", Error: res.errMessage()})
		return
	}
	c.render(w, r, http.StatusOK, "sandboxes", s, pageData{Title: "Sandboxes", Nav: "sandboxes", Data: d})
}

// sandboxesJSON feeds the list page's refresh: the same API list.
func (c *Console) sandboxesJSON(w http.ResponseWriter, r *http.Request, s *session) {
	d, res, err := c.listSandboxes(r, s)
	if err != nil {
		c.log.Error("console: listing sandboxes", "err", err)
		writeJSONError(w, http.StatusInternalServerError, "internal", "Something went wrong on our side.")
		return
	}
	if res.status != http.StatusOK {
		passThrough(w, res)
		return
	}
	type row struct {
		sandbox
		Age  string `json:"age"`
		Meta []kv   `json:"meta"`
	}
	rows := make([]row, len(d.Sandboxes))
	for i, sb := range d.Sandboxes {
		rows[i] = row{sb, sb.Age(), sb.Meta()}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"data": rows})
}

var sandboxIDRE = regexp.MustCompile(`^sbx_[0-9A-HJKMNP-TV-Z]{26}$`)

type sandboxData struct {
	Sandbox  sandbox
	Interval int
	Lifetime struct {
		CPUSeconds     float64 `json:"cpu_seconds"`
		MemMBSeconds   int64   `json:"mem_mb_seconds"`
		RunningSeconds int64   `json:"running_seconds"`
	}
}

// GBHours of the lifetime.
func (d sandboxData) GBHours() string {
	return strconv.FormatFloat(float64(d.Lifetime.MemMBSeconds)/(1024*3600), 'f', 4, 64)
}

// CPUHours of the lifetime.
func (d sandboxData) CPUHours() string {
	return strconv.FormatFloat(d.Lifetime.CPUSeconds/3600, 'f', 4, 64)
}

// RunningFor is the lifetime's running time.
func (d sandboxData) RunningFor() string {
	return (time.Duration(d.Lifetime.RunningSeconds) * time.Second).String()
}

func (c *Console) sandboxPage(w http.ResponseWriter, r *http.Request, s *session) {
	c.showSandbox(w, r, s, http.StatusOK, "", r.URL.Query().Get("done"))
}

var notices = map[string]string{"pause": "The sandbox is paused.", "resume": "The sandbox is running again.", "terminate": "The sandbox is terminated."}

func (c *Console) showSandbox(w http.ResponseWriter, r *http.Request, s *session, status int, errMsg, done string) {
	id := r.PathValue("id")
	notFound := func() {
		c.render(w, r, http.StatusNotFound, "error", s, pageData{Title: "Sandbox not found", Nav: "sandboxes", Error: "No sandbox with this id exists in your account."})
	}
	if !sandboxIDRE.MatchString(id) {
		notFound()
		return
	}
	var d sandboxData
	res, err := c.getJSON(r, s, "/v1/sandboxes/"+id, &d.Sandbox)
	if err != nil {
		c.internalError(w, r, s, "reading a sandbox", err)
		return
	}
	if res.status == http.StatusNotFound {
		notFound()
		return
	}
	if res.status != http.StatusOK {
		c.render(w, r, res.status, "error", s, pageData{Title: "Sandbox", Nav: "sandboxes", Error: res.errMessage()})
		return
	}
	var m struct {
		Interval int `json:"sample_interval_seconds"`
		Lifetime any `json:"lifetime"`
	}
	if res, err := c.getJSON(r, s, "/v1/sandboxes/"+id+"/metrics", &m); err == nil && res.status == http.StatusOK {
		d.Interval = m.Interval
		b, _ := json.Marshal(m.Lifetime)
		_ = json.Unmarshal(b, &d.Lifetime)
	}
	if d.Interval < 1 {
		d.Interval = 1
	}
	c.render(w, r, status, "sandbox", s, pageData{Title: "Sandbox " + id, Nav: "sandboxes", Error: errMsg, Notice: notices[done], Data: d})
}

// metricsJSON passes the API's metrics through for the sparklines.
func (c *Console) metricsJSON(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	if !sandboxIDRE.MatchString(id) {
		writeJSONError(w, http.StatusNotFound, "sandbox_not_found", "No sandbox with this id exists in your account.")
		return
	}
	path := "/v1/sandboxes/" + id + "/metrics"
	if since := r.URL.Query().Get("since"); since != "" {
		path += "?since=" + url.QueryEscape(since)
	}
	res, err := c.callAPI(r, s, http.MethodGet, path, nil)
	if err != nil {
		writeJSONError(w, http.StatusInternalServerError, "internal", "Something went wrong on our side.")
		return
	}
	passThrough(w, res)
}

func passThrough(w http.ResponseWriter, res apiResult) {
	w.Header().Set("Content-Type", "application/json")
	if v := res.header.Get("Retry-After"); v != "" {
		w.Header().Set("Retry-After", v)
	}
	w.WriteHeader(res.status)
	_, _ = w.Write(res.body)
}

func writeJSONError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": code, "message": msg, "details": map[string]any{}}})
}

// sandboxAction pauses, resumes or terminates through the API.
func (c *Console) sandboxAction(w http.ResponseWriter, r *http.Request, s *session) {
	id, action := r.PathValue("id"), r.PathValue("action")
	if !sandboxIDRE.MatchString(id) {
		c.render(w, r, http.StatusNotFound, "error", s, pageData{Title: "Sandbox not found", Nav: "sandboxes", Error: "No sandbox with this id exists in your account."})
		return
	}
	var method, path string
	switch action {
	case "pause", "resume":
		method, path = http.MethodPost, "/v1/sandboxes/"+id+"/"+action
	case "terminate":
		method, path = http.MethodDelete, "/v1/sandboxes/"+id
	default:
		c.render(w, r, http.StatusNotFound, "error", s, pageData{Title: "Not found", Error: "There is no such action."})
		return
	}
	res, err := c.callAPI(r, s, method, path, nil)
	if err != nil {
		c.internalError(w, r, s, action+" a sandbox", err)
		return
	}
	if res.status == http.StatusNotFound {
		c.render(w, r, http.StatusNotFound, "error", s, pageData{Title: "Sandbox not found", Nav: "sandboxes", Error: "No sandbox with this id exists in your account."})
		return
	}
	if res.status != http.StatusOK {
		c.showSandbox(w, r, s, res.status, res.errMessage(), "")
		return
	}
	c.log.Info("console: sandbox "+action, "sandbox", id, "member", s.MemberID, "account", s.AccountID)
	http.Redirect(w, r, "/console/sandboxes/"+id+"?done="+action, http.StatusSeeOther)
}

// Tokens.

type tokenRow struct {
	store.APIKey
	State string
}

type tokensData struct {
	Tokens   []tokenRow
	NewKey   string
	NewToken *store.APIKey
	Expiries []expiry
}

type expiry struct {
	Value, Label string
}

var expiries = []expiry{{"", "Never"}, {"1", "1 day"}, {"7", "7 days"}, {"30", "30 days"}, {"90", "90 days"}, {"365", "1 year"}}

func (c *Console) tokensData(r *http.Request, s *session) (tokensData, error) {
	keys, err := c.o.Store.ListKeys(r.Context(), s.AccountID)
	if err != nil {
		return tokensData{}, err
	}
	now := c.o.Now()
	d := tokensData{Expiries: expiries}
	// Newest first.
	for i := len(keys) - 1; i >= 0; i-- {
		k := keys[i]
		state := "active"
		switch {
		case k.RevokedAt != nil:
			state = "revoked"
		case k.ExpiresAt != nil && !now.Before(*k.ExpiresAt):
			state = "expired"
		}
		d.Tokens = append(d.Tokens, tokenRow{k, state})
	}
	return d, nil
}

func (c *Console) tokensPage(w http.ResponseWriter, r *http.Request, s *session) {
	d, err := c.tokensData(r, s)
	if err != nil {
		c.internalError(w, r, s, "listing tokens", err)
		return
	}
	c.render(w, r, http.StatusOK, "tokens", s, pageData{Title: "API tokens", Nav: "tokens", Notice: map[string]string{"revoked": "The token is revoked; the API refuses it from now on."}[r.URL.Query().Get("done")], Data: d})
}

func (c *Console) mintToken(w http.ResponseWriter, r *http.Request, s *session) {
	var scopes []string
	for _, sc := range r.PostForm["scope"] {
		if !auth.ValidScope(sc) {
			c.tokensError(w, r, s, "Unknown scope; choose sandboxes:read and/or sandboxes:write.")
			return
		}
		if !contains(scopes, sc) {
			scopes = append(scopes, sc)
		}
	}
	if len(scopes) == 0 {
		c.tokensError(w, r, s, "Choose at least one scope.")
		return
	}
	now := c.o.Now().UTC()
	k := store.APIKey{ID: "key_" + ulid.Make().String(), AccountID: s.AccountID, Scopes: scopes, CreatedAt: now}
	if v := r.PostFormValue("expires_days"); v != "" {
		days, err := strconv.Atoi(v)
		if err != nil || days < 1 || days > 3650 {
			c.tokensError(w, r, s, "Expiry must be a whole number of days from 1 to 3650, or never.")
			return
		}
		exp := now.Add(time.Duration(days) * 24 * time.Hour)
		k.ExpiresAt = &exp
	}
	key, hash, prefix, err := auth.NewKey()
	if err != nil {
		c.internalError(w, r, s, "making a key", err)
		return
	}
	k.Hash, k.Prefix = hash, prefix
	if err := c.o.Store.CreateKey(r.Context(), k); err != nil {
		c.internalError(w, r, s, "storing a key", err)
		return
	}
	c.log.Info("console: token minted", "key", k.ID, "prefix", k.Prefix, "member", s.MemberID, "account", s.AccountID)
	d, err := c.tokensData(r, s)
	if err != nil {
		c.internalError(w, r, s, "listing tokens", err)
		return
	}
	// The plaintext goes out in this one response (not stored, not
	// cached: the console sends no-store) and never again.
	d.NewKey, d.NewToken = key, &k
	c.render(w, r, http.StatusCreated, "tokens", s, pageData{Title: "API tokens", Nav: "tokens", Data: d})
}

func (c *Console) tokensError(w http.ResponseWriter, r *http.Request, s *session, msg string) {
	d, err := c.tokensData(r, s)
	if err != nil {
		c.internalError(w, r, s, "listing tokens", err)
		return
	}
	c.render(w, r, http.StatusBadRequest, "tokens", s, pageData{Title: "API tokens", Nav: "tokens", Error: msg, Data: d})
}

func (c *Console) revokeToken(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	if !strings.HasPrefix(id, "key_") {
		c.tokensError(w, r, s, "No such token in your account.")
		return
	}
	err := c.o.Store.RevokeKey(r.Context(), s.AccountID, id, c.o.Now().UTC())
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
		c.tokensError(w, r, s, "No such token in your account.")
		return
	}
	if err != nil {
		c.internalError(w, r, s, "revoking a key", err)
		return
	}
	c.log.Info("console: token revoked", "key", id, "member", s.MemberID, "account", s.AccountID)
	http.Redirect(w, r, "/console/tokens?done=revoked", http.StatusSeeOther)
}

// Usage.

type limits struct {
	Plan                  string    `json:"plan"`
	AllowedSizes          []string  `json:"allowed_sizes"`
	MaxConcurrent         int       `json:"max_concurrent"`
	SnapshotCap           int       `json:"snapshot_cap"`
	UsageGBHoursUsed      float64   `json:"usage_gb_hours_used"`
	UsageGBHoursIncluded  float64   `json:"usage_gb_hours_included"`
	UsageCPUHoursUsed     float64   `json:"usage_cpu_hours_used"`
	UsageCPUHoursIncluded float64   `json:"usage_cpu_hours_included"`
	UsageResetsAt         time.Time `json:"usage_resets_at"`
	Sizes                 []struct {
		Size     string  `json:"size"`
		CPU      float64 `json:"cpu"`
		MemoryMB int     `json:"memory_mb"`
		DiskMB   int     `json:"disk_mb"`
		Allowed  bool    `json:"allowed"`
	} `json:"sizes"`
}

type dayBar struct {
	Day      string
	GBHours  float64
	CPUHours float64
	X        int
	GBY, GBH int // bar geometry in the SVG's units
	CPUY     int
	CPUH     int
}

type usageData struct {
	Limits  limits
	Regions []regionRow
	// Nodes: for the operator's accounts only (GET /v1/nodes answers
	// them alone); nil for everyone else.
	Nodes    []nodeRow
	Operator bool // the account is one of the operator's: Nodes is shown
	Days     []dayBar
	MaxGB    float64
	MaxCPU   float64
	Width    int
	Range    string
}

// regionRow is a region of GET /v1/regions.
type regionRow struct {
	Name       string  `json:"name"`
	State      string  `json:"state"`
	Default    bool    `json:"default"`
	Nodes      int     `json:"nodes"`
	NodesAlive int     `json:"nodes_alive"`
	CPUs       float64 `json:"cpus"`
	MemoryMB   int64   `json:"memory_mb"`
	Sandboxes  int     `json:"sandboxes"`
	Slots      int     `json:"slots"`
}

// nodeRow is a node of GET /v1/nodes.
type nodeRow struct {
	ID              string    `json:"id"`
	Region          string    `json:"region"`
	Address         string    `json:"address"`
	Version         string    `json:"version"`
	State           string    `json:"state"`
	SlotsUsed       int       `json:"slots_used"`
	Slots           int       `json:"slots"`
	CPUsAllocated   float64   `json:"cpus_allocated"`
	CPUs            float64   `json:"cpus"`
	MemoryMBUsed    int64     `json:"memory_mb_allocated"`
	MemoryMB        int64     `json:"memory_mb"`
	Warm            int       `json:"warm"`
	LastHeartbeatAt time.Time `json:"last_heartbeat_at"`
	HeartbeatAgeMS  int64     `json:"heartbeat_age_ms"`
}

// HeartbeatAge is the last heartbeat's age, to the tenth of a second.
func (n nodeRow) HeartbeatAge() string {
	return strconv.FormatFloat(float64(n.HeartbeatAgeMS)/1000, 'f', 1, 64) + " s ago"
}

// Fraction helpers for <meter>.
func (d usageData) GBMax() float64 {
	return maxf(d.Limits.UsageGBHoursIncluded, d.Limits.UsageGBHoursUsed, 0.001)
}
func (d usageData) CPUMax() float64 {
	return maxf(d.Limits.UsageCPUHoursIncluded, d.Limits.UsageCPUHoursUsed, 0.001)
}

func maxf(v ...float64) float64 {
	m := v[0]
	for _, x := range v[1:] {
		if x > m {
			m = x
		}
	}
	return m
}

const chartHeight = 100

func (c *Console) usagePage(w http.ResponseWriter, r *http.Request, s *session) {
	var d usageData
	res, err := c.getJSON(r, s, "/v1/limits", &d.Limits)
	if err == nil && res.status == http.StatusOK {
		var u struct {
			From    time.Time `json:"from"`
			To      time.Time `json:"to"`
			Periods []struct {
				Start    time.Time `json:"start"`
				GBHours  float64   `json:"gb_hours"`
				CPUHours float64   `json:"cpu_hours"`
			} `json:"periods"`
		}
		if res, err = c.getJSON(r, s, "/v1/usage?granularity=day", &u); err == nil && res.status == http.StatusOK {
			byDay := map[string]int{}
			for day := u.From; day.Before(u.To); day = day.AddDate(0, 0, 1) {
				byDay[day.Format("2006-01-02")] = len(d.Days)
				d.Days = append(d.Days, dayBar{Day: day.Format("2006-01-02")})
			}
			for _, p := range u.Periods {
				if i, ok := byDay[p.Start.Format("2006-01-02")]; ok {
					d.Days[i].GBHours, d.Days[i].CPUHours = p.GBHours, p.CPUHours
					d.MaxGB, d.MaxCPU = maxf(d.MaxGB, p.GBHours), maxf(d.MaxCPU, p.CPUHours)
				}
			}
			for i := range d.Days {
				b := &d.Days[i]
				b.X = i * 10
				b.GBH = barHeight(b.GBHours, d.MaxGB)
				b.CPUH = barHeight(b.CPUHours, d.MaxCPU)
				b.GBY, b.CPUY = chartHeight-b.GBH, chartHeight-b.CPUH
			}
			d.Width = len(d.Days) * 10
			if len(d.Days) > 0 {
				d.Range = d.Days[0].Day + " to " + d.Days[len(d.Days)-1].Day
			}
		}
	}
	if err != nil {
		c.internalError(w, r, s, "reading usage", err)
		return
	}
	if res.status != http.StatusOK {
		c.render(w, r, res.status, "error", s, pageData{Title: "Usage", Nav: "usage", Error: res.errMessage()})
		return
	}
	// Where sandboxes can run: the regions and how many of their nodes
	// answer (a fleet's operator sees a lost node here first).
	var regions struct {
		Data []regionRow `json:"data"`
	}
	if res, err := c.getJSON(r, s, "/v1/regions", &regions); err == nil && res.status == http.StatusOK {
		d.Regions = regions.Data
	}
	// The nodes themselves, to the operator's members: the API answers
	// only the accounts of config operator_accounts (404 to the others).
	var nodes struct {
		Data []nodeRow `json:"data"`
	}
	if res, err := c.getJSON(r, s, "/v1/nodes", &nodes); err == nil && res.status == http.StatusOK {
		d.Nodes, d.Operator = nodes.Data, true
	}
	c.render(w, r, http.StatusOK, "usage", s, pageData{Title: "Usage", Nav: "usage", Data: d})
}

func barHeight(v, max float64) int {
	if v <= 0 || max <= 0 {
		return 0
	}
	return max1(int(v/max*chartHeight), 1)
}

func max1(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// Members.

type memberRow struct {
	store.Member
	Invited bool
}

type membersData struct {
	Members []memberRow
	Link    string
	Invited string
}

func (c *Console) membersData(r *http.Request, s *session) (membersData, error) {
	ms, err := c.o.Store.ListMembers(r.Context(), s.AccountID)
	var d membersData
	for _, m := range ms {
		d.Members = append(d.Members, memberRow{m, m.PasswordHash == ""})
	}
	return d, err
}

func (c *Console) membersPage(w http.ResponseWriter, r *http.Request, s *session) {
	d, err := c.membersData(r, s)
	if err != nil {
		c.internalError(w, r, s, "listing members", err)
		return
	}
	c.render(w, r, http.StatusOK, "members", s, pageData{Title: "Members", Nav: "members", Data: d})
}

func (c *Console) invite(w http.ResponseWriter, r *http.Request, s *session) {
	email := normalizeEmail(r.PostFormValue("email"))
	_, path, err := CreateMember(r.Context(), c.o.Store, s.AccountID, email, "invite", c.o.Now())
	d, lerr := c.membersData(r, s)
	if lerr != nil {
		c.internalError(w, r, s, "listing members", lerr)
		return
	}
	switch {
	case errors.Is(err, store.ErrConflict):
		c.render(w, r, http.StatusConflict, "members", s, pageData{Title: "Members", Nav: "members", Error: "A member with this email already exists.", Data: d})
		return
	case err != nil && ValidEmail(email) != nil:
		c.render(w, r, http.StatusBadRequest, "members", s, pageData{Title: "Members", Nav: "members", Error: err.Error(), Data: d})
		return
	case err != nil:
		c.internalError(w, r, s, "inviting a member", err)
		return
	}
	c.log.Info("console: member invited", "by", s.MemberID, "account", s.AccountID)
	d.Link, d.Invited = c.absURL(r, path), email
	c.render(w, r, http.StatusCreated, "members", s, pageData{Title: "Members", Nav: "members", Data: d})
}

// absURL makes a link absolute: PublicURL when set, else the request's
// own host.
func (c *Console) absURL(r *http.Request, path string) string {
	if c.o.PublicURL != "" {
		return strings.TrimRight(c.o.PublicURL, "/") + path
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + path
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
