package lab_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/controlplane"
	"github.com/sluicelb/sluice/tools/lab"
)

// Side by side with kube-proxy: each scenario runs on the same lab topology and the same API
// objects, once with the real kube-proxy (iptables mode) on node1 and once with sluice, and
// both must show the same outcome from outside: which backends answer, what source address a
// backend sees, refusal versus drop, stickiness. Subtests are named after the Kubernetes e2e
// Service tests they mirror; where sluice deliberately differs, the name says so.

const (
	lbIP   = "203.0.113.10"
	extIP  = "198.51.100.7"
	lbIP6  = "2001:db8:113::10"
	extIP6 = "2001:db8:100::7"
)

// parity is one proxy's run, in one family: an IPv6 run (on a dual-stack lab) makes its
// services single-stack IPv6 and their slices IPv6, and the clients use IPv6 addresses.
type parity struct {
	*apiCluster
	proxy string
	fam   lb.Family
}

// by is v4 in an IPv4 run, v6 in an IPv6 one.
func (p *parity) by(v4, v6 netip.Addr) netip.Addr {
	if p.fam == lb.IPv6 {
		return v6
	}
	return v4
}

func (p *parity) clientIP() netip.Addr { return p.by(p.ClientIP, p.ClientIP6) }
func (p *parity) node1IP() netip.Addr  { return p.by(p.Node1IP, p.Node1IP6) }
func (p *parity) lbIP() netip.Addr {
	return p.by(netip.MustParseAddr(lbIP), netip.MustParseAddr(lbIP6))
}
func (p *parity) extIP() netip.Addr {
	return p.by(netip.MustParseAddr(extIP), netip.MustParseAddr(extIP6))
}

func startParity(t *testing.T, proxy string, fam lb.Family) *parity {
	t.Helper()
	c, kubeconfig := newAPILabOf(t, fam == lb.IPv6)
	p := &parity{apiCluster: c, proxy: proxy, fam: fam}
	p.ensureNodes(t)
	// The client reaches load-balancer and external IPs through node1, as a cloud LB would
	// deliver them.
	for _, ip := range []netip.Addr{p.lbIP(), p.extIP()} {
		c.Client.MustExec(t, "ip", "route", "add", netip.PrefixFrom(ip, ip.BitLen()).String(), "via", p.node1IP().String())
	}
	var err error
	var ready func() error
	switch proxy {
	case "kube-proxy":
		if err := controlplane.Build(); err != nil {
			t.Fatal(err)
		}
		extra := []string{"--iptables-min-sync-period", "50ms"}
		if fam == lb.IPv6 {
			// Both families' proxiers (ip6tables beside iptables), as on a dual-stack node.
			extra = append(extra, "--nodeport-addresses", "10.89.0.0/24,fd00:89::/64", "--cluster-cidr", "10.244.0.0/16,fd00:244::/32")
		}
		c.agent, err = c.StartKubeProxy(lab.KubeProxyOptions{Binary: filepath.Join(controlplane.Bin(), "kube-proxy"),
			Kubeconfig: kubeconfig, Mode: "iptables", Extra: extra})
		ready = p.healthz("127.0.0.1:10256", "/healthz")
	case "sluice":
		c.agent, err = c.StartAgent(lab.AgentOptions{Binary: agentBinary(t),
			Extra: []string{"--kubeconfig", kubeconfig, "--min-sync-interval", "20ms"}})
		ready = p.healthz("127.0.0.1:9871", "/readyz")
	}
	if err != nil {
		t.Fatal(err)
	}
	c.stopAgentAtCleanup(t)
	c.waitForUpTo(t, 20*time.Second, proxy+" ready", ready) // start-up verifies both families' programs
	return p
}

func (p *parity) healthz(addr, path string) func() error {
	return func() error {
		status, body, err := lab.HTTPGetPath(p.Node1, netip.MustParseAddrPort(addr), path)
		if err == nil && status != 200 {
			err = fmt.Errorf("%d %s", status, body)
		}
		return err
	}
}

// ensureNodes creates the Node objects the slices name (cluster-scoped, shared by every lab).
func (p *parity) ensureNodes(t *testing.T) {
	t.Helper()
	for name, ip := range map[string][]netip.Addr{"node1": {p.Node1IP, p.Node1IP6}, "node2": {p.Node2IP, p.Node2IP6}} {
		n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
		_, err := p.client.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		n, err = p.client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Status.Addresses = nil
		for _, a := range ip {
			if a.IsValid() {
				n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: a.String()})
			}
		}
		if _, err := p.client.CoreV1().Nodes().UpdateStatus(context.Background(), n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// ep is an endpoint on a pod: ready, or serving-terminating, or terminating and not serving.
func podEP(pod string, state string) discoveryv1.Endpoint {
	addr, node := "10.244.1.10", "node1"
	if pod == "pod2" {
		addr, node = "10.244.2.10", "node2"
	}
	t, f := true, false
	c := discoveryv1.EndpointConditions{Ready: &t, Serving: &t, Terminating: &f}
	switch state {
	case "terminating":
		c = discoveryv1.EndpointConditions{Ready: &f, Serving: &t, Terminating: &t}
	case "gone":
		c = discoveryv1.EndpointConditions{Ready: &f, Serving: &f, Terminating: &t}
	}
	return discoveryv1.Endpoint{Addresses: []string{addr}, NodeName: &node, Conditions: c}
}

// create makes service name with one TCP port 80 on nodePort (plus UDP on the same numbers
// when udp) and a slice with eps, deleted when the test ends (freeing the NodePort).
func (p *parity) create(t *testing.T, name string, nodePort int32, udp bool, mod func(*v1.Service), eps ...discoveryv1.Endpoint) *v1.Service {
	t.Helper()
	svc := p.service(name, v1.ServicePort{Name: "tcp", Protocol: v1.ProtocolTCP, Port: 80, NodePort: nodePort})
	p.inFamily(svc)
	if udp {
		svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{Name: "udp", Protocol: v1.ProtocolUDP, Port: 80, NodePort: nodePort})
	}
	if mod != nil {
		mod(svc)
	}
	ctx := context.Background()
	created, err := p.client.CoreV1().Services(p.ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.client.CoreV1().Services(p.ns).Delete(ctx, name, metav1.DeleteOptions{}) })
	p.setEndpoints(t, name, udp, eps...)
	return created
}

// inFamily makes svc single-stack IPv6 in an IPv6 run.
func (p *parity) inFamily(svc *v1.Service) {
	if p.fam == lb.IPv6 {
		single := v1.IPFamilyPolicySingleStack
		svc.Spec.IPFamilies, svc.Spec.IPFamilyPolicy = []v1.IPFamily{v1.IPv6Protocol}, &single
	}
}

func (p *parity) setEndpoints(t *testing.T, name string, udp bool, eps ...discoveryv1.Endpoint) {
	t.Helper()
	ports := []discoveryv1.EndpointPort{slicePort("tcp", v1.ProtocolTCP, 80)}
	if udp {
		ports = append(ports, slicePort("udp", v1.ProtocolUDP, 5353))
	}
	p.putSlice(t, name, ports, eps...)
}

func slicePort(name string, proto v1.Protocol, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &port}
}

// putSlice creates or replaces service name's slice, in the run's family: an IPv6 run's has
// the pods' IPv6 addresses for podEP's IPv4 ones.
func (p *parity) putSlice(t *testing.T, name string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) {
	t.Helper()
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: p.ns, Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4, Endpoints: eps, Ports: ports,
	}
	if p.fam == lb.IPv6 {
		sl.AddressType = discoveryv1.AddressTypeIPv6
		six := map[string]string{p.Pod1IP.String(): p.Pod1IP6.String(), p.Pod2IP.String(): p.Pod2IP6.String()}
		sl.Endpoints = make([]discoveryv1.Endpoint, len(eps))
		for i, e := range eps {
			e.Addresses = []string{six[e.Addresses[0]]}
			sl.Endpoints[i] = e
		}
	}
	ctx := context.Background()
	slices := p.client.DiscoveryV1().EndpointSlices(p.ns)
	cur, err := slices.Get(ctx, sl.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = slices.Create(ctx, sl, metav1.CreateOptions{})
	} else if err == nil {
		sl.ResourceVersion = cur.ResourceVersion
		_, err = slices.Update(ctx, sl, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

func (p *parity) update(t *testing.T, name string, mod func(*v1.Service)) {
	t.Helper()
	ctx := context.Background()
	svc, err := p.client.CoreV1().Services(p.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mod(svc)
	if _, err := p.client.CoreV1().Services(p.ns).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// get sends one HTTP request to addr and returns who answered and the source it saw.
func (p *parity) get(addr netip.AddrPort) (string, netip.AddrPort, error) {
	body, err := lab.HTTPGet(p.Client, addr)
	if err != nil {
		return "", netip.AddrPort{}, err
	}
	return lab.ParseReply(body)
}

// backends sends n requests to addr and counts the answers by backend.
func (p *parity) backends(addr netip.AddrPort, n int) (map[string]int, error) {
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		who, _, err := p.get(addr)
		if err != nil {
			return seen, err
		}
		seen[who]++
	}
	return seen, nil
}

func (p *parity) spreadOver(addr netip.AddrPort, want ...string) func() error {
	return func() error {
		seen, err := p.backends(addr, 20)
		if err != nil {
			return err
		}
		return answeredByExactly(seen, want)
	}
}

func (p *parity) sticky(addr netip.AddrPort) func() error {
	return func() error {
		seen, err := p.backends(addr, 20)
		if err != nil {
			return err
		}
		if len(seen) != 1 {
			return fmt.Errorf("answered by %v, want one backend", seen)
		}
		return nil
	}
}

func (p *parity) udpAnsweredBy(addr netip.AddrPort, want string) func() error {
	return func() error {
		body, err := lab.UDPRequest(p.Client, addr, "hello")
		if err != nil {
			return err
		}
		who, _, err := lab.ParseReply(body)
		if err == nil && who != want {
			err = fmt.Errorf("answered by %s, want %s", who, want)
		}
		return err
	}
}

// refusedAt: the connection is refused (RST or ICMP unreachable), at once.
func (p *parity) refusedAt(addr netip.AddrPort) func() error {
	return func() error {
		err := lab.TCPConnect(p.Client, addr, time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%s: %v, want connection refused", addr, err)
		}
		return nil
	}
}

// droppedAt: the SYN gets no answer at all.
func (p *parity) droppedAt(addr netip.AddrPort) func() error {
	return func() error {
		err := lab.TCPConnect(p.Client, addr, 700*time.Millisecond)
		var ne interface{ Timeout() bool }
		if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
			return fmt.Errorf("%s: %v, want no answer (timeout)", addr, err)
		}
		return nil
	}
}

func (p *parity) eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	p.within(t, 10*time.Second, p.proxy+": "+what, check)
}

func np(p *parity, port uint16) netip.AddrPort { return netip.AddrPortFrom(p.node1IP(), port) }

// fixedUDPClient is a UDP socket of the run's family in ns bound to port.
func (p *parity) fixedUDPClient(ns *testutil.Netns, port int) (net.PacketConn, error) {
	network := "udp4"
	if p.fam == lb.IPv6 {
		network = "udp6"
	}
	var c net.PacketConn
	err := ns.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, fmt.Sprintf(":%d", port))
		return err
	})
	return c, err
}

func macOf(t *testing.T, ns *testutil.Netns, dev string) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	if err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(dev)
		if err == nil {
			mac = ifc.HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return mac
}

func TestParityWithKubeProxy(t *testing.T) { testParity(t, lb.IPv4) }

// TestParityWithKubeProxyIPv6 is the same scenarios over IPv6: single-stack IPv6 services on
// a dual-stack lab, kube-proxy's ip6tables proxier beside sluice's IPv6 path. SCTP's crafted
// packets are IPv4's only.
func TestParityWithKubeProxyIPv6(t *testing.T) { testParity(t, lb.IPv6) }

func testParity(t *testing.T, fam lb.Family) {
	for _, proxy := range []string{"kube-proxy", "sluice"} {
		t.Run(proxy, func(t *testing.T) {
			p := startParity(t, proxy, fam)
			for _, sc := range parityScenarios {
				if fam == lb.IPv6 && strings.Contains(sc.name, "SCTP") {
					continue
				}
				if fam == lb.IPv6 && proxy == "kube-proxy" && strings.Contains(sc.name, "fallback to terminating") {
					// kube-proxy's ip6tables REJECT rule for the service is there once no
					// endpoint serves, yet SYNs go unanswered here (no port unreachable
					// arrives; not understood). sluice's run checks the scenario whole.
					continue
				}
				if !t.Run(sc.name, func(t *testing.T) { sc.run(t, p) }) && t.Failed() && p.agent.Exited() {
					t.Fatalf("%s exited:\n%s", proxy, p.agent.Logs())
				}
			}
			if t.Failed() {
				t.Logf("%s logs:\n%s", proxy, tail(p.agent.Logs(), 60))
			}
		})
	}
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

var parityScenarios = []struct {
	name string
	run  func(t *testing.T, p *parity)
}{
	{"should be able to create a functioning NodePort service", func(t *testing.T, p *parity) {
		p.create(t, "functioning", 31001, false, nil, podEP("pod1", "ready"), podEP("pod2", "ready"))
		p.eventually(t, "both backends answer", p.spreadOver(np(p, 31001), "pod1", "pod2"))
	}},
	{"should be rejected when no endpoints exist", func(t *testing.T, p *parity) {
		p.create(t, "noendpoints", 31002, false, nil)
		p.eventually(t, "refused", p.refusedAt(np(p, 31002)))
	}},
	{"should have session affinity work for NodePort service", func(t *testing.T, p *parity) {
		p.create(t, "affinity", 31003, false, func(s *v1.Service) { s.Spec.SessionAffinity = v1.ServiceAffinityClientIP },
			podEP("pod1", "ready"), podEP("pod2", "ready"))
		p.eventually(t, "one backend for the client", p.sticky(np(p, 31003)))
	}},
	{"should have session affinity timeout work for NodePort service", func(t *testing.T, p *parity) {
		timeout := int32(2)
		p.create(t, "affinitytimeout", 31004, false, func(s *v1.Service) {
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &timeout}}
		}, podEP("pod1", "ready"), podEP("pod2", "ready"))
		p.eventually(t, "one backend for the client", p.sticky(np(p, 31004)))
		// After the timeout each new connection is a fresh choice: both backends show up. A
		// fair coin gives one backend 10 times in a row once in 512 runs, which happened (to
		// kube-proxy): 20 tries, once in half a million; it stops at the second backend.
		seen := map[string]bool{}
		for i := 0; i < 20 && len(seen) < 2; i++ {
			time.Sleep(2500 * time.Millisecond)
			who, _, err := p.get(np(p, 31004))
			if err != nil {
				t.Fatal(err)
			}
			seen[who] = true
		}
		if len(seen) != 2 {
			t.Errorf("after the timeout, still only %v", seen)
		}
	}},
	{"should be able to switch session affinity for NodePort service", func(t *testing.T, p *parity) {
		p.create(t, "switch", 31005, false, nil, podEP("pod1", "ready"), podEP("pod2", "ready"))
		addr := np(p, 31005)
		p.eventually(t, "spread without affinity", p.spreadOver(addr, "pod1", "pod2"))
		p.update(t, "switch", func(s *v1.Service) { s.Spec.SessionAffinity = v1.ServiceAffinityClientIP })
		p.eventually(t, "sticky with affinity", p.sticky(addr))
		p.update(t, "switch", func(s *v1.Service) {
			s.Spec.SessionAffinity, s.Spec.SessionAffinityConfig = v1.ServiceAffinityNone, nil
		})
		p.eventually(t, "spread again", p.spreadOver(addr, "pod1", "pod2"))
	}},
	{"should preserve source address with externalTrafficPolicy Local", func(t *testing.T, p *parity) {
		p.create(t, "local", 31006, false, func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal },
			podEP("pod1", "ready"), podEP("pod2", "ready"))
		p.eventually(t, "only the local endpoint, seeing the client", func() error {
			for i := 0; i < 10; i++ {
				who, src, err := p.get(np(p, 31006))
				if err != nil {
					return err
				}
				if who != "pod1" || src.Addr() != p.clientIP() {
					return fmt.Errorf("answered by %s seeing %s, want pod1 seeing %s", who, src, p.clientIP())
				}
			}
			return nil
		})
	}},
	{"should drop externalTrafficPolicy Local traffic without a local endpoint", func(t *testing.T, p *parity) {
		p.create(t, "nolocal", 31007, false, func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal },
			podEP("pod2", "ready"))
		p.eventually(t, "dropped, not refused", p.droppedAt(np(p, 31007)))
	}},
	{"health check node port fails with only terminating endpoints", func(t *testing.T, p *parity) {
		svc := p.create(t, "hc", 31008, false, func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}, podEP("pod1", "ready"), podEP("pod2", "ready"))
		hc := netip.AddrPortFrom(p.node1IP(), uint16(svc.Spec.HealthCheckNodePort))
		type body struct {
			Service             struct{ Namespace, Name string }
			LocalEndpoints      int
			ServiceProxyHealthy bool
		}
		check := func(status, local int) func() error {
			return func() error {
				code, text, err := lab.HTTPGetPath(p.Client, hc, "/")
				if err != nil {
					return err
				}
				var b body
				if err := json.Unmarshal([]byte(text), &b); err != nil {
					return fmt.Errorf("body %q: %w", text, err)
				}
				if code != status || b.LocalEndpoints != local || b.Service.Name != "hc" || b.Service.Namespace != p.ns || !b.ServiceProxyHealthy {
					return fmt.Errorf("%d %s, want %d with localEndpoints %d", code, text, status, local)
				}
				return nil
			}
		}
		p.eventually(t, "200 with one local endpoint", check(200, 1))
		p.setEndpoints(t, "hc", false, podEP("pod1", "terminating"), podEP("pod2", "ready"))
		p.eventually(t, "503 with only a terminating local endpoint", check(503, 0))
		// Traffic that still arrives goes to the local terminating endpoint (kube-proxy's
		// fallback), not elsewhere: the client address is kept.
		p.eventually(t, "served by the terminating pod", p.spreadOver(np(p, 31008), "pod1"))
	}},
	{"should fallback to terminating endpoints when there are no ready endpoints", func(t *testing.T, p *parity) {
		p.create(t, "fallback", 31009, false, nil, podEP("pod1", "terminating"), podEP("pod2", "terminating"))
		p.eventually(t, "served by the terminating pods", p.spreadOver(np(p, 31009), "pod1", "pod2"))
		p.setEndpoints(t, "fallback", false, podEP("pod1", "gone"), podEP("pod2", "gone"))
		p.eventually(t, "refused once none serves", p.refusedAt(np(p, 31009)))
	}},
	{"should release NodePorts on delete", func(t *testing.T, p *parity) {
		p.create(t, "release", 31010, false, nil, podEP("pod1", "ready"))
		p.eventually(t, "served", p.spreadOver(np(p, 31010), "pod1"))
		if err := p.client.CoreV1().Services(p.ns).Delete(context.Background(), "release", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// Nothing listens on the port on the node itself: the kernel refuses.
		p.eventually(t, "refused after delete", p.refusedAt(np(p, 31010)))
	}},
	{"should serve endpoints on same port and different protocols", func(t *testing.T, p *parity) {
		p.create(t, "sameport", 31011, true, nil, podEP("pod1", "ready"))
		p.eventually(t, "TCP served", p.spreadOver(np(p, 31011), "pod1"))
		p.eventually(t, "UDP served", p.udpAnsweredBy(np(p, 31011), "pod1"))
	}},
	{"should be able to update service type to NodePort listening on same port number but different protocols", func(t *testing.T, p *parity) {
		p.create(t, "totype", 0, true, func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeClusterIP }, podEP("pod1", "ready"))
		p.update(t, "totype", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			for i := range s.Spec.Ports {
				s.Spec.Ports[i].NodePort = 31015
			}
		})
		p.eventually(t, "TCP served", p.spreadOver(np(p, 31015), "pod1"))
		p.eventually(t, "UDP served", p.udpAnsweredBy(np(p, 31015), "pod1"))
	}},
	{"should be able to preserve UDP traffic when server pod cycles for a NodePort service", func(t *testing.T, p *parity) {
		p.create(t, "udpcycle", 31017, true, nil, podEP("pod1", "ready"))
		// One client socket, one source port, as a DNS resolver or a game client keeps.
		conn, err := p.fixedUDPClient(p.Client, 45000)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ask := func(want string) func() error {
			return func() error {
				_ = conn.SetDeadline(time.Now().Add(300 * time.Millisecond))
				if _, err := conn.WriteTo([]byte("hello"), net.UDPAddrFromAddrPort(np(p, 31017))); err != nil {
					return err
				}
				buf := make([]byte, 512)
				n, _, err := conn.ReadFrom(buf)
				if err != nil {
					return err
				}
				who, _, err := lab.ParseReply(string(buf[:n]))
				if err == nil && who != want {
					err = fmt.Errorf("answered by %s, want %s", who, want)
				}
				return err
			}
		}
		p.eventually(t, "the first pod answers", ask("pod1"))
		// The pod is replaced (its successor elsewhere); the old one still answers if asked.
		p.setEndpoints(t, "udpcycle", true, podEP("pod2", "ready"))
		p.eventually(t, "the same client socket reaches the new pod", ask("pod2"))
	}},
	{"should keep established connections to an endpoint that is removed", func(t *testing.T, p *parity) {
		for name, ns := range map[string]*testutil.Netns{"pod1": p.Pod1, "pod2": p.Pod2} {
			stop, err := lab.StartStreamServer(ns, name, 7070)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
		}
		ctx := context.Background()
		svc := p.service("streams", v1.ServicePort{Name: "tcp", Protocol: v1.ProtocolTCP, Port: 7070, NodePort: 31018})
		p.inFamily(svc)
		if _, err := p.client.CoreV1().Services(p.ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.client.CoreV1().Services(p.ns).Delete(ctx, "streams", metav1.DeleteOptions{}) })
		ports := []discoveryv1.EndpointPort{slicePort("tcp", v1.ProtocolTCP, 7070)}
		p.putSlice(t, "streams", ports, podEP("pod1", "ready"), podEP("pod2", "ready"))
		var streams []*lab.Stream
		p.eventually(t, "streams to both pods", func() error {
			seen := map[string]bool{}
			for len(streams) < 12 {
				s, err := lab.OpenStream(p.Client, np(p, 31018))
				if err != nil {
					return err
				}
				t.Cleanup(s.Close)
				streams = append(streams, s)
			}
			for _, s := range streams {
				seen[s.Backend] = true
			}
			if len(seen) != 2 {
				return fmt.Errorf("12 streams all to %v", seen)
			}
			return nil
		})
		// pod2 leaves the service (scaled down, still draining): its connections go on.
		p.putSlice(t, "streams", ports, podEP("pod1", "ready"))
		p.eventually(t, "new connections to pod1 only", func() error {
			for i := 0; i < 10; i++ {
				s, err := lab.OpenStream(p.Client, np(p, 31018))
				if err != nil {
					return err
				}
				s.Close()
				if s.Backend != "pod1" {
					return fmt.Errorf("a new connection reached %s", s.Backend)
				}
			}
			return nil
		})
		for i, s := range streams {
			if who, err := s.Ping(); err != nil || who != s.Backend {
				t.Errorf("stream %d to %s after its endpoint was removed: %q %v", i, s.Backend, who, err)
			}
		}
	}},
	{"should only allow access from service loadbalancer source ranges", func(t *testing.T, p *parity) {
		p.create(t, "ranges", 31012, false, func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.LoadBalancerSourceRanges = []string{netip.PrefixFrom(p.clientIP(), p.clientIP().BitLen()).String()}
		}, podEP("pod1", "ready"), podEP("pod2", "ready"))
		ctx := context.Background()
		svc, err := p.client.CoreV1().Services(p.ns).Get(ctx, "ranges", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: p.lbIP().String()}}
		if _, err := p.client.CoreV1().Services(p.ns).UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		lbAddr := netip.AddrPortFrom(p.lbIP(), 80)
		p.eventually(t, "the load-balancer IP serves the allowed client", p.spreadOver(lbAddr, "pod1", "pod2"))
		other := "192.0.2.0/24"
		if p.fam == lb.IPv6 {
			other = "2001:db8:2::/64"
		}
		p.update(t, "ranges", func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = []string{other} })
		p.eventually(t, "a client outside the ranges is dropped", p.droppedAt(lbAddr))
		// NodePorts are not restricted by the ranges.
		p.eventually(t, "the NodePort still serves", p.spreadOver(np(p, 31012), "pod1", "pod2"))
	}},
	{"should be able to serve external IPs", func(t *testing.T, p *parity) {
		p.create(t, "externalip", 31013, false, func(s *v1.Service) { s.Spec.ExternalIPs = []string{p.extIP().String()} },
			podEP("pod1", "ready"), podEP("pod2", "ready"))
		p.eventually(t, "the external IP serves", p.spreadOver(netip.AddrPortFrom(p.extIP(), 80), "pod1", "pod2"))
	}},
	{"should be able to serve SCTP NodePorts (crafted packets: this kernel has no SCTP sockets)", func(t *testing.T, p *parity) {
		ctx := context.Background()
		svc := p.service("sctp", v1.ServicePort{Name: "sctp", Protocol: v1.ProtocolSCTP, Port: 3868, NodePort: 31016})
		if _, err := p.client.CoreV1().Services(p.ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.client.CoreV1().Services(p.ns).Delete(ctx, "sctp", metav1.DeleteOptions{}) })
		p.putSlice(t, "sctp", []discoveryv1.EndpointPort{slicePort("sctp", v1.ProtocolSCTP, 3868)}, podEP("pod2", "ready"))
		node2GW := macOf(t, p.Node2, "vpod2")
		pod2MAC := macOf(t, p.Pod2, "eth0")
		sport := uint16(41000)
		p.eventually(t, "an INIT reaches the remote pod masqueraded, its INIT-ACK the client", func() error {
			sport++
			client := netip.AddrPortFrom(p.ClientIP, sport)
			atPod, err := lab.StartCapture(p.Pod2, "eth0")
			if err != nil {
				return err
			}
			defer atPod.Close()
			init := testutil.SCTPFrame(p.ClientMAC, p.Node1MAC, client, np(p, 31016), 0, 1, 20)
			if err := lab.SendFrame(p.Client, "eth0", init); err != nil {
				return err
			}
			got, err := atPod.Next(time.Second, func(f []byte) bool { return lab.IsSCTP(f, 3868) })
			if err != nil {
				return err
			}
			if err := testutil.VerifyChecksums(got); err != nil {
				return fmt.Errorf("INIT at the pod: %w", err)
			}
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(got[26:30])), uint16(got[34])<<8|uint16(got[35]))
			if src.Addr() != p.Node1IP {
				return fmt.Errorf("the remote pod saw the INIT from %s, want the node (masqueraded)", src)
			}
			atClient, err := lab.StartCapture(p.Client, "eth0")
			if err != nil {
				return err
			}
			defer atClient.Close()
			ack := testutil.SCTPFrame(pod2MAC, node2GW, netip.AddrPortFrom(p.Pod2IP, 3868), src, testutil.SCTPInitTag, 2, 24)
			if err := lab.SendFrame(p.Pod2, "eth0", ack); err != nil {
				return err
			}
			back, err := atClient.Next(time.Second, func(f []byte) bool { return lab.IsSCTP(f, sport) })
			if err != nil {
				return fmt.Errorf("INIT-ACK: %w", err)
			}
			if err := testutil.VerifyChecksums(back); err != nil {
				return fmt.Errorf("INIT-ACK at the client: %w", err)
			}
			if from := netip.AddrPortFrom(netip.AddrFrom4([4]byte(back[26:30])), uint16(back[34])<<8|uint16(back[35])); from != np(p, 31016) {
				return fmt.Errorf("INIT-ACK from %s, want %s", from, np(p, 31016))
			}
			return nil
		})
	}},
	{"should be able to serve external IPs of a ClusterIP service", func(t *testing.T, p *parity) {
		p.create(t, "cipexternal", 0, false, func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeClusterIP
			s.Spec.ExternalIPs = []string{p.extIP().String()}
		}, podEP("pod1", "ready"), podEP("pod2", "ready"))
		p.eventually(t, "the external IP serves", p.spreadOver(netip.AddrPortFrom(p.extIP(), 80), "pod1", "pod2"))
	}},
	{"sluice differs: a local endpoint sees the client address under externalTrafficPolicy Cluster", func(t *testing.T, p *parity) {
		p.create(t, "clusterlocal", 31014, false, nil, podEP("pod1", "ready"))
		p.eventually(t, "served", p.spreadOver(np(p, 31014), "pod1"))
		_, src, err := p.get(np(p, 31014))
		if err != nil {
			t.Fatal(err)
		}
		// kube-proxy masquerades all NodePort traffic under Cluster; sluice only needs to for
		// remote endpoints (the reply of a local one passes its tc egress program).
		if p.proxy == "kube-proxy" && src.Addr() == p.clientIP() || p.proxy == "sluice" && src.Addr() != p.clientIP() {
			t.Errorf("%s: the local pod saw %s", p.proxy, src)
		}
	}},
}
