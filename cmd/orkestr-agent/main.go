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
	// One P: the agent shuttles bytes between pipes, files and the host
	// channel, and inside gVisor every futex, sched_yield and nanosleep of
	// Go's scheduler moving goroutines between threads is a trapped
	// syscall. Blocked syscalls still run in parallel (their threads give
	// the P up). Measured on an exec stream of 200 MB: 0.3 s less CPU in
	// the sandbox (docs/benchmarks.md). GOMAXPROCS in the environment wins.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	if len(os.Args) == 2 && os.Args[1] == agent.FSHelperArg {
		os.Exit(agent.FSHelperMain(os.Stdin, os.Stdout))
	}
	if len(os.Args) == 2 && os.Args[1] == agent.FileHelperArg {
		os.Exit(agent.FileHelperMain(os.Stdin, os.Stdout))
	}
	dir := flag.String("dir", wire.AgentDir, "directory holding the host socket and token")
	verbose := flag.Bool("v", false, "log debug messages to stderr")
	tasksMax := flag.Int64("tasks-max", 0, "cap on the tasks (processes and threads) of all commands together; 0: none")
	flag.Parse()
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
		a.TasksMax = *tasksMax
	}
	_ = a.Run(context.Background())
}
