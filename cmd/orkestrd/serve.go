package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/orkestr-eu/orkestr/internal/api"
	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/console"
	"github.com/orkestr-eu/orkestr/internal/e2b"
	"github.com/orkestr-eu/orkestr/internal/fleet"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/pool"
	"github.com/orkestr-eu/orkestr/internal/snapshot"
	"github.com/orkestr-eu/orkestr/internal/store"
	"github.com/orkestr-eu/orkestr/internal/store/sqlstore"
	"github.com/orkestr-eu/orkestr/internal/tlsutil"
)

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	var nf nodeFlags
	nf.register(fs, -1)
	listen := fs.String("listen", envOr("ORKESTR_LISTEN", "127.0.0.1:7777"), "address to listen on (env ORKESTR_LISTEN; config listen)")
	databaseURL := fs.String("database-url", os.Getenv("ORKESTR_DATABASE_URL"), "postgres://… to use PostgreSQL instead of SQLite in the data dir (env ORKESTR_DATABASE_URL; config database.url)")
	configFile := fs.String("config", os.Getenv("ORKESTR_CONFIG"), "YAML config file (env ORKESTR_CONFIG)")
	consoleURL := fs.String("console-url", os.Getenv("ORKESTR_CONSOLE_URL"), "public URL of this server (e.g. https://orkestr.example.com) for console links; with https the console's cookies are Secure (env ORKESTR_CONSOLE_URL; config console_url)")
	metricsListen := fs.String("metrics-listen", os.Getenv("ORKESTR_METRICS_LISTEN"), "address for operator metrics (Prometheus /metrics), e.g. 127.0.0.1:9477; empty: off (env ORKESTR_METRICS_LISTEN; config metrics_listen)")
	grace := fs.Duration("shutdown-grace", 30*time.Second, "on SIGTERM/SIGINT, how long requests in flight may take to finish before their connections are closed")
	e2bListen := fs.String("e2b-listen", os.Getenv("ORKESTR_E2B_LISTEN"), "address for the E2B-compatible API (the unmodified e2b SDKs with E2B_API_URL and E2B_SANDBOX_URL set to it), e.g. 127.0.0.1:3000; empty: off (env ORKESTR_E2B_LISTEN)")
	e2bBase := fs.String("e2b-base-template", envOr("ORKESTR_E2B_BASE_TEMPLATE", "e2b-base"), "orkestr template that E2B's template \"base\" means (env ORKESTR_E2B_BASE_TEMPLATE)")
	_ = fs.Parse(args)
	cfg, err := loadConfig(*configFile)
	if err != nil {
		return err
	}
	// A flag given on the command line wins over the file.
	given := flagsGiven(fs)
	if given["listen"] {
		cfg.Listen = *listen
	}
	if given["database-url"] {
		cfg.Database.URL = *databaseURL
	}
	if given["console-url"] {
		cfg.ConsoleURL = *consoleURL
	}
	if given["metrics-listen"] {
		cfg.MetricsListen = *metricsListen
	}
	if err := cfg.CheckFiles(); err != nil {
		return err
	}
	if nf.poolSize < 0 {
		nf.poolSize = cfg.PoolSize
	}
	ncfg := nf.config()
	log := ncfg.Log
	if *configFile != "" {
		if err := config.CheckKeys(*configFile); err != nil {
			// Not fatal (the file loads), but a typo such as "tsl:" is
			// otherwise silently ignored.
			log.Warn("the config file has a key orkestrd does not know; it is ignored (see orkestrd config check)", "err", err.Error())
		}
	}
	if err := nodeConfig(&ncfg, cfg); err != nil {
		return err
	}
	if cfg.Fleet.Enabled && !strings.HasPrefix(cfg.Database.URL, "postgres") {
		return fmt.Errorf("fleet.enabled needs PostgreSQL: a fleet's control-plane replicas and nodes share one store; set database.url (or --database-url) to postgres://… (SQLite serves one box only)")
	}
	unlock, err := openDataDir(ncfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	sf := storeFlags{dataDir: ncfg.DataDir, databaseURL: cfg.Database.URL}
	st, err := sf.open(ctx)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer st.Close()
	if err := bootstrap(ctx, st); err != nil {
		return err
	}
	ncfg.Region, ncfg.Recorder = cfg.Region, st
	var (
		n    *node.Node
		opts = api.Options{Store: st, Config: cfg, Log: log, DataDir: absPath(ncfg.DataDir)}
	)
	if cfg.Fleet.Enabled {
		// The control plane: its sandboxes run on the nodes of the store.
		if cfg.Fleet.NodeToken == "" {
			return fmt.Errorf("fleet.enabled needs fleet.node_token (or node_token_file / node_token_env), the credential the nodes share")
		}
		lease := fleet.NewLease(st, "singletons", 10*time.Second, log)
		go lease.Run(ctx)
		go fleet.WatchNodes(ctx, st, lease, cfg.Fleet.HeartbeatTimeout(), log)
		var nodeTLS *tls.Config
		if cfg.Fleet.NodeCAFile != "" {
			pem, err := os.ReadFile(cfg.Fleet.NodeCAFile)
			if err != nil {
				return fmt.Errorf("fleet.node_ca_file: %w", err)
			}
			roots := x509.NewCertPool()
			if !roots.AppendCertsFromPEM(pem) {
				return fmt.Errorf("fleet.node_ca_file %s holds no PEM certificate", cfg.Fleet.NodeCAFile)
			}
			nodeTLS = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		}
		opts.Nodes, opts.Leader = fleet.NewNodes(fleet.Options{Store: st, Config: cfg, TLS: nodeTLS, Log: log}), lease.Held
		log.Info("control plane of a fleet: sandboxes run on the registered nodes", "holder", lease.Holder(), "heartbeat_timeout", cfg.Fleet.HeartbeatTimeout().String())
	} else {
		// Snapshots are named by id since the fleet; a one-box store from
		// before holds their absolute paths.
		if sq, ok := st.(*sqlstore.Store); ok {
			if n, err := sq.NameSnapshots(ctx); err != nil {
				return fmt.Errorf("naming snapshots by id: %w", err)
			} else if n > 0 {
				log.Info("snapshots are named by id now", "converted", n)
			}
		}
		ncfg.Region, ncfg.Recorder = cfg.Region, st
		if n, err = openNode(ncfg); err != nil {
			return err
		}
		opts.Node = n
	}
	closeNode := func() {
		if n != nil {
			_ = n.Close(context.Background(), false)
		}
	}
	if opts.Snapshots, _, err = snapshotStore(cfg, ncfg.DataDir); err != nil {
		closeNode()
		return err
	}
	srvAPI := api.New(opts)
	if err := srvAPI.Start(ctx); err != nil {
		closeNode()
		return err
	}
	if n != nil {
		if templates, _ := n.Templates(); len(templates) == 0 {
			log.Warn("no templates are built; run `make setup` or `orkestrd admin template build debian-12`", "template_dir", ncfg.TemplateDir)
		}
	}

	con, err := console.New(console.Options{Store: st, API: srvAPI, Log: log, PublicURL: cfg.ConsoleURL})
	if err != nil {
		closeNode()
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/", srvAPI.Handler())
	mux.Handle(console.Prefix, con.Handler())
	mux.Handle("GET /console", http.RedirectHandler(console.Prefix, http.StatusMovedPermanently))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		type poolState struct {
			Template  string `json:"template"`
			Size      string `json:"size"`
			Networked bool   `json:"networked"`
			Ready     int    `json:"ready"`
			Target    int    `json:"target"`
		}
		w.Header().Set("Content-Type", "application/json")
		if n == nil {
			_ = json.NewEncoder(w).Encode(map[string]any{"status": "ok", "mode": "control-plane"})
			return
		}
		pools := []poolState{}
		for _, d := range n.PoolDepths() {
			pools = append(pools, poolState{d.Key.Template, d.Key.Size, d.Key.Networked, d.Ready, d.Target})
		}
		slices.SortFunc(pools, func(a, b poolState) int {
			return cmp.Or(strings.Compare(a.Template, b.Template), strings.Compare(a.Size, b.Size), cmp.Compare(b2i(a.Networked), b2i(b.Networked)))
		})
		_ = json.NewEncoder(w).Encode(map[string]any{
			"status": "ok", "runtime": n.RuntimeName(), "sandboxes": n.RuntimeSandboxes(r.Context()), "pools": pools,
		})
	})
	ln, scheme, certs, err := openListener(cfg.Listen, cfg.TLS)
	if err != nil {
		closeNode()
		return err
	}
	reloads := make(chan os.Signal, 1)
	signal.Notify(reloads, syscall.SIGHUP)
	defer signal.Stop(reloads)
	go reloadOnHUP(reloads, certs, log)

	var inflight atomic.Int64
	srv := &http.Server{Handler: counting(&inflight, mux), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	var metricsSrv *http.Server
	if cfg.MetricsListen != "" {
		// Operator metrics get their own listener so that they can stay on
		// a private interface while the API is public.
		mln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			ln.Close()
			closeNode()
			return fmt.Errorf("metrics listener: %w", err)
		}
		mmux := http.NewServeMux()
		mmux.Handle("GET /metrics", srvAPI.MetricsHandler())
		metricsSrv = &http.Server{Handler: mmux, ReadHeaderTimeout: 10 * time.Second}
		log.Info("operator metrics listening", "addr", mln.Addr().String(), "path", "/metrics")
		go func() { _ = metricsSrv.Serve(mln) }()
	}
	var e2bSrv *http.Server
	if *e2bListen != "" {
		// The E2B-compatible API has its own listener: its paths (/sandboxes,
		// /files, /health…) are E2B's, not /v1's.
		secret, err := e2b.LoadSecret(ncfg.DataDir)
		if err != nil {
			ln.Close()
			closeNode()
			return err
		}
		es, err := e2b.New(e2b.Options{Native: srvAPI, Store: st, Log: log, Secret: secret, Templates: map[string]string{"base": *e2bBase}})
		if err != nil {
			ln.Close()
			closeNode()
			return err
		}
		eln, err := net.Listen("tcp", *e2bListen)
		if err != nil {
			ln.Close()
			closeNode()
			return fmt.Errorf("e2b listener: %w", err)
		}
		e2bSrv = &http.Server{Handler: es.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
		// The SDKs speak HTTP/1.1 or, without TLS, HTTP/2 with prior knowledge.
		e2bSrv.Protocols = new(http.Protocols)
		e2bSrv.Protocols.SetHTTP1(true)
		e2bSrv.Protocols.SetUnencryptedHTTP2(true)
		log.Info("E2B-compatible API listening", "addr", eln.Addr().String(), "base_template", *e2bBase)
		go func() { _ = e2bSrv.Serve(eln) }()
	}
	log.Info("orkestrd listening", "addr", ln.Addr().String(), "scheme", scheme, "data_dir", ncfg.DataDir, "template_dir", ncfg.TemplateDir, "pool_size", ncfg.PoolSize, "region", cfg.Region)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	// Graceful stop: the listener closes at once (new connections are
	// refused), requests in flight get until the grace period ends, then
	// their connections are closed. Sandboxes are left running for the
	// next start to adopt.
	// The listener closes before the log says so: from that line on, new
	// connections are refused (srv.Shutdown below would close it too, but
	// only after the line).
	_ = ln.Close()
	log.Info("shutting down: no new connections; waiting for requests in flight", "grace", grace.String())
	sctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	e2bDone := make(chan error, 1)
	if e2bSrv != nil {
		go func() { e2bDone <- e2bSrv.Shutdown(sctx) }()
	} else {
		e2bDone <- nil
	}
	if serr := srv.Shutdown(sctx); serr != nil {
		log.Warn("requests still running at the end of the grace period; closing their connections", "grace", grace.String())
		_ = srv.Close()
		// Their handlers see their contexts end; give them a moment to
		// return before the node and the store go away.
		for deadline := time.Now().Add(10 * time.Second); inflight.Load() > 0 && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if metricsSrv != nil {
		_ = metricsSrv.Close()
	}
	if e2bErr := <-e2bDone; e2bErr != nil {
		_ = e2bSrv.Close()
	}
	// The last metered seconds are flushed before the store closes.
	stop()
	srvAPI.Wait()
	// Claimed sandboxes keep running and are adopted by the next start;
	// warm-pool sandboxes are destroyed.
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	if n != nil {
		if cerr := n.Close(cctx, false); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	if err == nil {
		log.Info("stopped; running sandboxes are left for the next start to adopt")
	}
	return err
}

// reloadOnHUP re-reads the TLS certificate and key at every SIGHUP. New
// connections get the new certificate; open ones keep theirs. A failed
// reload keeps the current certificate.
func reloadOnHUP(sigs <-chan os.Signal, certs *tlsutil.Reloader, log *slog.Logger) {
	for range sigs {
		if certs == nil {
			log.Info("SIGHUP: no TLS certificate is configured; nothing to reload")
			continue
		}
		leaf, err := certs.Reload()
		if err != nil {
			log.Error("SIGHUP: reloading the TLS certificate failed; keeping the current one", "err", err)
			continue
		}
		log.Info("SIGHUP: TLS certificate reloaded", "subject", leaf.Subject.String(), "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
}

// counting tracks the requests being served.
func counting(n *atomic.Int64, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		defer n.Add(-1)
		h.ServeHTTP(w, r)
	})
}

// bootstrap creates a default account and prints one key for it, once, when
// the store has no accounts at all.
func bootstrap(ctx context.Context, st store.Store) error {
	accts, err := st.ListAccounts(ctx)
	if err != nil || len(accts) > 0 {
		return err
	}
	a := store.Account{ID: newID("acc_"), Name: "default", Plan: "team", CreatedAt: time.Now().UTC()}
	if err := st.CreateAccount(ctx, a); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil // another process bootstrapped at the same moment
		}
		return err
	}
	key, k, err := mintKey(ctx, st, a.ID, []string{store.ScopeSandboxesWrite}, 0)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stdout, "Created account \"default\" (plan team) and its bootstrap API key %s with scope sandboxes:write.\nIt is shown only this once; store it now:\n%s\n", k.Prefix, key)
	return nil
}

// nodeConfig fills a node's config from the operator's: sizes, disk
// reserve, pools, network, extra CAs.
func nodeConfig(ncfg *node.Config, cfg config.Config) error {
	var err error
	ncfg.Sizes = node.Resources(cfg.Sizes)
	ncfg.DiskReserveBytes = cfg.DiskReserveMB << 20
	ncfg.PoolDemand = pool.Demand{Max: cfg.PoolMax, Budget: cfg.PoolMemoryMB / config.PooledSandboxMB}
	if cfg.PoolMemoryMB == 0 {
		ncfg.PoolDemand.Max = 0 // no budget: pools stay at pool_size
	}
	if ncfg.Network, err = node.NetworkConfig(cfg.Network); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	ncfg.NetworkPoolSize, ncfg.NetworkAccounts = cfg.Network.PoolSize, cfg.Network.Accounts
	if ncfg.SnapshotStore, ncfg.SnapshotKeys, err = snapshotStore(cfg, ncfg.DataDir); err != nil {
		return err
	}
	ncfg.SnapshotCacheBytes = cfg.Snapshots.CacheBytes
	ncfg.ExtraCAs, err = cfg.SandboxCABundle()
	return err
}

// snapshotStore is the store the config's snapshots section names, or nil
// when it names none: a store is used when it is S3 or an fs store with
// its own dir (a directory every node shares). Without one, snapshots stay
// in each node's data directory, as on a one box, and a paused sandbox
// resumes on the node that paused it.
func snapshotStore(cfg config.Config, dataDir string) (snapshot.Store, *snapshot.Keyring, error) {
	sc := cfg.Snapshots
	if sc.Store != "s3" && sc.Dir == "" {
		return nil, nil, nil
	}
	return snapshot.FromConfig(sc, dataDir)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// openDataDir makes the data directory's snapshot directory and takes the
// directory's lock: one orkestrd (server or node) per data directory;
// admin restore waits for none.
func openDataDir(dataDir string) (unlock func(), err error) {
	if err := os.MkdirAll(node.SnapshotRoot(dataDir), 0o700); err != nil {
		return nil, err
	}
	return lockDataDir(dataDir)
}

// openListener opens addr, with TLS when the config gives a certificate (its
// Reloader re-reads it on SIGHUP); scheme is "http" or "https".
func openListener(addr string, t config.TLS) (ln net.Listener, scheme string, certs *tlsutil.Reloader, err error) {
	if ln, err = net.Listen("tcp", addr); err != nil {
		return nil, "", nil, err
	}
	if !t.Enabled() {
		return ln, "http", nil, nil
	}
	if certs, err = tlsutil.NewReloader(t.CertFile, t.KeyFile); err != nil {
		ln.Close()
		return nil, "", nil, err
	}
	return tls.NewListener(ln, certs.ServerConfig()), "https", certs, nil
}
