package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/orkestr-eu/orkestr/internal/store"
)

// Lease keeps a named lease in the store while its holder runs: the
// replica holding it runs the loops it guards. A replica that dies stops
// renewing; another takes the lease once it expires.
type Lease struct {
	store  store.Store
	name   string
	holder string
	ttl    time.Duration
	log    *slog.Logger
	held   atomic.Bool
}

// NewLease names this process as a holder (host, pid and a random tag, so
// a restarted replica is a new holder).
func NewLease(st store.Store, name string, ttl time.Duration, log *slog.Logger) *Lease {
	host, _ := os.Hostname()
	tag := make([]byte, 4)
	_, _ = rand.Read(tag)
	return &Lease{store: st, name: name, holder: host + "/" + strconv.Itoa(os.Getpid()) + "/" + hex.EncodeToString(tag), ttl: ttl, log: log}
}

// Held says whether this replica holds the lease now.
func (l *Lease) Held() bool { return l.held.Load() }

// Holder is this replica's holder name.
func (l *Lease) Holder() string { return l.holder }

// Run takes and renews the lease every third of its ttl until ctx ends,
// then gives it up.
func (l *Lease) Run(ctx context.Context) {
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	for {
		held, err := l.store.TryLease(ctx, l.name, l.holder, l.ttl)
		if err != nil {
			held = false
			if ctx.Err() == nil {
				l.log.Warn("renewing a lease failed; this replica stops its singleton loops until it holds it again", "lease", l.name, "err", err)
			}
		}
		if was := l.held.Swap(held); was != held {
			l.log.Info("lease changed hands", "lease", l.name, "holder", l.holder, "held", held)
		}
		select {
		case <-ctx.Done():
			l.held.Store(false)
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = l.store.ReleaseLease(rctx, l.name, l.holder)
			cancel()
			return
		case <-t.C:
		}
	}
}

// WatchNodes ends the running sandboxes of every node whose heartbeat is
// older than timeout (error, node_lost), once a second while lease is
// held. Paused sandboxes keep their snapshots.
func WatchNodes(ctx context.Context, st store.Store, lease *Lease, timeout time.Duration, log *slog.Logger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !lease.Held() {
			continue
		}
		nodes, err := st.ListNodes(ctx)
		if err != nil {
			continue
		}
		for _, n := range nodes {
			if n.HeartbeatAge <= timeout {
				continue
			}
			// Decided again under the node's row lock by the store's clock:
			// a heartbeat since the list was read wins.
			lost, _, err := st.LoseNodeIfLapsed(ctx, n.ID, timeout, store.EndNodeLost)
			if err != nil {
				log.Error("recording a lost node's sandboxes", "node", n.ID, "err", err)
				continue
			}
			if len(lost) > 0 {
				ids := make([]string, len(lost))
				for i, sb := range lost {
					ids[i] = sb.ID
				}
				log.Warn("node lost: its running sandboxes ended", "node", n.ID, "region", n.Region, "silent_for", n.HeartbeatAge.Round(time.Second).String(), "sandboxes", ids)
			}
		}
	}
}
