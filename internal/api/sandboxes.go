package api

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/orkestr-eu/orkestr/internal/lifecycle"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/runtime"
	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/template"
)

func newSandboxID() string { return "sbx_" + ulid.MustNew(ulid.Now(), rand.Reader).String() }

// lock serialises this replica's lifecycle changes of one sandbox.
func (s *Server) lock(id string) func() { return s.life.Lock(id) }

// load returns the caller's sandbox or a 404.
func (s *Server) load(r *http.Request) (store.Sandbox, error) {
	id := r.PathValue("id")
	if !checkSandboxID(id) {
		return store.Sandbox{}, notFound()
	}
	sb, err := s.store.GetSandbox(r.Context(), caller(r).account.ID, id)
	if errors.Is(err, store.ErrNotFound) {
		return sb, notFound()
	}
	return sb, err
}

// loadLocked returns the caller's sandbox with its lifecycle lock held,
// read again after taking the lock so no change in between is missed.
func (s *Server) loadLocked(r *http.Request) (store.Sandbox, func(), error) {
	row, err := s.load(r)
	if err != nil {
		return row, nil, err
	}
	unlock := s.lock(row.ID)
	if row, err = s.load(r); err != nil {
		unlock()
		return row, nil, err
	}
	return row, unlock, nil
}

type createRequest struct {
	Template       string            `json:"template"`
	Size           *string           `json:"size"`
	Network        *string           `json:"network"`
	TimeoutSeconds *int              `json:"timeout_seconds"`
	Env            map[string]string `json:"env"`
	Metadata       map[string]string `json:"metadata"`
	Region         *string           `json:"region"`
}

func (s *Server) createSandbox(w http.ResponseWriter, r *http.Request) error {
	p := caller(r)
	var req createRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if req.Template == "" {
		return invalid("template", "Field template is required (see GET /v1/templates).")
	}
	if template.ValidName(req.Template) != nil {
		return apiErr(http.StatusBadRequest, "unknown_template", "Template %q does not exist (see GET /v1/templates).", truncate(req.Template, 64)).with("field", "template")
	}
	if _, ok := s.cfg.Template(req.Template); !ok {
		return apiErr(http.StatusBadRequest, "unknown_template", "Template %q does not exist (see GET /v1/templates).", req.Template).with("field", "template")
	}
	cat, err := s.nodes.Catalog(r.Context())
	if err != nil {
		return err
	}
	if refusesCreate(cat, req) {
		// A fleet's catalog may be seconds old: a refusal is made on the
		// nodes as they are now (one built the template or registered the
		// region since).
		if fr, ok := s.nodes.(freshCataloger); ok {
			if cat, err = fr.FreshCatalog(r.Context()); err != nil {
				return err
			}
		}
	}
	if !cat.HasTemplate(req.Template) && cat.Live() {
		// (With no live node at all, placement says so instead.)
		return notBuilt(req.Template)
	}
	size := "small"
	if req.Size != nil {
		size = *req.Size
	}
	sz, ok := s.cfg.Sizes[size]
	if !ok {
		return invalid("size", "Size %q does not exist; use one of %v.", truncate(size, 32), s.cfg.SizeNames())
	}
	if !contains(p.plan.AllowedSizes, size) {
		return apiErr(http.StatusPaymentRequired, "size_not_allowed", "Size %s is not included in the %s plan.", size, p.account.Plan).
			with("size", size).with("allowed_sizes", p.plan.AllowedSizes)
	}
	if err := s.checkUsage(r.Context(), p); err != nil {
		return err
	}
	network := "off"
	if req.Network != nil {
		network = *req.Network
	}
	switch network {
	case "off":
	case "restricted", "open":
		if !cat.Network {
			return invalid("network", "Network mode %q is not enabled on this server (the operator sets network.enabled); use \"off\".", network)
		}
	default:
		return invalid("network", "Network must be one of \"off\", \"restricted\", \"open\".")
	}
	timeout := 600
	if req.TimeoutSeconds != nil {
		timeout = *req.TimeoutSeconds
	}
	if timeout < 1 || timeout > s.cfg.MaxTimeoutSeconds {
		return invalid("timeout_seconds", "timeout_seconds must be between 1 and %d.", s.cfg.MaxTimeoutSeconds)
	}
	region := s.cfg.Region
	if req.Region != nil {
		region = *req.Region
		if !slices.Contains(cat.RegionNames(), region) {
			return apiErr(http.StatusBadRequest, "unknown_region", "Region %q does not exist here; use one of %v (GET /v1/regions), or omit region for %q.", truncate(region, 32), cat.RegionNames(), s.cfg.Region).with("field", "region")
		}
	}
	if err := checkEnv("env", req.Env); err != nil {
		return err
	}
	if err := checkMetadata(req.Metadata); err != nil {
		return err
	}
	envKeys := make([]string, 0, len(req.Env))
	for k := range req.Env {
		envKeys = append(envKeys, k)
	}
	sort.Strings(envKeys)

	now := s.now().UTC()
	row := store.Sandbox{
		ID: newSandboxID(), AccountID: p.account.ID, Template: req.Template,
		Size: size, CPU: sz.CPU, MemoryMB: sz.MemoryMB, Network: network, Region: region,
		TimeoutSeconds: timeout, EnvKeys: envKeys, Metadata: req.Metadata,
		CreatedAt: now, UpdatedAt: now,
	}
	row, err = s.life.Create(r.Context(), row, req.Env, p.plan.MaxConcurrent,
		lifecycle.Placement{Region: region, Template: req.Template, Size: size, Networked: network != "off"})
	if err != nil {
		return s.createFailed(r, p, row, err)
	}
	writeJSON(w, http.StatusCreated, toJSON(row))
	return nil
}

// freshCataloger is a lifecycle.Nodes whose Catalog may serve an older
// view of the nodes, and that can read them as they are now.
type freshCataloger interface {
	FreshCatalog(ctx context.Context) (lifecycle.Catalog, error)
}

// refusesCreate reports whether a catalog would refuse req: its template
// not built on any live node, its network mode nowhere enabled, or its
// region unknown.
func refusesCreate(cat lifecycle.Catalog, req createRequest) bool {
	switch {
	case !cat.HasTemplate(req.Template) && cat.Live():
		return true
	case req.Network != nil && *req.Network != "off" && !cat.Network:
		return true
	case req.Region != nil && !slices.Contains(cat.RegionNames(), *req.Region):
		return true
	}
	return false
}

// createFailed answers a create that did not start its sandbox.
func (s *Server) createFailed(r *http.Request, p *principal, row store.Sandbox, err error) error {
	switch {
	case errors.Is(err, store.ErrLimit):
		return apiErr(http.StatusPaymentRequired, "concurrency_limit", "Your %s plan allows %d sandboxes at once; terminate or pause one first.", p.account.Plan, p.plan.MaxConcurrent).
			with("max_concurrent", p.plan.MaxConcurrent)
	case errors.Is(err, lifecycle.ErrStartFailed):
	default:
		return s.placeFailed(r, lifecycle.Placement{Region: row.Region, Template: row.Template, Size: row.Size}, err)
	}
	switch {
	case errors.Is(err, nodeapi.ErrTemplateNotBuilt):
		return notBuilt(row.Template)
	case errors.Is(err, nodeapi.ErrDiskLow):
		return s.diskLow(r, err)
	case errors.Is(err, nodeapi.ErrUnknownSize):
		return invalid("size", "Size %q is not available on this node.", row.Size)
	case errors.Is(err, runtime.ErrNoNetwork):
		s.log.Error("sandbox network setup failed", "request_id", requestID(r), "sandbox", row.ID, "network", row.Network, "err", err)
		return apiErr(http.StatusServiceUnavailable, "no_capacity", "The sandbox's network (%s) could not be set up right now; retry shortly, or use network \"off\".", row.Network)
	}
	s.log.Error("sandbox start failed", "request_id", requestID(r), "sandbox", row.ID, "node", row.Node, "err", err)
	return apiErr(http.StatusServiceUnavailable, "no_capacity", "No sandbox could be started right now; retry shortly.")
}

// runningRuntime returns the caller's running sandbox named in the path:
// from this replica's cache of running sandboxes when it is there, else
// from the store, with the same errors either way (404 for another
// account's id).
func (s *Server) runningRuntime(r *http.Request) (runtime.Sandbox, error) {
	if rt, ok := s.life.Cached(r.PathValue("id"), caller(r).account.ID); ok {
		return rt, nil
	}
	row, err := s.load(r)
	if err != nil {
		return nil, err
	}
	rt, err := s.life.Runtime(r.Context(), row)
	if err != nil {
		return nil, s.lifeFailed(r, row, err)
	}
	return rt, nil
}

// lifeFailed answers what the lifecycle refused for a reason of the
// sandbox's state or its node's.
func (s *Server) lifeFailed(r *http.Request, row store.Sandbox, err error) error {
	var nr *lifecycle.NotReadyError
	switch {
	case errors.As(err, &nr):
		return notReady(nr.Status)
	case errors.Is(err, nodeapi.ErrUnreachable):
		return s.nodeDown(r, row, err)
	}
	return err
}

func (s *Server) getSandbox(w http.ResponseWriter, r *http.Request) error {
	row, err := s.load(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toJSON(row))
	return nil
}

func (s *Server) listSandboxes(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if err := noEmptyQuery(q, "status", "limit", "cursor"); err != nil {
		return err
	}
	f := store.ListFilter{Limit: 50, Cursor: q.Get("cursor")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 200 {
			return invalid("limit", "limit must be an integer from 1 to 200.")
		}
		f.Limit = n
	}
	if v := q.Get("status"); v != "" {
		switch store.Status(v) {
		case store.StatusStarting, store.StatusRunning, store.StatusPaused, store.StatusTerminated, store.StatusError:
			f.Status = store.Status(v)
		default:
			return invalid("status", "status must be one of starting, running, paused, terminated, error.")
		}
	}
	page, next, err := s.store.ListSandboxes(r.Context(), caller(r).account.ID, f)
	if errors.Is(err, store.ErrBadCursor) {
		return invalid("cursor", "The cursor is not one this API returned.")
	}
	if err != nil {
		return err
	}
	data := make([]sandboxJSON, len(page))
	for i, sb := range page {
		data[i] = toJSON(sb)
	}
	var nc *string
	if next != "" {
		nc = &next
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": data, "next_cursor": nc})
	return nil
}

type patchRequest struct {
	TimeoutSeconds *int               `json:"timeout_seconds"`
	Metadata       *map[string]string `json:"metadata"`
}

func (s *Server) patchSandbox(w http.ResponseWriter, r *http.Request) error {
	var req patchRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if req.TimeoutSeconds != nil && (*req.TimeoutSeconds < 1 || *req.TimeoutSeconds > s.cfg.MaxTimeoutSeconds) {
		return invalid("timeout_seconds", "timeout_seconds must be between 1 and %d.", s.cfg.MaxTimeoutSeconds)
	}
	if req.Metadata != nil {
		if err := checkMetadata(*req.Metadata); err != nil {
			return err
		}
	}
	row, unlock, err := s.loadLocked(r)
	if err != nil {
		return err
	}
	defer unlock()
	if row.Status != store.StatusRunning && row.Status != store.StatusPaused {
		return notReady(string(row.Status))
	}
	if t := req.TimeoutSeconds; t != nil {
		// The new timeout counts from now, in running time.
		row.TimeoutSeconds = *t
		if row.Status == store.StatusRunning {
			exp := s.now().UTC().Add(time.Duration(*t) * time.Second)
			row.ExpiresAt = &exp
		} else {
			row.RemainingMS = int64(*t) * 1000
		}
	}
	if req.Metadata != nil {
		row.Metadata = *req.Metadata
	}
	row, err = s.store.UpdateSandbox(r.Context(), row, 0)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toJSON(row))
	return nil
}

func (s *Server) deleteSandbox(w http.ResponseWriter, r *http.Request) error {
	row, err := s.load(r)
	if err != nil {
		return err
	}
	row, err = s.life.Terminate(r.Context(), row, reasonTerminated)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toJSON(row))
	return nil
}

func (s *Server) pauseSandbox(w http.ResponseWriter, r *http.Request) error {
	p := caller(r)
	row, unlock, err := s.loadLocked(r)
	if err != nil {
		return err
	}
	defer unlock()
	row, err = s.life.Pause(r.Context(), row, p.plan.SnapshotCap)
	if errors.Is(err, nodeapi.ErrSnapshotStoreUnavailable) {
		s.log.Error("pause: the snapshot store is unavailable", "request_id", requestID(r), "sandbox", row.ID, "err", err)
		return storeUnavailable("paused", "still running")
	}
	if errors.Is(err, store.ErrLimit) {
		return apiErr(http.StatusPaymentRequired, "snapshot_cap_reached", "Your %s plan keeps at most %d paused sandboxes; resume or terminate one first.", p.account.Plan, p.plan.SnapshotCap).
			with("cap", p.plan.SnapshotCap)
	}
	if err != nil {
		return s.lifeFailed(r, row, err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": row.ID, "status": "paused", "snapshot_bytes": row.SnapshotBytes})
	return nil
}

func (s *Server) resumeSandbox(w http.ResponseWriter, r *http.Request) error {
	p := caller(r)
	row, unlock, err := s.loadLocked(r)
	if err != nil {
		return err
	}
	defer unlock()
	switch row.Status {
	case store.StatusRunning:
		writeJSON(w, http.StatusOK, toJSON(row)) // resuming a running sandbox is a no-op
		return nil
	case store.StatusPaused:
	default:
		return notReady(string(row.Status))
	}
	if err := s.checkUsage(r.Context(), p); err != nil {
		return err
	}
	row, err = s.life.Resume(r.Context(), row, p.plan.MaxConcurrent)
	switch {
	case err == nil:
	case errors.Is(err, store.ErrLimit):
		return apiErr(http.StatusPaymentRequired, "concurrency_limit", "Your %s plan allows %d sandboxes at once; terminate or pause one first.", p.account.Plan, p.plan.MaxConcurrent).
			with("max_concurrent", p.plan.MaxConcurrent)
	case errors.Is(err, nodeapi.ErrSnapshotStoreUnavailable):
		s.log.Error("resume: the snapshot store is unavailable", "request_id", requestID(r), "sandbox", row.ID, "err", err)
		return storeUnavailable("resumed", "still paused")
	case errors.Is(err, nodeapi.ErrSnapshotCorrupt):
		s.log.Error("resume: the stored snapshot failed verification", "request_id", requestID(r), "sandbox", row.ID, "err", err)
		return apiErr(http.StatusUnprocessableEntity, "snapshot_corrupt", "The sandbox's stored snapshot failed its integrity check and was not restored; the sandbox is still paused. Its snapshot cannot be used: terminate it, or ask the operator to check the snapshot store.")
	case errors.Is(err, lifecycle.ErrSnapshotLost):
		s.log.Error("a paused sandbox's snapshot is gone", "request_id", requestID(r), "sandbox", row.ID, "node", row.Node, "err", err)
		return notReady("error")
	case errors.Is(err, nodeapi.ErrTemplateNotBuilt):
		return notBuilt(row.Template)
	case errors.Is(err, nodeapi.ErrDiskLow):
		return s.diskLow(r, err)
	case errors.Is(err, lifecycle.ErrStartFailed):
		s.log.Error("restore failed", "request_id", requestID(r), "sandbox", row.ID, "err", err)
		return apiErr(http.StatusServiceUnavailable, "no_capacity", "The sandbox could not be resumed right now; it is still paused, retry shortly.")
	default:
		return s.lifeFailed(r, row, err)
	}
	writeJSON(w, http.StatusOK, toJSON(row))
	return nil
}

// storeUnavailable answers a pause or resume the snapshot store could not
// serve: retrying later helps; the sandbox is as it was.
func storeUnavailable(verb, state string) error {
	return apiErr(http.StatusServiceUnavailable, "snapshot_store_unavailable", "The snapshot store could not be reached, so the sandbox was not %s; it is %s. Retry shortly.", verb, state)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// notBuilt is the answer to a create from a catalog template that this
// server has not built (yet): retrying will not help until an operator
// builds it.
func notBuilt(name string) error {
	return apiErr(http.StatusServiceUnavailable, "unavailable", "Template %s is in the catalog but not built on this server (see \"built\" in GET /v1/templates); the operator can build it with `orkestrd admin template build %s`.", name, name).with("template", name)
}

// placeFailed answers a create no node could be found for.
func (s *Server) placeFailed(r *http.Request, p lifecycle.Placement, err error) error {
	switch {
	case errors.Is(err, node.ErrDiskReserve), errors.Is(err, nodeapi.ErrDiskLow):
		return s.diskLow(r, err)
	case errors.Is(err, lifecycle.ErrUnknownRegion):
		return apiErr(http.StatusBadRequest, "unknown_region", "Region %q does not exist here (GET /v1/regions lists them); omit region for %q.", truncate(p.Region, 32), s.cfg.Region).with("field", "region")
	case errors.Is(err, lifecycle.ErrRegionUnavailable):
		return apiErr(http.StatusServiceUnavailable, "region_unavailable", "No node of region %q is available right now; retry shortly or use another region (GET /v1/regions).", p.Region).with("region", p.Region)
	case errors.Is(err, lifecycle.ErrNoCapacity):
		s.log.Warn("no node can take a sandbox", "request_id", requestID(r), "region", p.Region, "template", p.Template, "size", p.Size, "err", err)
		return apiErr(http.StatusServiceUnavailable, "no_capacity", "No node of region %q has room for a %s %s sandbox right now; retry shortly.", p.Region, p.Size, p.Template).with("region", p.Region)
	}
	return err
}

// nodeDown answers a request whose sandbox's node cannot be reached.
func (s *Server) nodeDown(r *http.Request, row store.Sandbox, err error) error {
	s.log.Warn("a sandbox's node is unreachable", "request_id", requestID(r), "sandbox", row.ID, "node", row.Node, "err", err)
	return apiErr(http.StatusServiceUnavailable, "node_unavailable", "The node holding this sandbox is not answering right now; retry shortly.")
}

// diskLow refuses a new running sandbox while the host's free disk is
// under the operator's reserve. The caller learns only that the server is
// short of disk; the operator sees which filesystem in the log and in
// /metrics.
func (s *Server) diskLow(r *http.Request, err error) error {
	s.om.diskRefusals.Inc()
	s.log.Warn("refusing a sandbox: host disk under the reserve", "request_id", requestID(r), "path", r.URL.Path, "err", err)
	return apiErr(http.StatusServiceUnavailable, "host_disk_low", "This server is short of disk space and starts no sandboxes right now; retry later or elsewhere (the operator has been told).")
}
