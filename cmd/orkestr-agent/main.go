// Command orkestr-agent runs as PID 1 inside every sandbox and serves the
// host's exec and file requests over the per-sandbox socket.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"runtime"

	"github.com/orkestr-eu/orkestr/internal/agent"
	"github.com/orkestr-eu/orkestr/internal/agent/wire"
)

func main() {
	dir := flag.String("dir", wire.AgentDir, "directory holding the host socket and token")
	verbose := flag.Bool("v", false, "log debug messages to stderr")
	flag.Parse()
	// One P: inside gVisor, waking a second OS thread for a goroutine
	// (netpoller → handler, pipe → pump) is a round trip through the
	// sentry; on one P the handoffs stay on the thread that is already
	// running. An exec over HTTP measured 0.3–0.4 ms faster; the agent's
	// work is I/O, not computation (file transfers were no slower).
	runtime.GOMAXPROCS(1)
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if os.Getenv("GVISOR_SAVE_RESTORE_AUTO_EXEC_MODE") != "" {
		return // checkpoint hooks need nothing from us: the agent redials by itself
	}
	a := agent.New(*dir, log)
	if os.Getpid() == 1 {
		a.ExecCgroups = agent.DefaultExecCgroups
	}
	_ = a.Run(context.Background())
}
