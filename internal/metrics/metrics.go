// Package metrics owns the agent's Prometheus metrics and its /metrics, /healthz and /readyz
// endpoints: sync timings and what is programmed, pushed by the sync loop, and the datapath's
// per-CPU counters and map fill, read from the maps at each scrape.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/maps"
)

// Sync holds what the sync loop reports.
type Sync struct {
	Duration           prometheus.Histogram
	ProgrammingLatency prometheus.Histogram
	Errors             prometheus.Counter
	Services           prometheus.Gauge
	Backends           prometheus.Gauge
	Frontends          prometheus.Gauge
	FailedServices     *prometheus.GaugeVec
	LastSync           prometheus.Gauge
}

// NewSync registers the sync metrics on reg.
func NewSync(reg prometheus.Registerer) *Sync {
	s := &Sync{
		Duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sluice_sync_duration_seconds", Help: "Time to build the desired state and write the maps, per sync.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
		ProgrammingLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sluice_network_programming_duration_seconds",
			Help:    "From an EndpointSlice or Service change (the slice's last-change-trigger-time when set, else when the agent saw it) to its map write, as kube-proxy's network_programming_duration_seconds.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		Errors:    prometheus.NewCounter(prometheus.CounterOpts{Name: "sluice_sync_errors_total", Help: "Syncs that did not apply everything."}),
		Services:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "sluice_services_programmed", Help: "Service ports in the datapath."}),
		Backends:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "sluice_backends_programmed", Help: "Backends in the datapath."}),
		Frontends: prometheus.NewGauge(prometheus.GaugeOpts{Name: "sluice_frontends_programmed", Help: "Frontends (service ports x node addresses) in the datapath."}),
		FailedServices: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sluice_services_failed",
			Help: "Service ports the last sync could not write, by reason (map_full, other)."}, []string{"reason"}),
		LastSync: prometheus.NewGauge(prometheus.GaugeOpts{Name: "sluice_last_sync_timestamp_seconds", Help: "When the last successful sync ended."}),
	}
	reg.MustRegister(s.Duration, s.ProgrammingLatency, s.Errors, s.Services, s.Backends, s.Frontends, s.FailedServices, s.LastSync)
	return s
}

// datapathCollector reads the maps at scrape time.
type datapathCollector struct {
	m                                        *maps.Kernel
	pkts, bytes, rpkts, rbytes, rejected     *prometheus.Desc
	reasons, entries, maxEntries, scrapeErrs *prometheus.Desc
	devices                                  *prometheus.Desc
}

// RegisterDatapath adds the datapath's counters and map fill to reg.
func RegisterDatapath(reg prometheus.Registerer, m *maps.Kernel) {
	// One service port has an entry per scope (external, internal: its ClusterIPs, node) and
	// per family (IPv4, IPv6), each with its own counters: the name alone would repeat a
	// series, and /metrics would fail. (The reason counters are one set for both families.)
	svc := []string{"service", "scope", "family"}
	reg.MustRegister(&datapathCollector{
		m:          m,
		pkts:       prometheus.NewDesc("sluice_service_packets_total", "Packets from clients to the service.", svc, nil),
		bytes:      prometheus.NewDesc("sluice_service_bytes_total", "Bytes from clients to the service.", svc, nil),
		rpkts:      prometheus.NewDesc("sluice_service_reply_packets_total", "Packets from backends back to clients.", svc, nil),
		rbytes:     prometheus.NewDesc("sluice_service_reply_bytes_total", "Bytes from backends back to clients.", svc, nil),
		rejected:   prometheus.NewDesc("sluice_service_rejected_total", "Connections refused for lack of an endpoint.", svc, nil),
		reasons:    prometheus.NewDesc("sluice_datapath_packets_total", "Packets not simply translated, by reason (pass_*, reject_*, drop_*).", []string{"reason"}, nil),
		entries:    prometheus.NewDesc("sluice_map_entries", "Entries in a datapath map.", []string{"map"}, nil),
		maxEntries: prometheus.NewDesc("sluice_map_max_entries", "Capacity of a datapath map.", []string{"map"}, nil),
		scrapeErrs: prometheus.NewDesc("sluice_datapath_scrape_error", "1 if reading the datapath failed in this scrape.", nil, nil),
		devices: prometheus.NewDesc("sluice_device_info", "A device the datapath is attached to: its XDP mode (off: tc only), why (xdp_reason: flag, native-driver, veth, virtual-device, unknown-driver, attach-failed) and the tc attachment.",
			[]string{"device", "xdp_mode", "xdp_reason", "tc_mode"}, nil),
	})
}

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.pkts, c.bytes, c.rpkts, c.rbytes, c.rejected, c.reasons, c.entries, c.maxEntries, c.scrapeErrs, c.devices} {
		ch <- d
	}
}

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	failed := 0.0
	if err := c.collect(ch); err != nil {
		failed = 1
	}
	ch <- prometheus.MustNewConstMetric(c.scrapeErrs, prometheus.GaugeValue, failed)
}

func (c *datapathCollector) collect(ch chan<- prometheus.Metric) error {
	infos, err := c.m.ServiceInfos()
	if err != nil {
		return err
	}
	for id, info := range infos {
		st, err := c.m.ServiceStats(id)
		if err != nil {
			return err
		}
		name := info.Name
		for _, v := range []struct {
			d *prometheus.Desc
			n uint64
		}{{c.pkts, st.Packets}, {c.bytes, st.Bytes}, {c.rpkts, st.ReplyPackets}, {c.rbytes, st.ReplyBytes}, {c.rejected, st.Rejected}} {
			ch <- prometheus.MustNewConstMetric(v.d, prometheus.CounterValue, float64(v.n), name, scopeName(info.Scope), info.Family.String())
		}
	}
	reasons, err := c.m.Reasons()
	if err != nil {
		return err
	}
	for r, n := range reasons {
		ch <- prometheus.MustNewConstMetric(c.reasons, prometheus.CounterValue, float64(n), maps.ReasonNames[r])
	}
	fill, err := c.m.Fill()
	if err != nil {
		return err
	}
	agent, err := c.m.AgentInfo()
	if err != nil {
		return err
	}
	for _, d := range agent.Devices {
		ch <- prometheus.MustNewConstMetric(c.devices, prometheus.GaugeValue, 1, d.Name, d.XDPMode, d.XDPReason, d.TCMode)
	}
	for _, f := range fill {
		ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(f.Entries), f.Name)
		ch <- prometheus.MustNewConstMetric(c.maxEntries, prometheus.GaugeValue, float64(f.MaxEntries), f.Name)
	}
	return nil
}

// scopeName is a desired.Scope's name (maps.ServiceInfo.Scope).
func scopeName(s uint8) string {
	switch s {
	case 0:
		return "external"
	case 1:
		return "internal"
	case 2:
		return "node"
	}
	return strconv.Itoa(int(s))
}

// Health is what /healthz and /readyz answer from.
type Health struct {
	ready    atomic.Bool
	lastSync atomic.Int64 // unix nanoseconds
	// Stale is how long without a successful sync /healthz tolerates.
	Stale time.Duration
}

// Synced records a successful sync; the first one makes the agent ready.
func (h *Health) Synced(t time.Time) {
	h.lastSync.Store(t.UnixNano())
	h.ready.Store(true)
}

// Healthy is what /healthz answers: not ready yet, or synced within Stale.
func (h *Health) Healthy() bool {
	return !h.ready.Load() || time.Since(time.Unix(0, h.lastSync.Load())) <= h.Stale
}

func (h *Health) healthz(w http.ResponseWriter, _ *http.Request) {
	last := h.lastSync.Load()
	if h.ready.Load() && time.Since(time.Unix(0, last)) > h.Stale {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "no successful sync for %v\n", time.Since(time.Unix(0, last)).Round(time.Second))
		return
	}
	fmt.Fprintln(w, "ok")
}

func (h *Health) readyz(w http.ResponseWriter, _ *http.Request) {
	if !h.ready.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "waiting for the first full sync")
		return
	}
	fmt.Fprintln(w, "ok")
}

// Serve runs the HTTP endpoints on addr until ctx is done.
func Serve(ctx context.Context, addr string, reg *prometheus.Registry, h *Health, log *zap.Logger) error {
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", h.healthz)
	mux.HandleFunc("/readyz", h.readyz)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("Serving metrics and health", zap.String("addr", ln.Addr().String()))
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve metrics: %w", err)
	}
	return nil
}
