package lab_test

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/lab"
)

// Dual-stack end to end: the lab with IPv6 beside IPv4 (client, nodes and pods have both), the
// agent with its defaults (--ipv6 auto finds node1's global IPv6 address), and real TCP and UDP
// to node1's IPv6 NodePorts, to the local pod (DNAT only) and the remote one (SNAT to node1's
// IPv6 address), as to its IPv4 ones.

// startDualStack starts a dual-stack lab of variant v with backends in both pods, and the
// agent on node1 serving examples/echo.yaml and examples/dual-stack/services.yaml.
func startDualStack(t *testing.T, v lab.Variant, mode string, extra ...string) *cluster {
	t.Helper()
	testutil.RequirePrivileges(t)
	bin := agentBinary(t)
	l := lab.UpDualStackForTest(t, v)
	c := &cluster{Lab: l, manifests: t.TempDir()}
	for _, f := range []string{"echo.yaml", "dual-stack/services.yaml"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "examples", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(c.manifests, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	startPods(t, l)
	a, err := l.StartAgent(lab.AgentOptions{Binary: bin, Manifests: c.manifests, XDPMode: mode, Extra: append([]string{"--log-level", "debug"}, extra...)})
	if err != nil {
		t.Fatal(err)
	}
	c.agent = a
	c.stopAgentAtCleanup(t)
	c.waitReady(t)
	return c
}

// request6 is request to node1's IPv6 address.
func (c *cluster) request6(proto string, port uint16) (string, netip.AddrPort, error) {
	to := netip.AddrPortFrom(c.Node1IP6, port)
	var body string
	var err error
	if proto == "tcp" {
		body, err = lab.HTTPGet(c.Client, to)
	} else {
		body, err = lab.UDPRequest(c.Client, to, "hello")
	}
	if err != nil {
		return "", netip.AddrPort{}, err
	}
	return lab.ParseReply(body)
}

// spread6 sends n requests to an IPv6 NodePort and returns who answered how often, checking
// whom each pod saw: the client itself (local pod), node1's IPv6 address with a port of the
// SNAT range (remote pod).
func (c *cluster) spread6(t *testing.T, proto string, port uint16, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	d := datapath.Defaults()
	for i := 0; i < n; i++ {
		who, client, err := c.request6(proto, port)
		if err != nil {
			t.Fatalf("%s request %d to [%s]:%d: %v", proto, i, c.Node1IP6, port, err)
		}
		seen[who]++
		switch who {
		case "pod1":
			if client.Addr() != c.ClientIP6 {
				t.Errorf("local pod saw %s, want the client %s", client, c.ClientIP6)
			}
		case "pod2":
			if client.Addr() != c.Node1IP6 || client.Port() < d.SNATPortMin || client.Port() > d.SNATPortMax {
				t.Errorf("remote pod saw %s, want %s with a port in %d-%d", client, c.Node1IP6, d.SNATPortMin, d.SNATPortMax)
			}
		default:
			t.Errorf("unexpected backend %q", who)
		}
	}
	return seen
}

func TestE2EDualStack(t *testing.T) {
	for _, m := range []struct {
		name, xdp string
		v         lab.Variant
	}{
		{"defaults", "", lab.Plain},
		// Native XDP only on veths that meet what it needs, on purpose (see variantFor).
		{"xdp-native", "native", lab.NICLike},
	} {
		t.Run(m.name, func(t *testing.T) {
			c := startDualStack(t, m.v, m.xdp)
			if !strings.Contains(c.agent.Logs(), "IPv6 served") {
				t.Fatalf("the agent does not serve IPv6 on a node with a global IPv6 address:\n%s", c.agent.Logs())
			}
			for _, proto := range []string{"tcp", "udp"} {
				port := map[string]uint16{"tcp": 30180, "udp": 30153}[proto]
				if seen := c.spread6(t, proto, port, 30); seen["pod1"] == 0 || seen["pod2"] == 0 {
					t.Errorf("IPv6 %s: answered by %v, want both pods", proto, seen)
				}
				// The same service's IPv4 side, on the same NodePort.
				c.checkSpreadAndAddresses(t, proto, port, 20)
			}
			// Refused at once: a TCP RST, an ICMPv6 port unreachable.
			start := time.Now()
			if err := lab.TCPConnect(c.Client, netip.AddrPortFrom(c.Node1IP6, 30190), 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("TCP to an IPv6 service without endpoints: %v, want connection refused", err)
			}
			if d := time.Since(start); d > 500*time.Millisecond {
				t.Errorf("TCP refusal took %v", d)
			}
			if _, err := lab.UDPRequest(c.Client, netip.AddrPortFrom(c.Node1IP6, 30191), "anyone?"); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("UDP to an IPv6 service without endpoints: %v, want connection refused", err)
			}
			// externalTrafficPolicy Local: the local pod only, seeing the client.
			if seen := c.spread6(t, "tcp", 30182, 10); seen["pod1"] != 10 {
				t.Errorf("externalTrafficPolicy Local over IPv6: answered by %v, want pod1 only", seen)
			}
			// Session affinity: every request of the client to one pod.
			if seen := c.spread6(t, "tcp", 30183, 10); len(seen) != 1 {
				t.Errorf("session affinity over IPv6: answered by %v, want one pod", seen)
			}
			// The node's own IPv6 traffic is the kernel's: a port that is no NodePort.
			b, err := lab.StartBackend(c.Node1, "node1-own", []uint16{2222}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			body, err := lab.HTTPGet(c.Client, netip.AddrPortFrom(c.Node1IP6, 2222))
			if who, client, _ := lab.ParseReply(body); err != nil || who != "node1-own" || client.Addr() != c.ClientIP6 {
				t.Errorf("node1's own IPv6 server: %q %v", body, err)
			}
			// And node1 reaches the remote pod itself.
			if _, err := lab.HTTPGet(c.Node1, netip.AddrPortFrom(c.Pod2IP6, 80)); err != nil {
				t.Errorf("node1 -> pod2 over IPv6: %v", err)
			}
		})
	}
}

// IPv6 flows outlive the agent as IPv4's do: with no agent running, the programs it left (and
// the tail-call arrays they use, pinned) still open new IPv6 flows; the next agent keeps the
// open ones. An agent started with --ipv6 false stops serving IPv6 and removes its pins.
func TestE2EDualStackRestart(t *testing.T) {
	c := startDualStack(t, lab.Plain, "")
	to := netip.AddrPortFrom(c.Node1IP6, 30180)
	var conns []net.Conn
	var first []string
	for i := 0; i < 8; i++ {
		conn, err := lab.OpenTCP(c.Client, to)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		who, err := lab.RequestOn(conn, to)
		if err != nil {
			t.Fatal(err)
		}
		conns, first = append(conns, conn), append(first, who)
	}
	c.agent.Kill()
	if seen := c.spread6(t, "tcp", 30180, 10); len(seen) == 0 {
		t.Fatal("no new IPv6 flow without the agent")
	}
	a, err := c.StartAgent(lab.AgentOptions{Binary: agentBinary(t), Manifests: c.manifests})
	if err != nil {
		t.Fatal(err)
	}
	c.agent = a
	c.waitReady(t)
	for i, conn := range conns {
		if who, err := lab.RequestOn(conn, to); err != nil || who != first[i] {
			t.Errorf("IPv6 connection %d across the restart: %q %v, want %s", i, who, err, first[i])
		}
	}

	if err := c.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	a, err = c.StartAgent(lab.AgentOptions{Binary: agentBinary(t), Manifests: c.manifests, Extra: []string{"--ipv6", "false"}})
	if err != nil {
		t.Fatal(err)
	}
	c.agent = a
	c.waitReady(t)
	if err := lab.TCPConnect(c.Client, to, 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("IPv6 NodePort with --ipv6 false: %v, want the kernel's refusal", err)
	}
	if _, err := os.Stat(filepath.Join(c.agent.PinDir, "sluice_frontends6")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("IPv6 pins left with --ipv6 false: %v", err)
	}
	c.checkSpreadAndAddresses(t, "tcp", 30180, 10)
}

// Every client over IPv6, without kube-proxy: node1 itself and its pod reach the IPv6
// ClusterIP (TCP, connected and unconnected UDP) and node1's IPv6 NodePort through the IPv6
// socket hooks, on both pods, each shown the address it asked for.
func TestE2EDualStackEveryClient(t *testing.T) {
	cg := testutil.Cgroup2(t)
	c := startDualStack(t, lab.Plain, "", "--socket-lb-cgroup", cg, "--kube-proxy-replacement")
	clusterIP := netip.MustParseAddr("fd00:96::80")
	targets := []struct {
		kind string
		to   netip.AddrPort
	}{
		{"tcp", netip.AddrPortFrom(clusterIP, 80)},
		{"udp-connected", netip.AddrPortFrom(clusterIP, 5353)},
		{"udp-unconnected", netip.AddrPortFrom(clusterIP, 5353)},
		{"tcp", netip.AddrPortFrom(c.Node1IP6, 30180)},
		{"udp-unconnected", netip.AddrPortFrom(c.Node1IP6, 30153)},
	}
	for _, from := range []struct {
		name string
		ns   *testutil.Netns
	}{{"node1", c.Node1}, {"pod1", c.Pod1}} {
		for _, k := range targets {
			seen := sockAnswers(t, cg, from.ns, k.kind, k.to, 16, nil)
			if seen["pod1"] == 0 || seen["pod2"] == 0 {
				t.Errorf("%s from %s to %s reached %v; want both pods", k.kind, from.name, k.to, seen)
			}
		}
	}
}

// Pods over IPv6 without socket hooks (--socket-lb-hostns-only leaves pods' sockets alone): the
// IPv6 pod programs on pod1's device translate what it sends to the IPv6 ClusterIP and
// NodePort, DNAT only (the remote pod sees pod1), hairpin to itself shown node1's address.
func TestE2EDualStackPodsWithoutSocketHooks(t *testing.T) {
	cg := testutil.Cgroup2(t)
	c := startDualStack(t, lab.Plain, "", "--socket-lb-cgroup", cg, "--socket-lb-hostns-only", "--kube-proxy-replacement")
	clusterIP := netip.MustParseAddr("fd00:96::80")
	for _, k := range []struct {
		kind string
		to   netip.AddrPort
	}{
		{"tcp", netip.AddrPortFrom(clusterIP, 80)},
		{"udp-connected", netip.AddrPortFrom(clusterIP, 5353)},
		{"udp-unconnected", netip.AddrPortFrom(clusterIP, 5353)},
		{"tcp", netip.AddrPortFrom(c.Node1IP6, 30180)},
	} {
		seen := sockAnswers(t, cg, c.Pod1, k.kind, k.to, 16, func(who string, client netip.AddrPort) {
			want := c.Pod1IP6
			if who == "pod1" {
				want = c.Node1IP6 // hairpin
			}
			if client.Addr() != want {
				t.Errorf("%s from pod1 to %s: %s saw the client as %v, want %v", k.kind, k.to, who, client, want)
			}
		})
		if seen["pod1"] == 0 || seen["pod2"] == 0 {
			t.Errorf("%s from pod1 to %s reached %v; want both itself and the remote pod", k.kind, k.to, seen)
		}
	}
}

// A connected UDP socket on node1 pointed at one pod through the IPv6 ClusterIP is ended when
// that pod's IPv6 endpoint leaves the service, as the IPv4 one is
// (TestE2EConnectedUDPMovesOnWhenItsBackendGoes): the IPv6 socket programs' reverse map
// names it.
func TestE2EDualStackConnectedUDPMovesOn(t *testing.T) {
	cg := testutil.Cgroup2(t)
	c := startDualStack(t, lab.Plain, "", "--socket-lb-cgroup", cg, "--kube-proxy-replacement")
	heldUDPMovesOn(t, c, cg, "[fd00:96::80]:5353", "services.yaml", func(pod string) string {
		ip := map[string]string{"pod1": "fd00:244:1::10", "pod2": "fd00:244:2::10"}[pod]
		return `  - {addresses: ["` + ip + `"], conditions: {ready: true}, nodeName: node` + pod[3:] + "}\n"
	})
}
