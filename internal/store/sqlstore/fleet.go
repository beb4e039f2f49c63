package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/orkestr-eu/orkestr/internal/store"
)

// Bounds on what a heartbeat may store; a node is trusted but its report
// is input all the same.
const (
	maxNodeIDLen      = 128
	maxNodeAddressLen = 2048
	maxNodeNameLen    = 256 // version, template names
	maxNodeTemplates  = 1024
)

const nodeCols = `id, region, address, version, api_version,
	cap_cpus, cap_memory_bytes, cap_disk_bytes, cap_slots,
	alloc_cpus, alloc_memory_bytes, alloc_disk_bytes, alloc_slots,
	running, templates, warm, network_enabled, disk_low, registered_at, heartbeat_at`

// checkName refuses an empty, overlong or control-character-bearing name.
func checkName(what, v string, max int) error {
	switch {
	case v == "":
		return fmt.Errorf("%s is empty", what)
	case len(v) > max:
		return fmt.Errorf("%s is %d bytes long (at most %d)", what, len(v), max)
	case !utf8.ValidString(v):
		return fmt.Errorf("%s is not UTF-8", what)
	case strings.IndexFunc(v, unicode.IsControl) >= 0:
		return fmt.Errorf("%s %q has control characters", what, v)
	}
	return nil
}

func checkCapacity(what string, c store.NodeCapacity) error {
	if math.IsNaN(c.CPUs) || math.IsInf(c.CPUs, 0) || c.CPUs < 0 {
		return fmt.Errorf("%s cpus is %v; it must be a finite number >= 0", what, c.CPUs)
	}
	if c.MemoryBytes < 0 || c.DiskBytes < 0 || c.Slots < 0 {
		return fmt.Errorf("%s has a negative figure (memory %d, disk %d, slots %d)", what, c.MemoryBytes, c.DiskBytes, c.Slots)
	}
	return nil
}

func checkNode(n store.Node) error {
	if err := checkName("node id", n.ID, maxNodeIDLen); err != nil {
		return err
	}
	if err := checkName("node region", n.Region, maxNodeIDLen); err != nil {
		return err
	}
	if len(n.Address) > maxNodeAddressLen || len(n.Version) > maxNodeNameLen {
		return fmt.Errorf("node %q: address or version too long", n.ID)
	}
	if n.APIVersion < 0 || n.Running < 0 {
		return fmt.Errorf("node %q: negative api version (%d) or running count (%d)", n.ID, n.APIVersion, n.Running)
	}
	if err := checkCapacity("capacity", n.Capacity); err != nil {
		return fmt.Errorf("node %q: %w", n.ID, err)
	}
	if err := checkCapacity("allocated", n.Allocated); err != nil {
		return fmt.Errorf("node %q: %w", n.ID, err)
	}
	if len(n.Templates) > maxNodeTemplates || len(n.Warm) > maxNodeTemplates {
		return fmt.Errorf("node %q reports %d templates and %d warm entries (at most %d)", n.ID, len(n.Templates), len(n.Warm), maxNodeTemplates)
	}
	for _, t := range n.Templates {
		if err := checkName("template name", t, maxNodeNameLen); err != nil {
			return fmt.Errorf("node %q: %w", n.ID, err)
		}
	}
	for t, k := range n.Warm {
		if err := checkName("warm template name", t, maxNodeNameLen); err != nil {
			return fmt.Errorf("node %q: %w", n.ID, err)
		}
		if k < 0 {
			return fmt.Errorf("node %q: %d warm sandboxes of %q", n.ID, k, t)
		}
	}
	return nil
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// Heartbeat records n as the node's state and its heartbeat at the
// database's now; the first one registers the node.
func (s *Store) Heartbeat(ctx context.Context, n store.Node) error {
	if err := checkNode(n); err != nil {
		return fmt.Errorf("heartbeat refused: %w", err)
	}
	templates := n.Templates
	if templates == nil {
		templates = []string{}
	}
	warm := n.Warm
	if warm == nil {
		warm = map[string]int{}
	}
	tj, err := toJSON(templates)
	if err != nil {
		return err
	}
	wj, err := toJSON(warm)
	if err != nil {
		return err
	}
	now := s.d.nowMS
	_, err = s.write(ctx, "INSERT INTO nodes ("+nodeCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, `+now+`, `+now+`)
		ON CONFLICT (id) DO UPDATE SET region = excluded.region, address = excluded.address,
			version = excluded.version, api_version = excluded.api_version,
			cap_cpus = excluded.cap_cpus, cap_memory_bytes = excluded.cap_memory_bytes,
			cap_disk_bytes = excluded.cap_disk_bytes, cap_slots = excluded.cap_slots,
			alloc_cpus = excluded.alloc_cpus, alloc_memory_bytes = excluded.alloc_memory_bytes,
			alloc_disk_bytes = excluded.alloc_disk_bytes, alloc_slots = excluded.alloc_slots,
			running = excluded.running, templates = excluded.templates, warm = excluded.warm,
			network_enabled = excluded.network_enabled, disk_low = excluded.disk_low,
			heartbeat_at = excluded.heartbeat_at`,
		n.ID, n.Region, n.Address, n.Version, int64(n.APIVersion),
		n.Capacity.CPUs, n.Capacity.MemoryBytes, n.Capacity.DiskBytes, int64(n.Capacity.Slots),
		n.Allocated.CPUs, n.Allocated.MemoryBytes, n.Allocated.DiskBytes, int64(n.Allocated.Slots),
		int64(n.Running), tj, wj, boolInt(n.NetworkEnabled), boolInt(n.DiskLow))
	return err
}

// ListNodes returns every node, by id, with its heartbeat's age by the
// database's clock.
func (s *Store) ListNodes(ctx context.Context) ([]store.Node, error) {
	rows, err := s.query(ctx, s.db, "SELECT "+nodeCols+", "+s.d.nowMS+" FROM nodes ORDER BY id")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Node
	seenTemplates, seenWarm := map[string][]string{}, map[string]map[string]int{}
	for rows.Next() {
		var n store.Node
		var apiVersion, capSlots, allocSlots, running, netOn, diskLow, registered, heartbeat, now int64
		var templates, warm string
		if err := rows.Scan(&n.ID, &n.Region, &n.Address, &n.Version, &apiVersion,
			&n.Capacity.CPUs, &n.Capacity.MemoryBytes, &n.Capacity.DiskBytes, &capSlots,
			&n.Allocated.CPUs, &n.Allocated.MemoryBytes, &n.Allocated.DiskBytes, &allocSlots,
			&running, &templates, &warm, &netOn, &diskLow, &registered, &heartbeat, &now); err != nil {
			return nil, err
		}
		n.APIVersion, n.Capacity.Slots, n.Allocated.Slots, n.Running = int(apiVersion), int(capSlots), int(allocSlots), int(running)
		n.NetworkEnabled, n.DiskLow = netOn != 0, diskLow != 0
		// Nodes mostly report the same lists: each distinct text is decoded
		// once per call (a fifth of the cost at 1,000 nodes), and every
		// node gets its own copy.
		tl, ok := seenTemplates[templates]
		if !ok {
			if err := json.Unmarshal([]byte(templates), &tl); err != nil {
				return nil, fmt.Errorf("node %q: decoding templates: %w", n.ID, err)
			}
			seenTemplates[templates] = tl
		}
		n.Templates = slices.Clone(tl)
		wm, ok := seenWarm[warm]
		if !ok {
			if err := json.Unmarshal([]byte(warm), &wm); err != nil {
				return nil, fmt.Errorf("node %q: decoding warm: %w", n.ID, err)
			}
			seenWarm[warm] = wm
		}
		n.Warm = maps.Clone(wm)
		n.RegisteredAt, n.HeartbeatAt = fromMS(registered), fromMS(heartbeat)
		// A clock stepped back reads as "just now", not as a negative age.
		n.HeartbeatAge = time.Duration(max(now-heartbeat, 0)) * time.Millisecond
		out = append(out, n)
	}
	return out, rows.Err()
}

// RemoveNode deletes the node's record; store.ErrNotFound if there is none.
func (s *Store) RemoveNode(ctx context.Context, id string) error {
	res, err := s.write(ctx, "DELETE FROM nodes WHERE id = ?", id)
	if err != nil {
		return err
	}
	return affectedOrNotFound(res, "node %q", id)
}

// EndSandbox ends a starting or running sandbox still on runtimeID.
func (s *Store) EndSandbox(ctx context.Context, sandboxID, runtimeID string, status store.Status, reason string) (bool, error) {
	if status != store.StatusError && status != store.StatusTerminated {
		return false, fmt.Errorf("EndSandbox: status %q is not an end (error or terminated)", status)
	}
	if sandboxID == "" || runtimeID == "" {
		return false, errors.New("EndSandbox: sandbox id and runtime id are required")
	}
	now := toMS(s.now())
	res, err := s.write(ctx, `UPDATE sandboxes SET status = ?, error_message = ?, runtime_id = '', expires_at = NULL,
			terminated_at = ?, updated_at = ?, version = version + 1
		WHERE id = ? AND runtime_id = ? AND status IN (?, ?)`,
		string(status), reason, now, now, sandboxID, runtimeID, string(store.StatusStarting), string(store.StatusRunning))
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// LoseNode ends every starting or running sandbox of the node with
// store.StatusError and reason, in one statement, and returns them as
// stored, oldest first.
func (s *Store) LoseNode(ctx context.Context, nodeID, reason string) ([]store.Sandbox, error) {
	if nodeID == "" {
		// Rows not yet placed have node ''; they are not a node's.
		return nil, errors.New("LoseNode: node id is required")
	}
	var out []store.Sandbox
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = s.loseNode(ctx, tx, nodeID, reason)
		return err
	})
	return out, err
}

// LoseNodeIfLapsed is LoseNode if the node's heartbeat is older than
// lapse by the database's clock; the node's row stays locked (PostgreSQL;
// SQLite's transaction holds the write lock) until the sandboxes are
// ended, so a concurrent heartbeat is wholly before or after.
func (s *Store) LoseNodeIfLapsed(ctx context.Context, nodeID string, lapse time.Duration, reason string) ([]store.Sandbox, bool, error) {
	if nodeID == "" {
		return nil, false, errors.New("LoseNodeIfLapsed: node id is required")
	}
	if lapse <= 0 {
		return nil, false, fmt.Errorf("LoseNodeIfLapsed: lapse %v must be positive", lapse)
	}
	var out []store.Sandbox
	lapsed := false
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var age int64
		err := s.queryRow(ctx, tx, "SELECT "+s.d.nowMS+" - heartbeat_at FROM nodes WHERE id = ?"+s.d.lockAccount, nodeID).Scan(&age)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			// No record, no heartbeat.
		case err != nil:
			return err
		case time.Duration(age)*time.Millisecond <= lapse:
			return nil
		}
		lapsed = true
		out, err = s.loseNode(ctx, tx, nodeID, reason)
		return err
	})
	if err != nil {
		return nil, false, err
	}
	return out, lapsed, nil
}

func (s *Store) loseNode(ctx context.Context, tx *sql.Tx, nodeID, reason string) ([]store.Sandbox, error) {
	now := toMS(s.now())
	rows, err := s.query(ctx, tx, `UPDATE sandboxes SET status = ?, error_message = ?, runtime_id = '', expires_at = NULL,
			terminated_at = ?, updated_at = ?, version = version + 1
		WHERE node = ? AND status IN (?, ?)
		RETURNING `+sandboxCols,
		string(store.StatusError), reason, now, now, nodeID, string(store.StatusStarting), string(store.StatusRunning))
	if err != nil {
		return nil, err
	}
	out, err := s.scanSandboxes(rows)
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// SandboxesOnNode returns the node's sandboxes in one of the statuses (any
// status if none is given), oldest first.
func (s *Store) SandboxesOnNode(ctx context.Context, nodeID string, statuses ...store.Status) ([]store.Sandbox, error) {
	where := "node = ?"
	args := []any{nodeID}
	if len(statuses) > 0 {
		marks := make([]string, len(statuses))
		for i, st := range statuses {
			marks[i] = "?"
			args = append(args, string(st))
		}
		where += " AND status IN (" + strings.Join(marks, ", ") + ")"
	}
	rows, err := s.query(ctx, s.db, "SELECT "+sandboxCols+" FROM sandboxes WHERE "+where+" ORDER BY created_at, id", args...)
	if err != nil {
		return nil, err
	}
	return s.scanSandboxes(rows)
}

// TryLease takes, keeps or renews the lease in one upsert: a row that is
// holder's or expired (by the database's clock) is overwritten, any other
// is left and nothing is returned. On PostgreSQL a concurrent insert of
// the same name waits for the first and then sees its row.
func (s *Store) TryLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	if err := checkName("lease name", name, maxNodeNameLen); err != nil {
		return false, err
	}
	if err := checkName("lease holder", holder, maxNodeNameLen); err != nil {
		return false, err
	}
	if ttl < time.Millisecond {
		return false, fmt.Errorf("lease %q: ttl %v is under a millisecond", name, ttl)
	}
	now := s.d.nowMS
	held := false
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var got string
		err := s.queryRow(ctx, tx, `INSERT INTO leases (name, holder, acquired_at, expires_at)
			VALUES (?, ?, `+now+`, `+now+` + ?)
			ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at,
				acquired_at = CASE WHEN leases.holder = excluded.holder THEN leases.acquired_at ELSE excluded.acquired_at END
			WHERE leases.holder = excluded.holder OR leases.expires_at <= excluded.acquired_at
			RETURNING holder`, name, holder, ttl.Milliseconds()).Scan(&got)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		held = got == holder
		return nil
	})
	return held, err
}

// ReleaseLease frees the lease if holder holds it.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	_, err := s.write(ctx, "DELETE FROM leases WHERE name = ? AND holder = ?", name, holder)
	return err
}
