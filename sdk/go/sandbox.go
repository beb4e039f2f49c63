package orkestr

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// SandboxStatus is the lifecycle state of a sandbox.
type SandboxStatus string

// The statuses of a sandbox.
const (
	StatusStarting   SandboxStatus = "starting"
	StatusRunning    SandboxStatus = "running"
	StatusPaused     SandboxStatus = "paused"
	StatusTerminated SandboxStatus = "terminated"
	StatusError      SandboxStatus = "error"
)

// Network modes of a sandbox.
const (
	NetworkOff        = "off"
	NetworkRestricted = "restricted"
	NetworkOpen       = "open"
)

// Sandbox is an isolated environment of the API, and a handle for acting on
// it. Its fields are the API's Sandbox object as last seen; Refresh,
// Update, Pause, Resume and Terminate update them in place, so do not call
// those concurrently with each other or with reads of the fields. Exec,
// ExecStream, Files and Metrics only read ID and may be used concurrently.
type Sandbox struct {
	ID             string            `json:"id"`
	Status         SandboxStatus     `json:"status"`
	Template       string            `json:"template"`
	Size           string            `json:"size"`
	CPU            float64           `json:"cpu"`
	MemoryMB       int               `json:"memory_mb"`
	Network        string            `json:"network"`
	Region         string            `json:"region"`
	TimeoutSeconds int               `json:"timeout_seconds"`
	ExpiresAt      *time.Time        `json:"expires_at"` // nil unless running
	EnvKeys        []string          `json:"env_keys"`   // env values are never returned
	Metadata       map[string]string `json:"metadata"`
	CreatedAt      time.Time         `json:"created_at"`
	PausedAt       *time.Time        `json:"paused_at"`
	TerminatedAt   *time.Time        `json:"terminated_at"`
	// ErrorReason says why a sandbox in status error stopped (e.g. it
	// exceeded its memory limit as a whole); nil in other statuses.
	ErrorReason *string `json:"error_reason"`

	client *Client
}

// CreateParams describes a new sandbox. Zero fields take the API's
// defaults: size "small", network "off", timeout 600 s, automatic region.
type CreateParams struct {
	Template       string            `json:"template"`                  // required, e.g. "python-3.12"
	Size           string            `json:"size,omitempty"`            // "small" | "medium" | "large" (plan-capped)
	Network        string            `json:"network,omitempty"`         // NetworkOff | NetworkRestricted | NetworkOpen
	TimeoutSeconds int               `json:"timeout_seconds,omitempty"` // running time until auto-termination
	Env            map[string]string `json:"env,omitempty"`             // never returned by the API
	Metadata       map[string]string `json:"metadata,omitempty"`        // returned unchanged
	Region         string            `json:"region,omitempty"`          // e.g. "fsn1"
}

// CreateSandbox starts a sandbox and returns it running. It is never
// retried: a retry could start a second sandbox.
func (c *Client) CreateSandbox(ctx context.Context, p CreateParams) (*Sandbox, error) {
	if p.Template == "" {
		return nil, errors.New("orkestr: CreateParams.Template is required")
	}
	sb := &Sandbox{client: c}
	if err := c.call(ctx, &request{method: http.MethodPost, path: "/sandboxes", json: p}, sb); err != nil {
		return nil, err
	}
	return sb, nil
}

// GetSandbox returns the sandbox with this id.
func (c *Client) GetSandbox(ctx context.Context, id string) (*Sandbox, error) {
	path, err := sandboxPath(id, "")
	if err != nil {
		return nil, err
	}
	sb := &Sandbox{client: c}
	if err := c.call(ctx, &request{method: http.MethodGet, path: path}, sb); err != nil {
		return nil, err
	}
	return sb, nil
}

// Sandbox returns a handle for the sandbox with this id without asking the
// API; only its ID is set (call Refresh for the rest).
func (c *Client) Sandbox(id string) *Sandbox { return &Sandbox{ID: id, client: c} }

// ResumeSandbox restores a paused sandbox (on the same or another host) and
// returns it running. Resuming a running sandbox returns it unchanged.
func (c *Client) ResumeSandbox(ctx context.Context, id string) (*Sandbox, error) {
	sb := c.Sandbox(id)
	if err := sb.Resume(ctx); err != nil {
		return nil, err
	}
	return sb, nil
}

// WithTempSandbox creates a sandbox, calls fn with it and terminates it
// when fn returns, fails or panics, even if ctx is done by then. It returns
// fn's error; if terminating also fails, both are joined.
func (c *Client) WithTempSandbox(ctx context.Context, p CreateParams, fn func(*Sandbox) error) (err error) {
	sb, err := c.CreateSandbox(ctx, p)
	if err != nil {
		return err
	}
	defer func() {
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if terr := sb.Terminate(tctx); terr != nil {
			err = errors.Join(err, fmt.Errorf("orkestr: terminating temporary sandbox %s: %w", sb.ID, terr))
		}
	}()
	return fn(sb)
}

// ListParams filters a listing of sandboxes.
type ListParams struct {
	Status SandboxStatus // only sandboxes in this status; "" for all
	Limit  int           // page size, 1..200; 0 for the API's default (50)
	Cursor string        // where to start: a NextCursor of an earlier page; "" for the newest
}

// SandboxPage is one page of a listing, newest first.
type SandboxPage struct {
	Data       []*Sandbox `json:"data"`
	NextCursor string     `json:"next_cursor"` // "" on the last page
}

// ListSandboxesPage returns one page of the account's sandboxes.
func (c *Client) ListSandboxesPage(ctx context.Context, p ListParams) (*SandboxPage, error) {
	q := url.Values{}
	if p.Status != "" {
		q.Set("status", string(p.Status))
	}
	if p.Limit > 0 {
		q.Set("limit", strconv.Itoa(p.Limit))
	}
	if p.Cursor != "" {
		q.Set("cursor", p.Cursor)
	}
	var page struct {
		Data       []*Sandbox `json:"data"`
		NextCursor *string    `json:"next_cursor"`
	}
	if err := c.call(ctx, &request{method: http.MethodGet, path: "/sandboxes", query: q}, &page); err != nil {
		return nil, err
	}
	out := &SandboxPage{Data: page.Data}
	if out.Data == nil {
		out.Data = []*Sandbox{}
	}
	for _, sb := range out.Data {
		sb.client = c
	}
	if page.NextCursor != nil {
		out.NextCursor = *page.NextCursor
	}
	return out, nil
}

// ListSandboxes iterates over all of the account's sandboxes, newest first,
// fetching pages as it goes. An error ends the iteration after being
// yielded once with a nil sandbox:
//
//	for sb, err := range c.ListSandboxes(ctx, orkestr.ListParams{Status: orkestr.StatusRunning}) {
//		if err != nil {
//			return err
//		}
//		fmt.Println(sb.ID)
//	}
func (c *Client) ListSandboxes(ctx context.Context, p ListParams) iter.Seq2[*Sandbox, error] {
	return func(yield func(*Sandbox, error) bool) {
		for {
			page, err := c.ListSandboxesPage(ctx, p)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, sb := range page.Data {
				if !yield(sb, nil) {
					return
				}
			}
			if page.NextCursor == "" || page.NextCursor == p.Cursor {
				return
			}
			p.Cursor = page.NextCursor
		}
	}
}

// Client returns the client the sandbox was obtained with.
func (s *Sandbox) Client() *Client { return s.client }

// replace copies fresh fields into s, keeping its client.
func (s *Sandbox) replace(fresh *Sandbox) {
	c := s.client
	*s = *fresh
	s.client = c
}

// Refresh reloads the sandbox's fields from the API.
func (s *Sandbox) Refresh(ctx context.Context) error {
	fresh, err := s.client.GetSandbox(ctx, s.ID)
	if err != nil {
		return err
	}
	s.replace(fresh)
	return nil
}

// UpdateParams changes a running or paused sandbox. Nil fields are left
// as they are.
type UpdateParams struct {
	// TimeoutSeconds sets a new timeout, counted in running time from now.
	TimeoutSeconds *int
	// Metadata replaces the metadata; a non-nil empty map clears it.
	Metadata map[string]string
}

// Update changes the sandbox (PATCH) and refreshes its fields. It is not
// retried.
func (s *Sandbox) Update(ctx context.Context, p UpdateParams) error {
	path, err := sandboxPath(s.ID, "")
	if err != nil {
		return err
	}
	body := struct {
		TimeoutSeconds *int               `json:"timeout_seconds,omitempty"`
		Metadata       *map[string]string `json:"metadata,omitempty"`
	}{TimeoutSeconds: p.TimeoutSeconds}
	if p.Metadata != nil {
		body.Metadata = &p.Metadata
	}
	fresh := &Sandbox{}
	if err := s.client.call(ctx, &request{method: http.MethodPatch, path: path, json: body}, fresh); err != nil {
		return err
	}
	s.replace(fresh)
	return nil
}

// Terminate ends the sandbox: its VM and in-memory state are gone, its
// record stays in the account's history. Terminating a terminated sandbox
// succeeds. The fields are refreshed from the answer.
func (s *Sandbox) Terminate(ctx context.Context) error {
	path, err := sandboxPath(s.ID, "")
	if err != nil {
		return err
	}
	fresh := &Sandbox{}
	if err := s.client.call(ctx, &request{method: http.MethodDelete, path: path}, fresh); err != nil {
		return err
	}
	s.replace(fresh)
	return nil
}

// PauseResult is the answer to Pause.
type PauseResult struct {
	ID            string        `json:"id"` // pass to Client.ResumeSandbox, from any process
	Status        SandboxStatus `json:"status"`
	SnapshotBytes int64         `json:"snapshot_bytes"`
}

// Pause snapshots the sandbox's memory and disk and stops its clock and
// meter. When the server keeps snapshots in a store it returns only once
// the snapshot is durable there (503 snapshot_store_unavailable: the
// sandbox still runs). Over the plan's snapshot cap it fails with a
// *SnapshotCapReachedError. It sets Status to paused; PausedAt is only
// filled in by a Refresh. It is not retried.
func (s *Sandbox) Pause(ctx context.Context) (*PauseResult, error) {
	path, err := sandboxPath(s.ID, "/pause")
	if err != nil {
		return nil, err
	}
	res := &PauseResult{}
	if err := s.client.call(ctx, &request{method: http.MethodPost, path: path}, res); err != nil {
		return nil, err
	}
	s.Status, s.ExpiresAt = StatusPaused, nil
	return res, nil
}

// Fork makes count clones of the sandbox (running or paused): each a new
// running sandbox with its own id and network identity, the same memory,
// processes, files, env and metadata. All or nothing: over the plan's
// concurrency it fails with a *PlanLimitError (code concurrency_limit) and
// no clone is made; over the plan's max_fork likewise (code fork_limit). A
// running source keeps running (its attached streams end). It is not
// retried.
func (s *Sandbox) Fork(ctx context.Context, count int) ([]*Sandbox, error) {
	path, err := sandboxPath(s.ID, "/fork")
	if err != nil {
		return nil, err
	}
	var res struct {
		Data []*Sandbox `json:"data"`
	}
	body := struct {
		Count int `json:"count"`
	}{count}
	if err := s.client.call(ctx, &request{method: http.MethodPost, path: path, json: body}, &res); err != nil {
		return nil, err
	}
	for _, sb := range res.Data {
		sb.client = s.client
	}
	if res.Data == nil {
		res.Data = []*Sandbox{}
	}
	return res.Data, nil
}

// Resume restores a paused sandbox and refreshes the fields. It is not
// retried.
func (s *Sandbox) Resume(ctx context.Context) error {
	path, err := sandboxPath(s.ID, "/resume")
	if err != nil {
		return err
	}
	fresh := &Sandbox{}
	if err := s.client.call(ctx, &request{method: http.MethodPost, path: path}, fresh); err != nil {
		return err
	}
	s.replace(fresh)
	return nil
}
