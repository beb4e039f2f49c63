package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/orkestr-eu/orkestr/internal/node"
	"github.com/orkestr-eu/orkestr/internal/pool"
	"github.com/orkestr-eu/orkestr/internal/runtime"
)

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	var nf nodeFlags
	nf.register(fs, 2)
	listen := fs.String("listen", envOr("ORKESTR_LISTEN", "127.0.0.1:7777"), "address to listen on (env ORKESTR_LISTEN)")
	_ = fs.Parse(args)
	cfg := nf.config()
	log := cfg.Log
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return err
	}

	n, err := node.Open(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// No sandbox is owned by anyone yet at this stage of the server, so
	// every leftover of a previous run is destroyed.
	rep, err := n.Start(ctx, func(runtime.Info) bool { return false })
	if err != nil {
		return err
	}
	log.Info("reconciled runtime state", "adopted", len(rep.Adopted), "destroyed", len(rep.Destroyed), "removed", len(rep.Removed))
	templates, _ := n.Templates.List()
	if len(templates) == 0 {
		log.Warn("no templates are built; run `make setup` or `orkestrd admin template build debian-12`", "template_dir", cfg.TemplateDir)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		type poolState struct {
			Template string `json:"template"`
			Size     string `json:"size"`
			Ready    int    `json:"ready"`
			Target   int    `json:"target"`
		}
		var pools []poolState
		for _, t := range templates {
			pools = append(pools, poolState{t.Name, "small", n.Pool.Ready(pool.Key{Template: t.Name, Size: "small"}), cfg.PoolSize})
		}
		running, _ := n.Driver.List(r.Context())
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"status": "ok", "runtime": n.Driver.Name(), "sandboxes": len(running), "pools": pools,
		})
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		_ = n.Close(context.Background(), true)
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Info("orkestrd listening", "addr", ln.Addr().String(), "data_dir", cfg.DataDir, "template_dir", cfg.TemplateDir, "pool_size", cfg.PoolSize)
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
	if cerr := n.Close(sctx, true); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
