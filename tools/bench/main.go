// Command bench runs sluice's benchmarks side by side with their baselines, in one run on one
// lab, and writes every figure and ratio to bench/results/<timestamp>.json plus a markdown
// report with charts (`make bench`, `make bench-quick`). Needs root.
//
// Sections, in order (-only picks some):
//
//	perpacket     the XDP program's per-packet cost (BPF_PROG_TEST_RUN) at 1 to 100k services
//	datapaths     plain forwarding, kube-proxy iptables and nftables, sluice XDP and tc, a bare
//	              XDP forwarder: packet rate (live-frames generator, XDP sink), iperf3, wrk
//	sweep         forwarded rate, new connections and programming time against the number of
//	              services, through the API server, sluice and kube-proxy
//	controlplane  tools/scale: 10k services programmed, EndpointSlice-to-map latency, RSS
//
//	bench report RESULTS.json   re-renders the report and charts from a results file
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	quick     bool
	agentBin  string
	scaleBin  string
	results   string
	docs      string
	only      map[string]bool
	datapaths string
	pause     time.Duration

	ppsDuration  time.Duration
	ppsRuns      int
	flows        int
	iperfSeconds int
	wrkSeconds   int
	connSeconds  int
	wrkConns     int

	sweepServices  []int
	sweepBudget    time.Duration
	perPktServices []int
	perPktBackends []int
	scaleServices  int
	scaleEndpoints int
	scaleUpdates   int
}

var sections = []string{"perpacket", "datapaths", "incluster", "sweep", "controlplane"}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		mult := 1
		if strings.HasSuffix(f, "k") {
			f, mult = strings.TrimSuffix(f, "k"), 1000
		}
		v, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parse %q: %w", s, err)
		}
		out = append(out, v*mult)
	}
	return out, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "report" {
		if err := reportCmd(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench report:", err)
			os.Exit(1)
		}
		return
	}
	var cfg config
	var only, sweep, ppSvcs, ppBes string
	flag.BoolVar(&cfg.quick, "quick", false, "a smoke run (about 2 minutes): short measurements, sweeps to 1k")
	flag.StringVar(&cfg.agentBin, "agent", "bin/sluice-agent", "sluice-agent binary")
	flag.StringVar(&cfg.scaleBin, "scale", "bin/scale", "tools/scale binary (the control-plane section)")
	flag.StringVar(&cfg.results, "results", "bench/results", "folder for <timestamp>.json")
	flag.StringVar(&cfg.docs, "docs", "", "folder for the report (benchmarks.md) and charts (bench-*.svg); empty: next to the JSON as <timestamp>.md")
	flag.StringVar(&only, "only", "", "comma-separated sections to run ("+strings.Join(sections, ", ")+"); default all")
	flag.StringVar(&sweep, "sweep-services", "", "services for the API sweep (default 1,1k,10k; quick 1,1k)")
	flag.StringVar(&ppSvcs, "perpacket-services", "", "services for the per-packet sweep (default 1,1k,10k,100k; quick 1,1k)")
	flag.StringVar(&ppBes, "perpacket-backends", "", "backends per service for the per-packet sweep (default 1,10,100; quick 1,10)")
	flag.StringVar(&cfg.datapaths, "datapaths", "", "only these datapaths in the datapath section (comma-separated names); default all")
	flag.DurationVar(&cfg.pause, "pause", 0, "debugging: wait this long with each datapath running after its measurements")
	flag.DurationVar(&cfg.sweepBudget, "sweep-budget", 0, "how long a proxy may take to program the services of a sweep point (default 120s; quick 30s)")
	flag.Parse()

	cfg.only = map[string]bool{}
	for _, s := range strings.Split(only, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if !slices.Contains(sections, s) {
			fmt.Fprintf(os.Stderr, "bench: unknown section %q (want %s)\n", s, strings.Join(sections, ", "))
			os.Exit(2)
		}
		cfg.only[s] = true
	}
	if len(cfg.only) == 0 {
		for _, s := range sections {
			cfg.only[s] = true
		}
	}
	if cfg.quick {
		cfg.ppsDuration, cfg.ppsRuns, cfg.flows = 1500*time.Millisecond, 1, 16384
		cfg.iperfSeconds, cfg.wrkSeconds, cfg.connSeconds, cfg.wrkConns = 2, 2, 2, 16
		cfg.sweepServices, cfg.perPktServices, cfg.perPktBackends = []int{1, 1000}, []int{1, 1000}, []int{1, 10}
		cfg.scaleServices, cfg.scaleEndpoints, cfg.scaleUpdates = 1000, 10, 50
		if cfg.sweepBudget == 0 {
			cfg.sweepBudget = 30 * time.Second
		}
	} else {
		cfg.ppsDuration, cfg.ppsRuns, cfg.flows = 3*time.Second, 3, 16384
		cfg.iperfSeconds, cfg.wrkSeconds, cfg.connSeconds, cfg.wrkConns = 8, 5, 5, 16
		cfg.sweepServices, cfg.perPktServices, cfg.perPktBackends = []int{1, 1000, 10000}, []int{1, 1000, 10000, 100000}, []int{1, 10, 100}
		cfg.scaleServices, cfg.scaleEndpoints, cfg.scaleUpdates = 10000, 10, 200
		if cfg.sweepBudget == 0 {
			cfg.sweepBudget = 120 * time.Second
		}
	}
	for _, f := range []struct {
		s   string
		dst *[]int
	}{{sweep, &cfg.sweepServices}, {ppSvcs, &cfg.perPktServices}, {ppBes, &cfg.perPktBackends}} {
		if f.s == "" {
			continue
		}
		v, err := ints(f.s)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(2)
		}
		*f.dst = v
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: needs root (BPF, network namespaces)")
		os.Exit(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, &cfg)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("interrupted: %w", err)
	}
	if werr := write(&cfg, res, err); werr != nil {
		logf("%v", werr)
		if err == nil {
			err = werr
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: FAILED:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg *config) (res *Results, err error) {
	res = &Results{Version: 1, Mode: "full", Started: time.Now().UTC(), Machine: describeMachine()}
	if cfg.quick {
		res.Mode = "quick"
	}
	res.Settings = Settings{
		PPSSeconds: cfg.ppsDuration.Seconds(), PPSRuns: cfg.ppsRuns, Flows: cfg.flows, GenWorkers: 1, FrameBytes: 64,
		IperfSeconds: cfg.iperfSeconds, WrkSeconds: cfg.wrkSeconds, ConnSeconds: cfg.connSeconds, WrkConns: cfg.wrkConns,
		SweepServices: cfg.sweepServices, SweepBudgetSecs: cfg.sweepBudget.Seconds(),
		PerPktServices: cfg.perPktServices, PerPktBackends: cfg.perPktBackends,
		ScaleServices: cfg.scaleServices, ScaleEndpoints: cfg.scaleEndpoints, ScaleUpdates: cfg.scaleUpdates,
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
		res.Finished = time.Now().UTC()
		res.Seconds = res.Finished.Sub(res.Started).Seconds()
		computeRatios(res)
		if err != nil {
			res.Error = err.Error()
		}
	}()
	logf("%s run on %s, kernel %s, %d CPUs (%s)", res.Mode, res.Machine.Hostname, res.Machine.Kernel, res.Machine.CPUs, res.Machine.CPUModel)

	if cfg.only["perpacket"] {
		t0 := time.Now()
		if res.PerPacket, err = runPerPacket(ctx, cfg); err != nil {
			return res, fmt.Errorf("per-packet cost: %w", err)
		}
		logf("per-packet section took %v", time.Since(t0).Round(time.Second))
	}
	if cfg.only["datapaths"] || cfg.only["incluster"] || cfg.only["sweep"] {
		if err := runLab(ctx, cfg, res); err != nil {
			return res, err
		}
	}
	if cfg.only["controlplane"] {
		t0 := time.Now()
		if res.ControlPlane, err = runScale(ctx, cfg); err != nil {
			return res, fmt.Errorf("control plane (tools/scale): %w", err)
		}
		res.ControlPlane.Seconds = time.Since(t0).Seconds()
		logf("control plane: %d services programmed %.2fs after the agent's start; slice->map p50 %.1f ms p99 %.1f ms; RSS %.0f MB (%v)",
			res.ControlPlane.Services, res.ControlPlane.ColdStartSeconds, res.ControlPlane.UpdateP50Millis,
			res.ControlPlane.UpdateP99Millis, res.ControlPlane.AgentRSSMegabytes, time.Since(t0).Round(time.Second))
	}
	return res, nil
}

// write saves the results (also after a failure, as <timestamp>-failed.json, for a look at
// what ran) and, after a success, the report and charts.
func write(cfg *config, res *Results, runErr error) error {
	if res == nil {
		return nil
	}
	if err := os.MkdirAll(cfg.results, 0o755); err != nil {
		return err
	}
	stamp := res.Started.Format("20060102-150405")
	name := stamp + ".json"
	if runErr != nil {
		name = stamp + "-failed.json"
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(cfg.results, name)
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return err
	}
	logf("results: %s", path)
	if runErr != nil {
		return nil
	}
	docs, mdName, prefix := cfg.docs, "benchmarks.md", "bench-"
	if docs == "" {
		docs, mdName, prefix = cfg.results, stamp+".md", stamp+"-"
	}
	md, err := renderReport(res, docs, mdName, prefix, path)
	if err != nil {
		return err
	}
	logf("report: %s", md)
	return nil
}

func reportCmd(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	docs := fs.String("docs", "docs", "folder for benchmarks.md and the charts")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: bench report [--docs DIR] RESULTS.json")
	}
	b, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	computeRatios(&res)
	md, err := renderReport(&res, *docs, "benchmarks.md", "bench-", fs.Arg(0))
	if err != nil {
		return err
	}
	fmt.Println(md)
	return nil
}
