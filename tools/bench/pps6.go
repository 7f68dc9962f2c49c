package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/lab"
)

// IPv6 packet rate: the lab is dual-stack (lab.UpDualStack), and the remote and local
// measurements run again with IPv6 frames against single-stack IPv6 services of their own,
// beside the IPv4 ones in the same API server. Same generator (64-byte UDP frames, the same
// flows: source ports), same sinks, matched on the backends' IPv6 addresses. kube-proxy runs
// both its proxiers (iptables and ip6tables, or nftables' ip and ip6 tables), as on a
// dual-stack node; sluice runs its IPv6 programs beside IPv4's. bare-xdp (xdpfwd) is IPv4
// only and is not measured here.

var (
	svcUDP6      = service{"udp6", v1.ProtocolUDP, 53, 30063, 5353, "pod2"}
	svcUDP6Local = service{"udp6-local", v1.ProtocolUDP, 53, 30064, 5353, "pod1"}
	benchSvcs6   = []service{svcUDP6, svcUDP6Local}
)

// kubeProxyDualStack are kube-proxy's flags for both families, after the lab's IPv4 ones:
// --cluster-cidr replaces the lab's, --nodeport-addresses adds to it (a repeated CIDR is
// harmless).
var kubeProxyDualStack = []string{"--nodeport-addresses", "10.89.0.0/24,fd00:89::/64", "--cluster-cidr", "10.244.0.0/16,fd00:244::/32"}

// setUpIPv6 is newEnv's IPv4 routing again in IPv6: the client reaches the pods through node1
// (plain forwarding), node2 answers the client through node1, and node1 knows its next hops
// in advance (the sinks drop neighbour discovery with everything else).
func (e *env) setUpIPv6(pod1MAC net.HardwareAddr) error {
	l := e.l
	for _, c := range []struct {
		ns   *testutil.Netns
		args []string
	}{
		{l.Client, []string{"ip", "-6", "route", "add", "fd00:244::/32", "via", l.Node1IP6.String()}},
		// The client is on node2's link: a /128 through node1 wins over it.
		{l.Node2, []string{"ip", "-6", "route", "add", l.ClientIP6.String() + "/128", "via", l.Node1IP6.String()}},
		{l.Node1, []string{"ip", "-6", "neigh", "replace", l.Node2IP6.String(), "lladdr", l.Node2MAC.String(), "dev", "eth0", "nud", "permanent"}},
		{l.Node1, []string{"ip", "-6", "neigh", "replace", l.ClientIP6.String(), "lladdr", l.ClientMAC.String(), "dev", "eth0", "nud", "permanent"}},
		{l.Node1, []string{"ip", "-6", "neigh", "replace", l.Pod1IP6.String(), "lladdr", pod1MAC.String(), "dev", "vpod1", "nud", "permanent"}},
	} {
		if _, err := c.ns.Exec(c.args...); err != nil {
			return err
		}
	}
	return nil
}

// target6 is where a client sends for IPv6 service s under this datapath.
func (r *running) target6(s service) netip.AddrPort {
	if r.kind == dpPlain {
		pod := r.e.l.Pod2IP6
		if s.pod == "pod1" {
			pod = r.e.l.Pod1IP6
		}
		return netip.AddrPortFrom(pod, s.targetPort)
	}
	return netip.AddrPortFrom(r.e.l.Node1IP6, s.nodePort)
}

func (e *env) remoteSpec6(dst netip.AddrPort) ppsSpec {
	s := e.remoteSpec(dst)
	s.ipv6, s.match = true, netip.AddrPortFrom(e.l.Pod2IP6, svcUDP6.targetPort)
	return s
}

func (e *env) localSpec6(dst netip.AddrPort) ppsSpec {
	s := e.localSpec(dst, nil)
	s.ipv6, s.match = true, netip.AddrPortFrom(e.l.Pod1IP6, svcUDP6Local.targetPort)
	return s
}

func (e *env) floorSpec6() ppsSpec {
	dst := netip.AddrPortFrom(e.l.Pod2IP6, svcUDP6.targetPort)
	s := e.floorSpec()
	s.ipv6, s.dst, s.match = true, dst, dst
	return s
}

// waitServing6 polls until both IPv6 services answer through the datapath, from the right
// pods: a proxy's IPv6 side may be programmed after its IPv4 side.
func (r *running) waitServing6(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		var err error
		for _, s := range benchSvcs6 {
			var body string
			if body, err = lab.UDPRequest(r.e.l.Client, r.target6(s), "hello"); err != nil {
				break
			}
			if who, _, perr := lab.ParseReply(body); perr != nil || who != s.pod {
				err = fmt.Errorf("%s answered by %q (%v), want %s", s.name, who, perr, s.pod)
				break
			}
		}
		if err == nil {
			return nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("IPv6 services not served through %s after %v: %w", r.kind.name, limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// measureIPv6 measures the IPv6 packet rates into d. A failure is d.Error6, not the run's:
// the IPv4 figures stand without it.
func (e *env) measureIPv6(ctx context.Context, r *running, d *Datapath) {
	err := func() (err error) {
		if err := r.waitServing6(ctx, 30*time.Second); err != nil {
			return err
		}
		if d.PPS6, err = e.measurePPS(ctx, e.remoteSpec6(r.target6(svcUDP6)), e.cfg.ppsRuns, e.cfg.ppsDuration); err != nil {
			return fmt.Errorf("packet rate, remote backend: %w", err)
		}
		logf("%s: IPv6, remote backend: %s", r.kind.name, d.PPS6)
		if d.PPSLocal6, err = e.measurePPS(ctx, e.localSpec6(r.target6(svcUDP6Local)), e.cfg.ppsRuns, e.cfg.ppsDuration); err != nil {
			return fmt.Errorf("packet rate, local backend: %w", err)
		}
		logf("%s: IPv6, local backend: %s", r.kind.name, d.PPSLocal6)
		return nil
	}()
	if err != nil {
		d.Error6 = err.Error()
		logf("%s: IPv6 FAILED (reported, not fatal): %v", r.kind.name, err)
	}
}
