// Command sluice-agent programs the sluice datapath on a node from Kubernetes objects.
// It only wires flags to the internal packages.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/devices"
	"github.com/sluicelb/sluice/internal/healthcheck"
	"github.com/sluicelb/sluice/internal/maglev"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/metrics"
	"github.com/sluicelb/sluice/internal/proxy"
	"github.com/sluicelb/sluice/internal/reconciler"
	"github.com/sluicelb/sluice/internal/source"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

type options struct {
	manifests     string
	kubeconfig    string
	nodePortAddrs string
	apiQPS        float64
	apiBurst      int
	devices       string
	nodeName      string
	bpffs         string
	xdpMode       string
	tcAttach      string
	nodePortRange string
	snatPorts     string
	logLevel      string
	metricsAddr   string
	cleanup       bool
	lbAlgorithm   string
	maglev        bool
	syncPeriod    time.Duration
	minSync       time.Duration
	dp            datapath.Config
}

func parseFlags(args []string) (*options, error) {
	o := &options{dp: datapath.Defaults()}
	host, _ := os.Hostname()
	fs := flag.NewFlagSet("sluice-agent", flag.ContinueOnError)
	fs.StringVar(&o.manifests, "manifests", "", "folder of Service/EndpointSlice/Node manifests to serve (watched for edits) instead of the Kubernetes API")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig to reach the API server (default: in-cluster config)")
	fs.Float64Var(&o.apiQPS, "kube-api-qps", 50, "API server queries per second")
	fs.IntVar(&o.apiBurst, "kube-api-burst", 100, "API server query burst")
	fs.StringVar(&o.nodePortAddrs, "nodeport-addresses", "", "CIDRs (comma-separated) of the device addresses NodePorts are served on, as kube-proxy's flag (default: all)")
	fs.StringVar(&o.devices, "devices", "", "comma-separated devices to attach to; their IPv4 addresses serve the NodePorts (default: the devices that carry the Node's InternalIP/ExternalIP, else the default route's; followed as they change)")
	fs.StringVar(&o.nodeName, "node-name", host, "this node's name, as EndpointSlices' nodeName (marks local backends)")
	fs.StringVar(&o.bpffs, "bpffs", "/sys/fs/bpf/sluice", "bpffs directory for the pinned maps")
	fs.StringVar(&o.xdpMode, "xdp-mode", "auto", "XDP attach mode: auto (per device: native on NIC drivers known to be right with it, tc elsewhere), native, generic, or off (tc ingress only)")
	fs.StringVar(&o.tcAttach, "tc-attach", "auto", "tc attach mode: auto (TCX on 6.6+, else clsact), tcx, or clsact")
	fs.StringVar(&o.nodePortRange, "nodeport-range", "30000-32767", "NodePorts outside this range are refused")
	fs.StringVar(&o.snatPorts, "snat-port-range", fmt.Sprintf("%d-%d", o.dp.SNATPortMin, o.dp.SNATPortMax), "source ports for SNAT to remote backends (keep clear of net.ipv4.ip_local_port_range)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:10249", "where /metrics, /healthz and /readyz are served (empty: nowhere)")
	fs.DurationVar(&o.syncPeriod, "sync-period", 30*time.Second, "full resync interval")
	fs.DurationVar(&o.minSync, "min-sync-interval", 100*time.Millisecond, "minimum time between syncs")
	fs.Func("max-services", "service ports the maps hold", uintFlag(&o.dp.MaxServices))
	fs.Func("max-frontends", "frontends (service ports x node addresses) the maps hold", uintFlag(&o.dp.MaxFrontends))
	fs.Func("max-backends", "backends the maps hold", uintFlag(&o.dp.MaxBackends))
	fs.Func("max-slots", "backend slots over all services", uintFlag(&o.dp.MaxSlots))
	fs.Func("max-conntrack", "connection table entries (two per flow; LRU)", uintFlag(&o.dp.MaxConntrack))
	fs.Func("max-affinity", "session affinity entries (one per client and service; LRU)", uintFlag(&o.dp.MaxAffinity))
	fs.StringVar(&o.lbAlgorithm, "lb-algorithm", "random", "backend selection: random, or maglev (consistent hashing: every node picks the same backend for a flow); a service's annotation "+desired.AnnotationLBAlgorithm+" overrides it")
	fs.Func("maglev-table-size", fmt.Sprintf("entries of each service's Maglev table, a prime (default %d)", o.dp.MaglevSize), uintFlag(&o.dp.MaglevSize))
	fs.DurationVar(&o.dp.CTTCPTimeout, "ct-tcp-timeout", o.dp.CTTCPTimeout, "idle timeout of established TCP flows")
	fs.DurationVar(&o.dp.CTUDPTimeout, "ct-udp-timeout", o.dp.CTUDPTimeout, "idle timeout of UDP flows")
	fs.DurationVar(&o.dp.CTCloseTimeout, "ct-close-timeout", o.dp.CTCloseTimeout, "timeout of TCP flows after a RST or a FIN both ways")
	fs.DurationVar(&o.dp.CTSYNTimeout, "ct-syn-timeout", o.dp.CTSYNTimeout, "timeout of TCP flows whose SYN is not answered")
	printVersion := fs.Bool("version", false, "print the version and exit")
	fs.BoolVar(&o.cleanup, "cleanup", false, "detach sluice from --devices, delete its pins under --bpffs, and exit (as kube-proxy --cleanup)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if *printVersion {
		fmt.Println(version)
		os.Exit(0)
	}
	if o.cleanup {
		return o, nil
	}
	if o.syncPeriod <= 0 || o.minSync < 0 || o.minSync > o.syncPeriod {
		return nil, fmt.Errorf("parse flags: want 0 <= --min-sync-interval (%v) <= --sync-period (%v), and a positive --sync-period", o.minSync, o.syncPeriod)
	}
	if o.manifests != "" && o.kubeconfig != "" {
		return nil, errors.New("parse flags: --manifests and --kubeconfig exclude each other")
	}
	switch o.lbAlgorithm {
	case "random":
	case "maglev":
		o.maglev = true
	default:
		return nil, fmt.Errorf("parse flags: --lb-algorithm %q: want random or maglev", o.lbAlgorithm)
	}
	if err := maglev.ValidTableSize(o.dp.MaglevSize); err != nil {
		return nil, fmt.Errorf("parse flags: --maglev-table-size: %w", err)
	}
	r, err := desired.ParsePortRange(o.snatPorts)
	if err != nil {
		return nil, err
	}
	o.dp.SNATPortMin, o.dp.SNATPortMax = r.Min, r.Max
	o.dp.PinPath = o.bpffs
	if err := o.dp.Validate(); err != nil {
		return nil, err
	}
	return o, nil
}

func uintFlag(dst *uint32) func(string) error {
	return func(s string) error {
		var v uint32
		if _, err := fmt.Sscan(s, &v); err != nil || v == 0 {
			return fmt.Errorf("want a positive number, got %q", s)
		}
		*dst = v
		return nil
	}
}

func newLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("parse log level: %w", err)
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.Encoding = "console"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.Sampling = nil
	return cfg.Build()
}

func main() {
	// A node agent's heap is mostly long-lived caches: collecting at 50% growth instead of 100%
	// keeps its footprint near the live set for little CPU. GOGC in the environment wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "sluice-agent:", err)
		os.Exit(2)
	}
	log, err := newLogger(o.logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice-agent:", err)
		os.Exit(2)
	}
	defer log.Sync()
	if o.cleanup {
		if err := datapath.Cleanup(o.bpffs, splitList(o.devices)); err != nil {
			log.Error("Cleanup failed", zap.Error(err))
			os.Exit(1)
		}
		log.Info("Removed sluice", zap.String("devices", o.devices), zap.String("bpffs", o.bpffs))
		return
	}
	if err := run(o, log); err != nil {
		log.Error("Agent failed", zap.Error(err))
		os.Exit(1)
	}
}

func run(o *options, log *zap.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	alog := log.Named("agent")
	alog.Info("Starting", zap.String("version", version), zap.String("node", o.nodeName),
		zap.String("devices", cmp.Or(o.devices, "(detect)")), zap.String("xdpMode", o.xdpMode), zap.String("bpffs", o.bpffs))

	mode, err := datapath.ParseXDPMode(o.xdpMode)
	if err != nil {
		return err
	}
	tcMode, err := datapath.ParseTCMode(o.tcAttach)
	if err != nil {
		return err
	}
	portRange, err := desired.ParsePortRange(o.nodePortRange)
	if err != nil {
		return err
	}
	nodePortCIDRs, err := parseCIDRs(o.nodePortAddrs)
	if err != nil {
		return err
	}
	if ok, err := datapath.ForwardingEnabled(); err == nil && !ok {
		alog.Warn("net.ipv4.ip_forward is 0: remote backends and local pods are unreachable until it is 1")
	}

	if lo, hi, err := datapath.LocalPortRange(); err == nil && o.dp.SNATPortMin <= hi && o.dp.SNATPortMax >= lo {
		alog.Warn("The SNAT port range overlaps net.ipv4.ip_local_port_range: replies to the node's own connections to a backend may be taken for SNAT flows",
			zap.String("snatPorts", o.snatPorts), zap.String("localPorts", fmt.Sprintf("%d-%d", lo, hi)))
	}
	// The source lists the API while the datapath loads: the tracker only collects until the
	// sync loop starts, after the programs are attached.
	tracker := proxy.NewTracker()
	var src source.Source
	if o.manifests != "" {
		src = source.NewManifests(o.manifests, log.Named("source"))
	} else {
		cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig) // "" and "": in-cluster
		if err != nil {
			return fmt.Errorf("load kubeconfig: %w", err)
		}
		cfg.QPS, cfg.Burst, cfg.UserAgent = float32(o.apiQPS), o.apiBurst, "sluice-agent/"+version
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return fmt.Errorf("create API client: %w", err)
		}
		src = source.NewKube(client, o.nodeName, log.Named("source"))
	}
	errc := make(chan error, 2)
	go func() {
		if err := src.Run(ctx, tracker); err != nil {
			errc <- fmt.Errorf("run source: %w", err)
		}
	}()

	dp, err := datapath.Load(o.dp, nil)
	if err != nil {
		return err
	}
	defer dp.Close()
	km := maps.NewKernel(&dp.Objs.SluiceMaps)
	km.MaglevSize = dp.Config.MaglevSize
	rec := reconciler.New(km, o.dp.MaxServices, o.dp.MaxBackends, log.Named("reconciler"))
	n, err := rec.Restore()
	if err != nil {
		return err
	}
	alog.Info("Restored state from pinned maps", zap.Int("services", n))
	if ifindex, mac, err := datapath.EnsureStackDevice(); err != nil {
		alog.Warn("No device to hand the kernel packets to fragment: translated packets too big for their next hop without DF are dropped (drop_frag_needed)", zap.Error(err))
	} else if err := dp.SetStackDevice(ifindex, mac); err != nil {
		return err
	} else if datapath.StrictReversePathFilter() {
		alog.Warn("net.ipv4.conf.all.rp_filter is 1 (strict): the kernel refuses the packets sluice hands it to fragment, so those too big for their next hop without DF are lost; 2 (loose) or 0 lets them through",
			zap.String("device", datapath.StackDevice))
	}

	dlog := log.Named("datapath")
	// The programs stay attached (pinned links, clsact filters) and keep serving with the
	// pinned maps when the agent stops: a restart or an upgrade drops no flow, and the next
	// agent swaps its programs in. `--cleanup` removes them.
	devs := &devices.Manager{DP: dp, Explicit: splitList(o.devices), XDP: mode, TC: tcMode, Log: log.Named("devices"),
		NodeIPs: func() []netip.Addr { return tracker.NodeAddresses(o.nodeName) }}
	defer devs.Release()
	// Following netlink from before the first look, so no change falls between the two.
	go func() {
		err := devices.Watch(ctx, func() {
			devs.Invalidate()
			tracker.Poke()
		})
		if err != nil {
			dlog.Error("Not following device changes any more", zap.Error(err))
		}
	}()
	if _, err := devs.Reconcile(); err != nil {
		return err
	}
	if len(devs.Names()) == 0 {
		alog.Warn("No device to attach to yet: none named by --devices exists, or none carries the node's addresses or default route; waiting for one")
	}

	if mig := dp.Migration; mig != nil {
		// The new programs run on the new maps now: carry over what the old ones wrote since
		// the copy, and pin the new maps in place.
		err := mig.Commit()
		for _, mm := range mig.Maps {
			dlog.Info("Migrated pinned map to this build's layout", zap.String("map", mm.Name), zap.String("change", mm.Reason),
				zap.Int("copied", mm.Copied), zap.Int("dropped", mm.Dropped))
		}
		if err != nil {
			return fmt.Errorf("commit map migration: %w", err)
		}
	}

	info := maps.AgentInfo{Version: version, Object: datapath.ObjectHash(), Started: time.Now(), PID: os.Getpid(), Config: dp.Config}
	writeInfo := func() error {
		info.Devices = deviceInfos(dp, devs.Attachments())
		return km.WriteAgentInfo(info)
	}
	if err := writeInfo(); err != nil {
		return err
	}
	defer func() {
		// The programs stay attached; only the agent is gone.
		info.PID = 0
		if err := km.WriteAgentInfo(info); err != nil {
			alog.Warn("Could not record the agent's exit", zap.Error(err))
		}
	}()

	reg := prometheus.NewRegistry()
	health := &metrics.Health{Stale: 3 * o.syncPeriod}
	// Like kube-proxy, the health check ports listen where the NodePorts are served (with
	// --nodeport-addresses; on every address without), following the devices' addresses.
	hcs := &healthcheck.Server{Healthy: health.Healthy, Log: log.Named("healthcheck")}
	defer hcs.Close()
	metrics.RegisterDatapath(reg, km)
	syncer := &proxy.Syncer{
		Metrics: metrics.NewSync(reg), Health: health,
		AfterFullSync: func(n int) {
			if n > 1000 {
				debug.FreeOSMemory() // a big rebuild leaves garbage the heap will not need again soon
			}
		},
		Tracker: tracker, Reconciler: rec, Options: desired.Options{NodeName: o.nodeName, NodePortRange: portRange, Maglev: o.maglev}, FullEvery: o.syncPeriod,
		Addresses: func() ([]netip.Addr, error) {
			// Devices come and go (hot-plug, a bond rebuilt) and the Node's addresses change:
			// follow them before reading the addresses NodePorts are served on.
			changed, err := devs.Reconcile()
			if err != nil {
				dlog.Warn("Could not attach to every device; retrying with the next sync", zap.Error(err))
			}
			if changed {
				if err := writeInfo(); err != nil {
					dlog.Warn("Could not record the devices", zap.Error(err))
				}
			}
			addrs, err := datapath.DeviceAddresses(devs.Names())
			addrs = filterAddresses(addrs, nodePortCIDRs)
			// (None left: the last ones stay; an empty list would mean every address.)
			if err == nil && len(nodePortCIDRs) > 0 && len(addrs) > 0 {
				hcs.SetAddresses(addrs)
			}
			return addrs, err
		},
		Log: log.Named("sync"),
	}
	syncer.HealthChecks = hcs.Sync
	runner := &proxy.Runner{
		MinInterval: o.minSync, MaxInterval: o.syncPeriod, Sync: syncer.Sync,
		OnError: func(err error, retry time.Duration) {
			log.Named("sync").Error("Sync failed", zap.Error(err), zap.Duration("retryIn", retry))
		},
	}
	if o.metricsAddr != "" {
		go func() {
			if err := metrics.Serve(ctx, o.metricsAddr, reg, health, log.Named("metrics")); err != nil {
				errc <- err
			}
		}()
	}
	runnerDone := make(chan struct{})
	go func() {
		runner.Run(ctx, tracker.Changed())
		close(runnerDone)
	}()
	// On the way out, let a sync in progress finish before the maps are closed.
	defer func() {
		stop()
		<-runnerDone
	}()

	select {
	case <-ctx.Done():
		alog.Info("Stopping: the datapath stays attached and keeps serving; --cleanup removes it", zap.String("bpffs", o.bpffs))
		return nil
	case err := <-errc:
		if ctx.Err() == nil {
			return err
		}
		return nil
	}
}

// deviceInfos describes the attachments for the agent-info map.
func deviceInfos(dp *datapath.Datapath, as []*datapath.Attachment) []maps.DeviceInfo {
	xdpID, tcInID, tcEgID := dp.ProgramIDs()
	var out []maps.DeviceInfo
	for _, a := range as {
		d := maps.DeviceInfo{Name: a.Device, Ifindex: a.Ifindex, XDPMode: string(a.XDP), XDPReason: a.Reason.String(), TCMode: a.TC,
			TCIngressProg: tcInID, TCEgressProg: tcEgID}
		if a.XDP != datapath.XDPOff {
			d.XDPProg = xdpID
		}
		out = append(out, d)
	}
	return out
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("parse --nodeport-addresses: %w", err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// filterAddresses keeps the addresses inside one of cidrs (all when there are none), as
// kube-proxy's --nodeport-addresses.
func filterAddresses(addrs []netip.Addr, cidrs []netip.Prefix) []netip.Addr {
	if len(cidrs) == 0 {
		return addrs
	}
	var out []netip.Addr
	for _, a := range addrs {
		for _, c := range cidrs {
			if c.Contains(a) {
				out = append(out, a)
				break
			}
		}
	}
	return out
}
