package cluster

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Served is what sluice itself translated during an e2e run, per node: the suite passes with
// kube-proxy beside sluice either way, so the report shows that sluice, not only kube-proxy,
// carried the tests' NodePort traffic. Tests delete their Services, and sluice's per-service
// counters with them, so the agents' metrics are sampled while the suite runs.
type Served struct {
	mu   sync.Mutex
	peak map[string]map[string]float64 // node -> service -> highest packet count seen
}

// ServedOn is one node's share.
type ServedOn struct {
	Node     string
	Services int     // service ports that translated at least one packet
	Packets  float64 // client packets translated (at least: the last counts before a deletion may be missed)
	// Packets6 are those of Packets that were IPv6 (the service ports' IPv6 entries).
	Packets6 float64
}

// sample polls every agent's /metrics until ctx ends.
func (s *Served) sample(ctx context.Context, every time.Duration) {
	s.peak = map[string]map[string]float64{}
	clients := map[string]*http.Client{}
	for _, n := range Nodes {
		dial := dialIn(n.Name)
		clients[n.Name] = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return dial(ctx, network, addr) }}}
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		for _, n := range Nodes {
			s.scrape(n.Name, clients[n.Name])
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Served) scrape(node string, c *http.Client) {
	// The agent's metrics address as the DaemonSet sets it, in the node's network namespace.
	resp, err := c.Get("http://127.0.0.1:9871/metrics")
	if err != nil {
		return
	}
	defer resp.Body.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.peak[node] == nil {
		s.peak[node] = map[string]float64{}
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		// sluice_service_packets_total{family="IPv4",scope="external",service="ns/name:port"} N:
		// the packet path's share (socket LB translates no packet). The labels name a series.
		rest, ok := strings.CutPrefix(sc.Text(), `sluice_service_packets_total{`)
		if !ok {
			continue
		}
		labels, val, ok := strings.Cut(rest, `} `)
		if !ok {
			continue
		}
		svc := labels
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err == nil && v > s.peak[node][svc] {
			s.peak[node][svc] = v
		}
	}
}

// PerNode sums the samples by node, in the nodes' order.
func (s *Served) PerNode() []ServedOn {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []ServedOn
	for _, n := range Nodes {
		o := ServedOn{Node: n.Name}
		for labels, v := range s.peak[n.Name] {
			if v > 0 {
				o.Services++
				o.Packets += v
				if strings.Contains(labels, `family="IPv6"`) {
					o.Packets6 += v
				}
			}
		}
		out = append(out, o)
	}
	return out
}

// String is the report's line.
func (s *Served) String() string {
	var parts []string
	for _, o := range s.PerNode() {
		part := fmt.Sprintf("%s: %.0f packets for %d service ports", o.Node, o.Packets, o.Services)
		if o.Packets6 > 0 {
			part += fmt.Sprintf(" (%.0f of them IPv6)", o.Packets6)
		}
		parts = append(parts, part)
	}
	return strings.Join(parts, "; ")
}
