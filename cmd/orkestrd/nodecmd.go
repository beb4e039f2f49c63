package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/orkestr-eu/orkestr/internal/config"
	"github.com/orkestr-eu/orkestr/internal/fleet"
	"github.com/orkestr-eu/orkestr/internal/lifecycle"
	"github.com/orkestr-eu/orkestr/internal/nodeapi"
	"github.com/orkestr-eu/orkestr/internal/store"
)

// nodeCmd runs one host of a fleet: its sandboxes, served to the control
// plane over the node API, its heartbeat and metering into the store.
func nodeCmd(args []string) error {
	fs := flag.NewFlagSet("node", flag.ExitOnError)
	var nf nodeFlags
	nf.register(fs, -1)
	configFile := fs.String("config", os.Getenv("ORKESTR_CONFIG"), "YAML config file (env ORKESTR_CONFIG)")
	databaseURL := fs.String("database-url", os.Getenv("ORKESTR_DATABASE_URL"), "the fleet's PostgreSQL, postgres://… (env ORKESTR_DATABASE_URL; config database.url)")
	id := fs.String("id", os.Getenv("ORKESTR_NODE_ID"), "this node's id in the fleet, stable across restarts (env ORKESTR_NODE_ID; config node.id)")
	region := fs.String("region", os.Getenv("ORKESTR_REGION"), "this node's region (env ORKESTR_REGION; config region)")
	listen := fs.String("listen", os.Getenv("ORKESTR_NODE_LISTEN"), "the node API's address, e.g. 10.0.0.5:7070 (env ORKESTR_NODE_LISTEN; config node.listen)")
	advertise := fs.String("advertise", os.Getenv("ORKESTR_NODE_ADVERTISE"), "the URL the control plane reaches the node API at (default http(s)://<listen>; config node.advertise)")
	grace := fs.Duration("shutdown-grace", 30*time.Second, "on SIGTERM/SIGINT, how long calls in flight may take to finish")
	_ = fs.Parse(args)
	cfg, err := loadConfig(*configFile)
	if err != nil {
		return err
	}
	given := flagsGiven(fs)
	if given["database-url"] || cfg.Database.URL == "" {
		cfg.Database.URL = *databaseURL
	}
	if given["id"] || cfg.Node.ID == "" {
		cfg.Node.ID = *id
	}
	if given["region"] || (*region != "" && cfg.Region == config.Default().Region) {
		cfg.Region = *region
	}
	if given["listen"] || cfg.Node.Listen == "" {
		cfg.Node.Listen = *listen
	}
	if given["advertise"] || cfg.Node.Advertise == "" {
		cfg.Node.Advertise = *advertise
	}
	if err := checkNodeConfig(&cfg); err != nil {
		return err
	}
	if err := cfg.CheckFiles(); err != nil {
		return err
	}
	if nf.poolSize < 0 {
		nf.poolSize = cfg.PoolSize
	}
	ncfg := nf.config()
	log := ncfg.Log.With("node", cfg.Node.ID)
	ncfg.Log = log
	if err := nodeConfig(&ncfg, cfg); err != nil {
		return err
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

	ln, scheme, certs, err := openListener(cfg.Node.Listen, cfg.TLS)
	if err != nil {
		return fmt.Errorf("node API listener: %w", err)
	}
	if cfg.Node.Advertise == "" {
		cfg.Node.Advertise = scheme + "://" + ln.Addr().String()
	}
	ncfg.ID, ncfg.Region, ncfg.Address, ncfg.Slots, ncfg.Recorder = cfg.Node.ID, cfg.Region, cfg.Node.Advertise, cfg.Node.Slots, st
	n, err := openNode(ncfg)
	if err != nil {
		ln.Close()
		return err
	}
	// Settle what a previous run left against the store, before anyone
	// can reach the node: adopt what the store says runs here, destroy the
	// rest. Starts placed here lately are a control plane's to settle.
	if err := lifecycle.Reconcile(ctx, st, n, func(row store.Sandbox) bool { return row.Node == cfg.Node.ID }, fleet.InFlight, time.Now, log); err != nil {
		ln.Close()
		_ = n.Close(context.Background(), false)
		return err
	}
	mctx, mstop := context.WithCancel(context.Background())
	go n.RunMetering(mctx)
	bctx, bstop := context.WithCancel(context.Background())
	go fleet.Heartbeat(bctx, st, n, cfg.Node.HeartbeatEvery(), log)
	go fleet.Sweep(bctx, st, n, 10*time.Second, fleet.SweepGrace, fleet.AdoptAfter, log)

	api := nodeapi.NewHandler(n, nodeapi.HandlerOptions{Token: cfg.Fleet.NodeToken, Log: log})
	srv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	reloads := make(chan os.Signal, 1)
	signal.Notify(reloads, syscall.SIGHUP)
	defer signal.Stop(reloads)
	go reloadOnHUP(reloads, certs, log)
	log.Info("node listening", "addr", ln.Addr().String(), "advertise", cfg.Node.Advertise, "region", cfg.Region,
		"data_dir", ncfg.DataDir, "template_dir", ncfg.TemplateDir, "pool_size", ncfg.PoolSize, "node_api_version", nodeapi.APIVersion)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	// Graceful stop: calls in flight finish within the grace; the
	// heartbeat stops (the control plane declares the node lost if it does
	// not come back in time); sandboxes keep running for the next start.
	_ = ln.Close()
	log.Info("shutting down: waiting for calls in flight", "grace", grace.String())
	sctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	// The call channels (upgraded connections) are not the server's to
	// close: the handler closes them as their calls answer.
	chDone := make(chan error, 1)
	go func() { chDone <- api.Shutdown(sctx) }()
	if serr := srv.Shutdown(sctx); serr != nil {
		_ = srv.Close()
	}
	if <-chDone != nil {
		api.Close()
	}
	// The heartbeat went on while calls drained (the node was not lost);
	// new calls found the listener closed and went elsewhere.
	bstop()
	mstop()
	n.WaitMetering()
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	if cerr := n.Close(cctx, false); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
