// Command sluice-agent programs the sluice datapath on a node from Kubernetes objects.
// It only wires the command line to internal/agent.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/agent"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	// A node agent's heap is mostly long-lived caches: collecting at 50% growth instead of 100%
	// keeps its footprint near the live set for little CPU. GOGC in the environment wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	os.Exit(run())
}

func run() int {
	o, err := agent.ParseArgs(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice-agent:", err)
		return 2
	}
	if o.Version {
		fmt.Println(version)
		return 0
	}
	log, err := agent.NewLogger(o.LogLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice-agent:", err)
		return 2
	}
	defer log.Sync()
	if o.Cleanup {
		if err := agent.Cleanup(o); err != nil {
			log.Error("Cleanup failed", zap.Error(err))
			return 1
		}
		log.Info("Removed sluice", zap.String("devices", o.Devices), zap.String("bpffs", o.BPFFS))
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := agent.Run(ctx, o, version, log); err != nil {
		log.Error("Agent failed", zap.Error(err))
		return 1
	}
	return 0
}
