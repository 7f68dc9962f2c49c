package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/go-logr/zapr"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/devices"
	"github.com/sluicelb/sluice/internal/healthcheck"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/metrics"
	"github.com/sluicelb/sluice/internal/proxy"
	"github.com/sluicelb/sluice/internal/proxyhealth"
	"github.com/sluicelb/sluice/internal/reconciler"
	"github.com/sluicelb/sluice/internal/sockterm"
	"github.com/sluicelb/sluice/internal/source"
)

// NewLogger is the agent's logger at level (debug, info, warn, error) on stderr.
func NewLogger(level string) (*zap.Logger, error) { return newLoggerTo(level, zapcore.Lock(os.Stderr)) }

// newLoggerTo writes console lines with ISO 8601 times, unsampled, to w. No stack traces: an
// error says what failed and where in its message, and a skipped object logged with the
// logging call's stack (zap's production default at error level) buried it.
func newLoggerTo(level string, w zapcore.WriteSyncer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("parse log level: %w", err)
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), w, lvl), zap.AddCaller()), nil
}

// RouteKlog sends client-go's log (klog: watch failures, RBAC refusals, throttling) into log,
// named client-go: otherwise it goes to stderr in another format, or nowhere.
func RouteKlog(log *zap.Logger) { klog.SetLogger(zapr.NewLogger(log.Named("client-go"))) }

// Cleanup is --cleanup: the programs come off the devices and the pins go.
func Cleanup(o *Options) error { return datapath.Cleanup(o.BPFFS, o.deviceList) }

// Run is the agent: it loads the datapath (migrating pinned maps of an older build), restores
// what the maps hold, attaches to the devices, and keeps the maps in step with the objects
// until ctx ends (SIGTERM). The programs stay attached when it returns. version is recorded in
// the maps for sluicectl.
func Run(ctx context.Context, o *Options, version string, log *zap.Logger) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	alog := log.Named("agent")
	alog.Info("Starting", zap.String("version", version), zap.String("node", o.NodeName),
		zap.String("devices", cmp.Or(o.Devices, "(detect)")), zap.String("xdpMode", o.XDPMode), zap.String("bpffs", o.BPFFS))

	if _, err := os.Stat(filepath.Join(o.ProcFS, "sys", "net")); err != nil {
		return fmt.Errorf("find the node's procfs (--procfs): %w", err)
	}
	datapath.SetProcFS(o.ProcFS)
	mode, tcMode, portRange, nodePortCIDRs := o.xdp, o.tc, o.portRange, o.nodePortCIDRs
	if ok, err := datapath.ForwardingEnabled(); err == nil && !ok {
		alog.Warn("net.ipv4.ip_forward is 0: remote backends and local pods are unreachable until it is 1")
	}

	if o.DP.SNATPortMin <= portRange.Max && o.DP.SNATPortMax >= portRange.Min {
		alog.Warn("The SNAT port range overlaps the NodePort range: a flow SNATed to a port that is also a NodePort works, but the port is held in both roles",
			zap.String("snatPorts", o.SNATPorts), zap.String("nodePorts", portRange.String()))
	}
	if lo, hi, err := datapath.LocalPortRange(); err == nil && o.DP.SNATPortMin <= hi && o.DP.SNATPortMax >= lo {
		alog.Warn("The SNAT port range overlaps net.ipv4.ip_local_port_range: replies to the node's own connections to a backend may be taken for SNAT flows",
			zap.String("snatPorts", o.SNATPorts), zap.String("localPorts", fmt.Sprintf("%d-%d", lo, hi)))
	}
	// The source lists the API while the datapath loads: the tracker only collects until the
	// sync loop starts, after the programs are attached.
	tracker := proxy.NewTracker()
	// kube-proxy's node health server: a change queued and not programmed within two sync
	// periods is unhealthy, as kube-proxy times it (cmd/kube-proxy/app/server.go).
	nodeHealth := proxyhealth.New(2*o.SyncPeriod, func() *v1.Node { return tracker.Node(o.NodeName) }, nil, log.Named("proxyhealth"))
	tracker.Queued = nodeHealth.QueuedUpdate
	var src source.Source
	if o.Manifests != "" {
		src = source.NewManifests(o.Manifests, log.Named("source"))
	} else {
		RouteKlog(log)
		cfg, err := restConfig(o.Kubeconfig, o.APIServer)
		if err != nil {
			return err
		}
		cfg.QPS, cfg.Burst, cfg.UserAgent = float32(o.APIQPS), o.APIBurst, "sluice-agent/"+version
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return fmt.Errorf("create API client: %w", err)
		}
		src = source.NewKube(client, o.NodeName, log.Named("source"))
	}
	errc := make(chan error, 2)
	go func() {
		if err := src.Run(ctx, tracker); err != nil {
			errc <- fmt.Errorf("run source: %w", err)
		}
	}()

	release, err := lockPinPath(ctx, o.BPFFS, alog)
	if err != nil {
		return err
	}
	defer release()
	o.DP.PodPrograms = o.KubeProxyReplacement && o.PodDevices
	dp, err := datapath.Load(o.DP, nil)
	if err != nil {
		return err
	}
	defer dp.Close()
	km := maps.NewKernel(&dp.Objs.SluiceMaps)
	km.MaglevSize = dp.Config.MaglevSize
	// Before Restore: a previous agent's IPv6 entries are restored with IPv4's.
	v6, err := loadIPv6(dp, km, o.ipv6, alog)
	if err != nil {
		return err
	}
	if v6 != nil {
		defer v6.Close()
	}
	rec := reconciler.New(km, o.DP.MaxServices, o.DP.MaxBackends, log.Named("reconciler"))
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
	devs := &devices.Manager{DP: dp, Explicit: o.deviceList, XDP: mode, TC: tcMode, Log: log.Named("devices"),
		Pods:    o.KubeProxyReplacement && o.PodDevices,
		NodeIPs: func() []netip.Addr { return tracker.NodeAddresses(o.NodeName) }}
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
	sock, err := setupSocketLB(dp, o.SocketLBCgroup,
		datapath.SocketLBConfig{LocalhostNodePorts: o.LocalhostNodePorts, HostNamespaceOnly: o.SocketLBHostOnly}, v6 != nil, dlog)
	if err != nil {
		return err
	}
	if sock.revnat != nil {
		defer sock.revnat.Close()
		if sock.revnat6 != nil {
			defer sock.revnat6.Close()
		}
		// UDP sockets pointed at an endpoint that stopped serving end with its flows.
		t := &sockterm.Terminator{Revnat: sock.revnat, Revnat6: sock.revnat6, ProcFS: o.ProcFS, Log: log.Named("sockterm")}
		rec.Terminate = t.Terminate
	}
	rec.FlushInBackground(ctx) // a flush walks the whole connection table: not on the sync loop

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
	health := &metrics.Health{Stale: 3 * o.SyncPeriod}
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
		Tracker: tracker, Reconciler: rec, Options: desired.Options{NodeName: o.NodeName, NodePortRange: portRange, Maglev: o.maglev,
			ClusterIPs: o.KubeProxyReplacement, NodeClients: o.SocketLBCgroup != "" || devs.Pods, LocalhostNodePorts: sock.localhost,
			IPv6: v6 != nil}, FullEvery: o.SyncPeriod,
		NodeZone: func() string { return tracker.NodeZone(o.NodeName) },
		Addresses: func() ([]netip.Addr, error) {
			// Devices come and go (hot-plug, a bond rebuilt) and the Node's addresses change:
			// follow them before reading the addresses NodePorts are served on. The pods'
			// devices from the first sync on, when the Node's addresses tell NICs from pods.
			devs.EnablePods()
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
			if o.nodePortPrimary {
				var devPrimaries []netip.Addr
				for _, d := range devs.Names() {
					for _, f := range []lb.Family{lb.IPv4, lb.IPv6} {
						if a, ok := datapath.PrimaryAddress(d, f); ok {
							devPrimaries = append(devPrimaries, a)
						}
					}
				}
				addrs = primaryAddresses(addrs, tracker.NodeAddresses(o.NodeName), devPrimaries)
			}
			// (None left: the last ones stay; an empty list would mean every address.)
			if err == nil && (len(nodePortCIDRs) > 0 || o.nodePortPrimary) && len(addrs) > 0 {
				hcs.SetAddresses(addrs)
			}
			return addrs, err
		},
		Log: log.Named("sync"),
	}
	syncer.HealthChecks = hcs.Sync
	syncer.Updated = nodeHealth.Updated
	runner := &proxy.Runner{
		MinInterval: o.MinSync, MaxInterval: o.SyncPeriod, Sync: syncer.Sync,
		OnError: func(err error, retry time.Duration) {
			log.Named("sync").Error("Sync failed", zap.Error(err), zap.Duration("retryIn", retry))
		},
	}
	if o.MetricsAddr != "" {
		go func() {
			if err := metrics.Serve(ctx, o.MetricsAddr, reg, health, log.Named("metrics")); err != nil {
				errc <- err
			}
		}()
	}
	// As kube-proxy's sync loop does at its start: from here, a change queued and never
	// programmed (a first sync that keeps failing) makes the node unhealthy.
	nodeHealth.Updated()
	if o.healthzAddr != "" {
		// Kept trying in the background: kube-proxy may hold the address while a cluster
		// migrates, and the datapath must not wait for it.
		go nodeHealth.Run(ctx, o.healthzAddr)
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
		alog.Info("Stopping: the datapath stays attached and keeps serving; --cleanup removes it", zap.String("bpffs", o.BPFFS))
		return nil
	case err := <-errc:
		if ctx.Err() == nil {
			return err
		}
		return nil
	}
}

// lockPinPath takes the --bpffs lock, waiting while another agent holds it (a rolling update
// that starts the new pod before the old one has gone): two agents on one set of maps would
// undo each other's writes.
func lockPinPath(ctx context.Context, dir string, log *zap.Logger) (func(), error) {
	logged := false
	for {
		release, err := datapath.LockPinPath(dir)
		if err == nil {
			return release, nil
		}
		if !errors.Is(err, datapath.ErrPinPathLocked) {
			return nil, err
		}
		if !logged {
			log.Warn("Another sluice-agent holds --bpffs; waiting for it to exit", zap.String("bpffs", dir))
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for --bpffs %s: %w", dir, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
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

// loadIPv6 loads the IPv6 datapath beside dp and has km write to it when --ipv6 says so (auto:
// when the node has a global IPv6 address), or stops what a previous agent served of IPv6.
// Its programs live on in pinned arrays when the agent stops.
func loadIPv6(dp *datapath.Datapath, km *maps.Kernel, mode ipv6Mode, log *zap.Logger) (*datapath.IPv6, error) {
	serve, why := mode == ipv6On, "--ipv6"
	if mode == ipv6Auto {
		has, err := datapath.HasGlobalIPv6()
		if err != nil {
			return nil, err
		}
		serve, why = has, "--ipv6 auto: a global IPv6 address on the node"
		if !has {
			why = "--ipv6 auto: no global IPv6 address on the node as the agent starts"
		}
	}
	if !serve {
		log.Info("IPv6 not served", zap.String("why", why))
		return nil, dp.StopIPv6()
	}
	v6, err := dp.LoadIPv6()
	if err != nil {
		return nil, err
	}
	km.WithIPv6(&v6.Objs.Sluice6Maps)
	log.Info("IPv6 served", zap.String("why", why))
	return v6, nil
}

// primaryAddresses is `--nodeport-addresses primary` (kube-proxy's nftables default): of the
// device addresses of each family, the Node's own (InternalIP, ExternalIP), or while the Node
// has none of that family, each device's primary address (not a secondary one, such as a
// floating VIP).
func primaryAddresses(addrs, nodeIPs, devPrimaries []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, f := range []lb.Family{lb.IPv4, lb.IPv6} {
		var fam []netip.Addr
		for _, a := range addrs {
			if lb.FamilyOf(a) == f && slices.Contains(nodeIPs, a) {
				fam = append(fam, a)
			}
		}
		if len(fam) == 0 {
			for _, a := range addrs {
				if lb.FamilyOf(a) == f && slices.Contains(devPrimaries, a) {
					fam = append(fam, a)
				}
			}
		}
		out = append(out, fam...)
	}
	return out
}

// filterAddresses keeps the addresses inside one of cidrs, as kube-proxy's --nodeport-addresses:
// each family by its own CIDRs, all of a family no CIDR of which is given.
func filterAddresses(addrs []netip.Addr, cidrs []netip.Prefix) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		f, named, in := lb.FamilyOf(a), false, false
		for _, c := range cidrs {
			if lb.FamilyOf(c.Addr()) == f {
				named = true
				in = in || c.Contains(a)
			}
		}
		if in || !named {
			out = append(out, a)
		}
	}
	return out
}

// socketLB is what setupSocketLB leaves the agent: the reverse maps (nil without socket LB;
// revnat6 nil without the IPv6 socket programs), what the sockets were pointed at, and
// whether NodePorts are served on loopback.
type socketLB struct {
	revnat, revnat6 *ebpf.Map
	localhost       bool
}

// setupSocketLB attaches the socket programs to the cgroup, or, with none given, takes away
// what a previous agent attached.
func setupSocketLB(dp *datapath.Datapath, cgroup string, c datapath.SocketLBConfig, ipv6 bool, log *zap.Logger) (socketLB, error) {
	if cgroup == "" {
		dp.DetachSocketLB()
		return socketLB{}, nil
	}
	cgroup, err := cgroup2Dir(cgroup)
	if err != nil {
		return socketLB{}, err
	}
	s, err := dp.LoadSocketLB(c)
	if err != nil {
		return socketLB{}, err
	}
	defer s.Close() // the pinned links hold the programs
	// With IPv6 off they still balance IPv4-mapped addresses (IPv6 sockets to IPv4 services).
	if err := dp.LoadSocketLB6(s); err != nil {
		if ipv6 {
			return socketLB{}, err
		}
		log.Warn("Not balancing IPv6 sockets' IPv4-mapped addresses (Java's way to IPv4 services)", zap.Error(err))
		dp.DetachSocketLB6() // a previous agent's
	}
	if err := dp.AttachSocketLB(s, cgroup); err != nil {
		return socketLB{}, err
	}
	log.Info("Balancing sockets", zap.String("cgroup", cgroup), zap.Bool("ipv6", ipv6), zap.Bool("ipv4MappedOnIPv6Sockets", s.Revnat6() != nil),
		zap.Bool("localhostNodePorts", s.Localhost), zap.Bool("hostNamespaceOnly", c.HostNamespaceOnly))
	if c.LocalhostNodePorts && !s.Localhost {
		log.Warn("Not serving NodePorts on 127.0.0.1: this kernel cannot tell the node's network namespace from a pod's (SO_NETNS_COOKIE, Linux 5.14)")
	}
	out := socketLB{localhost: s.Localhost}
	if out.revnat, err = s.Revnat().Clone(); err != nil {
		return socketLB{}, fmt.Errorf("open socket reverse map: %w", err)
	}
	if m := s.Revnat6(); m != nil {
		if out.revnat6, err = m.Clone(); err != nil {
			out.revnat.Close()
			return socketLB{}, fmt.Errorf("open IPv6 socket reverse map: %w", err)
		}
	}
	return out, nil
}

// restConfig is the kubeconfig's, else the in-cluster config; apiServer, if set, replaces the
// server either names (in-cluster: the kubernetes Service's ClusterIP).
func restConfig(kubeconfig, apiServer string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags(apiServer, kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig: %w", err)
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("load in-cluster config: %w", err)
	}
	if apiServer != "" {
		cfg.Host = apiServer
	}
	return cfg, nil
}

// cgroup2Dir is dir if it is in a cgroup v2 hierarchy, else its unified/ if that is one: a
// hybrid host (cgroup v1 controllers, systemd's v2 hierarchy at unified/) mounted whole, as
// the kube-proxy-free DaemonSet mounts the node's /sys/fs/cgroup.
func cgroup2Dir(dir string) (string, error) {
	var st unix.Statfs_t
	for _, d := range []string{dir, filepath.Join(dir, "unified")} {
		if err := unix.Statfs(d, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return d, nil
		} else if err != nil && d == dir {
			return "", fmt.Errorf("find --socket-lb-cgroup: %w", err)
		}
	}
	return "", fmt.Errorf("find --socket-lb-cgroup: %s is not in a cgroup v2 hierarchy (nor is its unified/)", dir)
}
