package api

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"sync"
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

// lock serialises lifecycle changes (create, pause, resume, terminate) of
// one sandbox.
func (s *Server) lock(id string) func() {
	m, _ := s.locks.LoadOrStore(id, &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

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
	if !cat.hasTemplate(req.Template) && cat.live() {
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
		if !slices.Contains(cat.regionNames(), region) {
			return apiErr(http.StatusBadRequest, "unknown_region", "Region %q does not exist here; use one of %v (GET /v1/regions), or omit region for %q.", truncate(region, 32), cat.regionNames(), s.cfg.Region).with("field", "region")
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

	pl := Placement{Region: region, Template: req.Template, Size: size, Networked: network != "off"}
	nodeID, nd, err := s.place(r, pl)
	if err != nil {
		return err
	}
	now := s.now().UTC()
	row := store.Sandbox{
		ID: newSandboxID(), AccountID: p.account.ID, Status: store.StatusStarting, Template: req.Template,
		Size: size, CPU: sz.CPU, MemoryMB: sz.MemoryMB, Network: network, Region: region,
		TimeoutSeconds: timeout, EnvKeys: envKeys, Metadata: req.Metadata, Node: nodeID,
		CreatedAt: now, UpdatedAt: now,
	}
	if err := s.store.CreateSandbox(r.Context(), row, p.plan.MaxConcurrent); err != nil {
		if errors.Is(err, store.ErrLimit) {
			return apiErr(http.StatusPaymentRequired, "concurrency_limit", "Your %s plan allows %d sandboxes at once; terminate or pause one first.", p.account.Plan, p.plan.MaxConcurrent).
				with("max_concurrent", p.plan.MaxConcurrent)
		}
		return err
	}
	unlock := s.lock(row.ID)
	defer unlock()
	// The create finishes even if the client goes away, so the sandbox is
	// either fully there or marked failed, never half made.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 2*time.Minute)
	defer cancel()
	var rt runtime.Sandbox
	for attempt := 1; ; attempt++ {
		rt, err = nd.Create(ctx, nodeapi.CreateRequest{SandboxID: row.ID, AccountID: row.AccountID, Template: row.Template, Size: row.Size,
			Claim: runtime.Claim{Env: req.Env, Hostname: "sandbox", Network: row.Network}})
		if err == nil || attempt == placeAttempts || !(errors.Is(err, nodeapi.ErrNoCapacity) || errors.Is(err, nodeapi.ErrUnreachable) || errors.Is(err, nodeapi.ErrDiskLow)) {
			break
		}
		// The node filled up (or went away) since its last heartbeat:
		// another one may take it.
		pl.Exclude = append(pl.Exclude, row.Node)
		next, nnd, perr := s.nodes.Place(ctx, pl)
		if perr != nil {
			break
		}
		s.log.Info("a node could not take a sandbox; placing it again", "request_id", requestID(r), "sandbox", row.ID, "node", row.Node, "next", next, "err", err)
		row.Node, nd = next, nnd
	}
	if err != nil {
		row.Status = store.StatusError
		row.ErrorMessage = "start failed"
		if _, uerr := s.store.UpdateSandbox(ctx, row, 0); uerr != nil {
			s.log.Error("recording a failed create", "sandbox", row.ID, "err", uerr)
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
		s.log.Error("sandbox start failed", "request_id", requestID(r), "sandbox", row.ID, "err", err)
		return apiErr(http.StatusServiceUnavailable, "no_capacity", "No sandbox could be started right now; retry shortly.")
	}
	started := s.now().UTC()
	exp := started.Add(time.Duration(timeout) * time.Second)
	row.Status, row.RuntimeID, row.ExpiresAt = store.StatusRunning, rt.ID(), &exp
	made := row
	row, err = s.store.UpdateSandbox(ctx, row, 0)
	if err != nil {
		s.destroyRuntime(made.Node, rt.ID())
		return err
	}
	s.track(row, rt)
	writeJSON(w, http.StatusCreated, toJSON(row))
	return nil
}

// placeAttempts bounds the nodes a create tries when the chosen one turns
// out to be full or gone.
const placeAttempts = 3

// liveSandbox is an entry of Server.running.
type liveSandbox struct {
	account string
	rt      runtime.Sandbox
}

// runningRuntime returns the caller's running sandbox named in the path:
// from the cache of running sandboxes when it is there, else from the
// store, with the same errors either way (404 for another account's id).
func (s *Server) runningRuntime(r *http.Request) (runtime.Sandbox, error) {
	if v, ok := s.running.Load(r.PathValue("id")); ok {
		if live := v.(liveSandbox); live.account == caller(r).account.ID && live.rt.Err() == nil {
			return live.rt, nil
		}
	}
	row, err := s.load(r)
	if err != nil {
		return nil, err
	}
	if row.Status != store.StatusRunning {
		return nil, notReady(string(row.Status))
	}
	rt, err := s.runtimeOf(r.Context(), row)
	if errors.Is(err, nodeapi.ErrUnreachable) {
		return nil, s.nodeDown(r, row, err)
	}
	if err != nil {
		return nil, notReady("error")
	}
	s.running.Store(row.ID, liveSandbox{account: row.AccountID, rt: rt})
	return rt, nil
}

// runtimeOf is a running sandbox's runtime on its node.
func (s *Server) runtimeOf(ctx context.Context, row store.Sandbox) (runtime.Sandbox, error) {
	nd, err := s.nodes.Node(ctx, row.Node)
	if err != nil {
		return nil, err
	}
	return nd.Sandbox(ctx, row.RuntimeID)
}

// track caches a running sandbox's runtime for the hot paths (its node
// meters it and records an unplanned stop).
func (s *Server) track(row store.Sandbox, rt runtime.Sandbox) {
	s.running.Store(row.ID, liveSandbox{account: row.AccountID, rt: rt})
}

// finish moves a sandbox to a final status (terminated or error).
func (s *Server) finish(ctx context.Context, id, account string, status store.Status, reason string) {
	s.running.Delete(id)
	lifecycle.Finish(ctx, s.store, s.now, s.log, id, account, status, reason)
}

// destroyRuntime stops a sandbox's runtime on its node.
func (s *Server) destroyRuntime(nodeID, runtimeID string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nd, err := s.nodes.Node(ctx, nodeID)
	if err == nil {
		err = nd.Destroy(ctx, runtimeID)
	}
	if err != nil {
		s.log.Warn("destroying a sandbox's runtime failed; its node cleans it up at its next start", "node", nodeID, "runtime", runtimeID, "err", err)
	}
}

// removeSnapshot deletes a snapshot on the node that holds it.
func (s *Server) removeSnapshot(nodeID, snapshot string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nd, err := s.nodes.Node(ctx, nodeID)
	if err == nil {
		err = nd.RemoveSnapshot(ctx, snapshot)
	}
	if err != nil {
		s.log.Warn("removing a snapshot failed; its node removes it at its next start", "node", nodeID, "snapshot", snapshot, "err", err)
	}
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
	row, err = s.terminate(r.Context(), row, reasonTerminated)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toJSON(row))
	return nil
}

// terminate records the sandbox as terminated first — the end is final
// even if the runtime half fails — and then releases its runtime and
// snapshot. Terminating a terminated sandbox returns it unchanged.
func (s *Server) terminate(ctx context.Context, row store.Sandbox, reason string) (store.Sandbox, error) {
	unlock := s.lock(row.ID)
	defer unlock()
	s.running.Delete(row.ID)
	ctx = context.WithoutCancel(ctx)
	for attempt := 0; ; attempt++ {
		cur, err := s.store.GetSandbox(ctx, row.AccountID, row.ID)
		if err != nil {
			return cur, err
		}
		if cur.Status == store.StatusTerminated {
			return cur, nil
		}
		rtID, snap := cur.RuntimeID, cur.SnapshotDir
		now := s.now().UTC()
		cur.Status, cur.TerminatedAt, cur.ExpiresAt, cur.RuntimeID, cur.SnapshotDir = store.StatusTerminated, &now, nil, "", ""
		if cur.ErrorMessage == "" {
			cur.ErrorMessage = reason
		}
		updated, err := s.store.UpdateSandbox(ctx, cur, 0)
		if errors.Is(err, store.ErrStale) && attempt < 5 {
			continue
		}
		if err != nil {
			return cur, err
		}
		if rtID != "" {
			s.destroyRuntime(cur.Node, rtID)
		}
		if snap != "" {
			s.removeSnapshot(cur.Node, snap)
		}
		return updated, nil
	}
}

func (s *Server) pauseSandbox(w http.ResponseWriter, r *http.Request) error {
	p := caller(r)
	row, unlock, err := s.loadLocked(r)
	if err != nil {
		return err
	}
	defer unlock()
	if row.Status != store.StatusRunning {
		return notReady(string(row.Status))
	}
	nd, err := s.nodes.Node(r.Context(), row.Node)
	if err != nil {
		return s.nodeDown(r, row, err)
	}
	rt, err := nd.Sandbox(r.Context(), row.RuntimeID)
	if err != nil {
		return notReady("error")
	}
	ctx := context.WithoutCancel(r.Context())
	now := s.now().UTC()
	running := row
	remaining := int64(0)
	if row.ExpiresAt != nil {
		remaining = max(row.ExpiresAt.Sub(now).Milliseconds(), 0)
	}
	// Reserve the snapshot slot before the (irreversible) checkpoint, and
	// record where the snapshot goes (the runtime id stays until the
	// checkpoint is recorded): a crash after the checkpoint stopped the
	// sandbox but before the last update finds a paused sandbox with its
	// snapshot at the next start, not a lost one whose snapshot is swept.
	s.running.Delete(row.ID)
	snapID := row.ID + "-" + ulid.MustNew(ulid.Now(), rand.Reader).String()
	row.Status, row.PausedAt, row.ExpiresAt, row.RemainingMS, row.SnapshotDir = store.StatusPaused, &now, nil, remaining, snapID
	row, err = s.store.UpdateSandbox(ctx, row, p.plan.SnapshotCap)
	if err != nil {
		s.running.Store(running.ID, liveSandbox{account: running.AccountID, rt: rt})
	}
	if errors.Is(err, store.ErrLimit) {
		return apiErr(http.StatusPaymentRequired, "snapshot_cap_reached", "Your %s plan keeps at most %d paused sandboxes; resume or terminate one first.", p.account.Plan, p.plan.SnapshotCap).
			with("cap", p.plan.SnapshotCap)
	}
	if err != nil {
		return err
	}
	snap, err := nd.Checkpoint(ctx, row.RuntimeID, snapID)
	if err != nil {
		if _, aerr := nd.Sandbox(ctx, row.RuntimeID); aerr != nil {
			s.finish(ctx, row.ID, row.AccountID, store.StatusError, "the sandbox stopped while it was being paused")
			return notReady("error")
		}
		// Still running: undo the reservation.
		running.Version = row.Version
		if row, uerr := s.store.UpdateSandbox(ctx, running, 0); uerr == nil {
			s.track(row, rt)
		}
		return err
	}
	row.RuntimeID, row.SnapshotDir, row.SnapshotBytes = "", snap.ID, snap.Bytes
	if row, err = s.store.UpdateSandbox(ctx, row, 0); err != nil {
		return err
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
	nd, err := s.nodes.Node(r.Context(), row.Node)
	if err != nil {
		return s.nodeDown(r, row, err)
	}
	// Take a concurrency slot first, in one transaction with the count
	// (status starting, the snapshot kept): concurrent resumes and creates
	// cannot both take the last one, and a crash during the restore leaves
	// a sandbox that the next start puts back to paused.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 2*time.Minute)
	defer cancel()
	paused := row
	row.Status = store.StatusStarting
	row, err = s.store.UpdateSandbox(ctx, row, p.plan.MaxConcurrent)
	if errors.Is(err, store.ErrLimit) {
		return apiErr(http.StatusPaymentRequired, "concurrency_limit", "Your %s plan allows %d sandboxes at once; terminate or pause one first.", p.account.Plan, p.plan.MaxConcurrent).
			with("max_concurrent", p.plan.MaxConcurrent)
	}
	if err != nil {
		return err
	}
	rt, err := nd.Restore(ctx, nodeapi.RestoreRequest{SandboxID: row.ID, AccountID: row.AccountID, Snapshot: row.SnapshotDir, Template: row.Template, Size: row.Size})
	if err != nil {
		paused.Version = row.Version
		if errors.Is(err, nodeapi.ErrSnapshotNotFound) {
			s.log.Error("a paused sandbox's snapshot is gone", "request_id", requestID(r), "sandbox", row.ID, "node", row.Node, "err", err)
			s.finish(ctx, row.ID, row.AccountID, store.StatusError, "the sandbox's snapshot was lost")
			return notReady("error")
		}
		if _, uerr := s.store.UpdateSandbox(ctx, paused, 0); uerr != nil {
			s.log.Error("putting a sandbox back to paused after a failed restore", "sandbox", row.ID, "err", uerr)
		}
		switch {
		case errors.Is(err, nodeapi.ErrTemplateNotBuilt):
			return notBuilt(row.Template)
		case errors.Is(err, nodeapi.ErrDiskLow):
			return s.diskLow(r, err)
		}
		s.log.Error("restore failed", "request_id", requestID(r), "sandbox", row.ID, "err", err)
		return apiErr(http.StatusServiceUnavailable, "no_capacity", "The sandbox could not be resumed right now; it is still paused, retry shortly.")
	}
	snap := row.SnapshotDir
	exp := s.now().UTC().Add(time.Duration(row.RemainingMS) * time.Millisecond)
	row.Status, row.RuntimeID, row.ExpiresAt, row.PausedAt, row.SnapshotDir, row.RemainingMS = store.StatusRunning, rt.ID(), &exp, nil, "", 0
	restored := row
	if row, err = s.store.UpdateSandbox(ctx, row, 0); err != nil {
		s.destroyRuntime(restored.Node, rt.ID())
		return err
	}
	s.removeSnapshot(row.Node, snap)
	s.track(row, rt)
	writeJSON(w, http.StatusOK, toJSON(row))
	return nil
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

// place picks the node for a new running sandbox, answering why none can
// take it.
func (s *Server) place(r *http.Request, p Placement) (string, nodeapi.Node, error) {
	id, nd, err := s.nodes.Place(r.Context(), p)
	switch {
	case err == nil:
		return id, nd, nil
	case errors.Is(err, node.ErrDiskReserve), errors.Is(err, nodeapi.ErrDiskLow):
		return "", nil, s.diskLow(r, err)
	case errors.Is(err, ErrUnknownRegion):
		return "", nil, apiErr(http.StatusBadRequest, "unknown_region", "Region %q does not exist here (GET /v1/regions lists them); omit region for %q.", truncate(p.Region, 32), s.cfg.Region).with("field", "region")
	case errors.Is(err, ErrRegionUnavailable):
		return "", nil, apiErr(http.StatusServiceUnavailable, "region_unavailable", "No node of region %q is available right now; retry shortly or use another region (GET /v1/regions).", p.Region).with("region", p.Region)
	case errors.Is(err, ErrNoCapacity):
		s.log.Warn("no node can take a sandbox", "request_id", requestID(r), "region", p.Region, "template", p.Template, "size", p.Size, "err", err)
		return "", nil, apiErr(http.StatusServiceUnavailable, "no_capacity", "No node of region %q has room for a %s %s sandbox right now; retry shortly.", p.Region, p.Size, p.Template).with("region", p.Region)
	}
	return "", nil, err
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
