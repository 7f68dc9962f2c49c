package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/tools/bench/xdpfwd"
	"github.com/sluicelb/sluice/tools/controlplane"
	"github.com/sluicelb/sluice/tools/lab"
)

// A datapath under test on node1.
type dpKind struct {
	name, desc string
}

var (
	dpPlain   = dpKind{"plain", "kernel forwarding, no NAT: the client sends to the backend pod's address, routed through node1 (baseline)"}
	dpKPIPT   = dpKind{"kube-proxy-iptables", "the real kube-proxy v1.37 in iptables mode, the same Service and EndpointSlice objects"}
	dpKPNFT   = dpKind{"kube-proxy-nftables", "the real kube-proxy v1.37 in nftables mode, the same objects"}
	dpSluXDP  = dpKind{"sluice-xdp", "sluice-agent --xdp-mode native (XDP, with tc for what XDP cannot send)"}
	dpSluTC   = dpKind{"sluice-tc", "sluice-agent --xdp-mode off (tc ingress and egress only)"}
	dpBare    = dpKind{"bare-xdp", "a bare XDP forwarder on node1's eth0: fixed destinations, MAC rewrite, TTL, XDP_TX (the ceiling)"}
	datapaths = []dpKind{dpPlain, dpBare, dpSluXDP, dpSluTC, dpKPIPT, dpKPNFT}
)

// running is a started datapath.
type running struct {
	kind  dpKind
	e     *env
	agent *lab.Agent
	fwd   *xdpfwd.Forwarder
	start time.Time
}

// target is where a client sends for service s under this datapath.
func (r *running) target(s service) netip.AddrPort {
	switch r.kind {
	case dpPlain, dpBare:
		pod := r.e.l.Pod2IP
		if s.pod == "pod1" {
			pod = r.e.l.Pod1IP
		}
		return netip.AddrPortFrom(pod, s.targetPort)
	}
	return netip.AddrPortFrom(r.e.l.Node1IP, s.nodePort)
}

func (e *env) startDatapath(k dpKind) (*running, error) {
	r := &running{kind: k, e: e, start: time.Now()}
	l := e.l
	var err error
	switch k {
	case dpPlain:
	case dpBare:
		r.fwd, err = xdpfwd.Load([]xdpfwd.Rule{
			{Dst: l.Pod2IP, DstMAC: l.Node2MAC, SrcMAC: l.Node1MAC},
			{Dst: l.ClientIP, DstMAC: l.ClientMAC, SrcMAC: l.Node1MAC},
			{Dst: l.Pod1IP, Ifindex: e.vpod1Index, DstMAC: e.pod1MAC, SrcMAC: e.vpod1MAC},
		})
		if err == nil {
			if err = r.fwd.Attach(l.Node1.Path(), "eth0"); err != nil {
				r.fwd.Close()
				r.fwd = nil
			}
		}
		if err == nil {
			// Frames redirected into vpod1 need a program on its peer to be delivered at
			// once (as the lab does on the bridge's ports).
			err = setXDPPass(l.Pod1, "eth0")
		}
	case dpSluXDP, dpSluTC, dpSluSock, dpSluPod:
		mode := "native"
		extra := []string{"--kubeconfig", e.kubeconfig, "--nodeport-range", nodePortRange, "--max-services", "65536", "--log-level", "info"}
		switch k {
		case dpSluTC:
			mode = "off"
		case dpSluSock:
			// The agent's default device choice; pod1's connects never reach a device.
			mode = ""
			extra = append(extra, "--socket-lb-cgroup", e.podCgroup, "--kube-proxy-replacement")
		case dpSluPod:
			mode = ""
			extra = append(extra, "--kube-proxy-replacement")
		}
		r.agent, err = l.StartAgent(lab.AgentOptions{Binary: e.cfg.agentBin, XDPMode: mode, Extra: extra})
	case dpKPIPT, dpKPNFT:
		mode := strings.TrimPrefix(k.name, "kube-proxy-")
		r.agent, err = l.StartKubeProxy(lab.KubeProxyOptions{Binary: filepath.Join(controlplane.Bin(), "kube-proxy"),
			Kubeconfig: e.kubeconfig, Mode: mode, Extra: kubeProxyDualStack})
	default:
		err = fmt.Errorf("unknown datapath %s", k.name)
	}
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", k.name, err)
	}
	return r, nil
}

// waitServing polls until the measured services answer through the datapath, from the right
// backends, and (for sluice) until want frontends are in its maps; it returns the time since
// the datapath started.
func (r *running) waitServing(ctx context.Context, limit time.Duration, wantFrontends int) (time.Duration, error) {
	deadline := r.start.Add(limit)
	var last error
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		err := r.check(wantFrontends)
		if err == nil {
			return time.Since(r.start), nil
		}
		last = err
		if r.agent != nil && r.agent.Exited() {
			return 0, fmt.Errorf("%s exited: %v\n%s", r.kind.name, last, tail(r.agent.Logs(), 3000))
		}
		if time.Now().After(deadline) {
			return time.Since(r.start), fmt.Errorf("%s not serving after %v: %w", r.kind.name, limit, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *running) check(wantFrontends int) error {
	l := r.e.l
	// The quick check first (a refused connection comes back at once).
	c, err := lab.OpenTCP(l.Client, r.target(svcHTTP))
	if err != nil {
		return err
	}
	c.Close()
	body, err := lab.HTTPGet(l.Client, r.target(svcHTTP))
	if err != nil {
		return err
	}
	if who, _, err := lab.ParseReply(body); err != nil || who != "pod2" {
		return fmt.Errorf("http answered by %q (%v), want pod2", who, err)
	}
	for _, s := range []service{svcUDP, svcUDPLocal} {
		body, err := lab.UDPRequest(l.Client, r.target(s), "hello")
		if err != nil {
			return err
		}
		if who, _, err := lab.ParseReply(body); err != nil || who != s.pod {
			return fmt.Errorf("%s answered by %q (%v), want %s", s.name, who, err, s.pod)
		}
	}
	if wantFrontends > 0 && r.agent != nil && strings.HasPrefix(r.kind.name, "sluice") {
		objs, err := datapath.OpenPinned(l.PinDir(), true)
		if err != nil {
			return err
		}
		defer objs.Close()
		fes, err := maps.NewKernel(objs).Frontends()
		if err != nil {
			return err
		}
		if len(fes) < wantFrontends {
			return fmt.Errorf("%d frontends in the maps, want %d", len(fes), wantFrontends)
		}
	}
	return nil
}

// errOverBudget: the proxy did not program something within the sweep's budget.
var errOverBudget = errors.New("over budget")

// newConnections creates a service of its own (see newConnService), waits until the datapath
// serves it (returning how long that took: a change's programming latency) and runs wrk with
// a new connection per request through it.
func (r *running) newConnections(ctx context.Context) (*Wrk, time.Duration, error) {
	s, del, err := r.e.newConnService(ctx)
	if err != nil {
		return nil, 0, err
	}
	defer del()
	t0 := time.Now()
	var served time.Duration
	for {
		body, err := lab.HTTPGet(r.e.l.Client, r.target(s))
		if err == nil {
			if who, _, perr := lab.ParseReply(body); perr != nil || who != "pod2" {
				err = fmt.Errorf("answered by %q (%v)", who, perr)
			}
		}
		if err == nil {
			served = time.Since(t0)
			break
		}
		if r.agent != nil && r.agent.Exited() {
			return nil, 0, fmt.Errorf("%s exited: %s", r.kind.name, tail(r.agent.Logs(), 2000))
		}
		if time.Since(t0) > r.e.cfg.sweepBudget {
			return nil, time.Since(t0), fmt.Errorf("new service %s not served through %s within %v (%w): %v", s.name, r.kind.name, r.e.cfg.sweepBudget, errOverBudget, err)
		}
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		time.Sleep(20 * time.Millisecond)
	}
	cpu0 := cpuSeconds(r.pid())
	w, err := runWrk(ctx, r.e.l.Client, "http://"+r.target(s).String()+"/", r.e.cfg.connSeconds, r.e.cfg.wrkConns, false)
	if w != nil && r.pid() != 0 {
		w.ProxyCPUSecs = cpuSeconds(r.pid()) - cpu0
	}
	if w != nil {
		w.Endpoints = len(r.e.pod2Addrs)
		if r.kind == dpPlain || r.kind == dpBare {
			w.Endpoints = 1 // straight to one of pod2's addresses
		}
	}
	return w, served, err
}

// reasons reads sluice's datapath counters (the non-zero ones).
func (r *running) reasons() map[string]uint64 {
	if !strings.HasPrefix(r.kind.name, "sluice") {
		return nil
	}
	objs, err := datapath.OpenPinned(r.e.l.PinDir(), true)
	if err != nil {
		return nil
	}
	defer objs.Close()
	rs, err := maps.NewKernel(objs).Reasons()
	if err != nil {
		return nil
	}
	out := map[string]uint64{}
	for k, v := range rs {
		if v != 0 {
			out[maps.ReasonNames[k]] = v
		}
	}
	return out
}

// stop ends the datapath and removes what it left on node1 (rules, pins, connection
// tracking), so the next one starts from a clean node.
func (r *running) stop() error {
	l := r.e.l
	var errs []error
	if r.fwd != nil {
		errs = append(errs, r.fwd.Close(), clearXDP(l.Pod1, "eth0"))
	}
	if r.agent != nil {
		if err := r.agent.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w\n%s", r.kind.name, err, tail(r.agent.Logs(), 2000)))
		}
	}
	switch r.kind {
	case dpSluXDP, dpSluTC, dpSluSock, dpSluPod: // the socket programs' and pods' links go with the rest
		if out, err := l.Cleanup(r.e.cfg.agentBin); err != nil {
			errs = append(errs, fmt.Errorf("sluice-agent --cleanup: %w: %s", err, out))
		}
	case dpKPIPT, dpKPNFT:
		out, err := exec.Command("nsenter", "--net="+l.Node1.Path(), filepath.Join(controlplane.Bin(), "kube-proxy"), "--cleanup").CombinedOutput()
		// --cleanup leaves empty tables and a KUBE-FIREWALL chain; empty tables still hook
		// netfilter (and a nat table keeps connection tracking on). The lab's node1 had no
		// rules before: it gets none after.
		if out, err := exec.Command("nsenter", "--net="+l.Node1.Path(), "nft", "flush", "ruleset").CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("nft flush ruleset: %w: %s", err, out))
		}
		if out, _ := exec.Command("nsenter", "--net="+l.Node1.Path(), "nft", "list", "ruleset").Output(); len(strings.TrimSpace(string(out))) > 0 {
			errs = append(errs, fmt.Errorf("rules left on node1 after kube-proxy:\n%s", tail(string(out), 1500)))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("kube-proxy --cleanup: %w: %s", err, tail(string(out), 2000)))
		}
	}
	// Forget every connection the kernel tracked (kube-proxy's NAT bindings above all).
	if out, err := exec.Command("nsenter", "--net="+l.Node1.Path(), "conntrack", "-F").CombinedOutput(); err != nil &&
		!strings.Contains(string(out), "0 flow entries") {
		errs = append(errs, fmt.Errorf("conntrack -F: %w: %s", err, out))
	}
	return errors.Join(errs...)
}

func (r *running) pid() int {
	if r.agent == nil {
		return 0
	}
	return r.agent.PID()
}

// kubeProxySyncSeconds reads kube-proxy's own full-sync duration (its IPv4 proxier's
// histogram, sum over count: the first sync's when there was one) from its metrics on node1's
// 127.0.0.1:10259, waiting a little for it to appear.
func (r *running) kubeProxySyncSeconds() (float64, int, error) {
	var last error
	for i := 0; i < 30; i++ {
		status, body, err := lab.HTTPGetPath(r.e.l.Node1, netip.MustParseAddrPort("127.0.0.1:10259"), "/metrics")
		if err == nil && status != 200 {
			err = fmt.Errorf("kube-proxy /metrics: %d", status)
		}
		if err == nil {
			const name = "kubeproxy_sync_full_proxy_rules_duration_seconds"
			sum := metricValue(body, name+`_sum{ip_family="IPv4"}`)
			count := metricValue(body, name+`_count{ip_family="IPv4"}`)
			if sum >= 0 && count > 0 {
				return sum / count, int(count), nil
			}
			err = errors.New("kube-proxy /metrics: no full sync duration yet")
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return 0, 0, last
}

func metricValue(body, name string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` ([0-9.eE+-]+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return -1
	}
	return v
}

// cpuSeconds is the CPU time (user and system) process pid has used.
func cpuSeconds(pid int) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces) in parentheses: utime is the 14th
	// field of the line, stime the 15th, in clock ticks (USER_HZ, 100 on Linux).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

func rssMB(pid int) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
