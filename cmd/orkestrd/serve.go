package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/orkestr-eu/orkestr/internal/api"
	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/console"
	"github.com/orkestr-eu/orkestr/internal/e2b"
	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/store"
)

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	var nf nodeFlags
	nf.register(fs, -1)
	listen := fs.String("listen", envOr("ORKESTR_LISTEN", "127.0.0.1:7777"), "address to listen on (env ORKESTR_LISTEN)")
	databaseURL := fs.String("database-url", os.Getenv("ORKESTR_DATABASE_URL"), "postgres://… to use PostgreSQL instead of SQLite in the data dir (env ORKESTR_DATABASE_URL)")
	configFile := fs.String("config", os.Getenv("ORKESTR_CONFIG"), "YAML config file (env ORKESTR_CONFIG)")
	consoleURL := fs.String("console-url", os.Getenv("ORKESTR_CONSOLE_URL"), "public URL of this server (e.g. https://orkestr.example.com) for console links; with https the console's cookies are Secure (env ORKESTR_CONSOLE_URL)")
	metricsListen := fs.String("metrics-listen", os.Getenv("ORKESTR_METRICS_LISTEN"), "address for operator metrics (Prometheus /metrics), e.g. 127.0.0.1:9477; empty: off (env ORKESTR_METRICS_LISTEN)")
	e2bListen := fs.String("e2b-listen", os.Getenv("ORKESTR_E2B_LISTEN"), "address for the E2B-compatible API (the unmodified e2b SDKs with E2B_API_URL and E2B_SANDBOX_URL set to it), e.g. 127.0.0.1:3000; empty: off (env ORKESTR_E2B_LISTEN)")
	e2bBase := fs.String("e2b-base-template", envOr("ORKESTR_E2B_BASE_TEMPLATE", "e2b-base"), "orkestr template that E2B's template \"base\" means (env ORKESTR_E2B_BASE_TEMPLATE)")
	_ = fs.Parse(args)
	cfg, err := config.Load(*configFile)
	if err != nil {
		return err
	}
	if nf.poolSize < 0 {
		nf.poolSize = cfg.PoolSize
	}
	ncfg := nf.config()
	log := ncfg.Log
	ncfg.Sizes = node.Resources(cfg.Sizes)
	if ncfg.Network, err = node.NetworkConfig(cfg.Network); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	ncfg.NetworkPoolSize, ncfg.NetworkAccounts = cfg.Network.PoolSize, cfg.Network.Accounts
	if err := os.MkdirAll(filepath.Join(ncfg.DataDir, "snapshots"), 0o700); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	sf := storeFlags{dataDir: ncfg.DataDir, databaseURL: *databaseURL}
	st, err := sf.open(ctx)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer st.Close()
	if err := bootstrap(ctx, st); err != nil {
		return err
	}
	n, err := node.Open(ncfg)
	if err != nil {
		return err
	}
	srvAPI := api.New(api.Options{Store: st, Node: n, Config: cfg, Log: log, DataDir: absPath(ncfg.DataDir)})
	if err := srvAPI.Start(ctx); err != nil {
		_ = n.Close(context.Background(), false)
		return err
	}
	templates, _ := n.Templates.List()
	if len(templates) == 0 {
		log.Warn("no templates are built; run `make setup` or `orkestrd admin template build debian-12`", "template_dir", ncfg.TemplateDir)
	}

	con, err := console.New(console.Options{Store: st, API: srvAPI, Log: log, PublicURL: *consoleURL})
	if err != nil {
		_ = n.Close(context.Background(), false)
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
		var pools []poolState
		templates, _ := n.Templates.List()
		for _, t := range templates {
			for _, k := range n.PoolKeys(t.Name) {
				pools = append(pools, poolState{t.Name, k.Size, k.Networked, n.Pool.Ready(k), n.PoolTarget(k)})
			}
		}
		running, _ := n.Driver.List(r.Context())
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"status": "ok", "runtime": n.Driver.Name(), "sandboxes": len(running), "pools": pools,
		})
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		_ = n.Close(context.Background(), false)
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	var metricsSrv *http.Server
	if *metricsListen != "" {
		// Operator metrics get their own listener so that they can stay on
		// a private interface while the API is public.
		mln, err := net.Listen("tcp", *metricsListen)
		if err != nil {
			ln.Close()
			_ = n.Close(context.Background(), false)
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
			_ = n.Close(context.Background(), false)
			return err
		}
		es, err := e2b.New(e2b.Options{Native: srvAPI, Store: st, Log: log, Secret: secret, Templates: map[string]string{"base": *e2bBase}})
		if err != nil {
			ln.Close()
			_ = n.Close(context.Background(), false)
			return err
		}
		eln, err := net.Listen("tcp", *e2bListen)
		if err != nil {
			ln.Close()
			_ = n.Close(context.Background(), false)
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
	log.Info("orkestrd listening", "addr", ln.Addr().String(), "data_dir", ncfg.DataDir, "template_dir", ncfg.TemplateDir, "pool_size", ncfg.PoolSize, "region", cfg.Region)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	if metricsSrv != nil {
		_ = metricsSrv.Shutdown(sctx)
	}
	if e2bSrv != nil {
		_ = e2bSrv.Shutdown(sctx)
	}
	// The last metered seconds are flushed before the store closes.
	stop()
	srvAPI.Wait()
	// Claimed sandboxes keep running and are adopted by the next start;
	// warm-pool sandboxes are destroyed.
	if cerr := n.Close(sctx, false); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
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
