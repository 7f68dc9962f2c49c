package lab_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/lab"
	"golang.org/x/sys/unix"
)

// TestE2ENodeToItsOwnNodePort: a process on node1 connecting to node1's own NodePort, on its
// address or on 127.0.0.1 (its packets never cross eth0, where the packet path is), reaches
// both the local and the remote pod, over TCP and UDP (connected and not), and is shown the NodePort as its peer: the socket
// programs, attached to the node's cgroup. Without them the kernel refuses it (nothing
// listens there).
func TestE2ENodeToItsOwnNodePort(t *testing.T) {
	cg := testutil.Cgroup2(t)
	c := startCluster(t, "", "--socket-lb-cgroup", cg)
	for _, k := range []struct {
		kind string
		port uint16
	}{{"tcp", 30080}, {"udp-connected", 30053}, {"udp-unconnected", 30053}} {
		// Its address, and localhost (on by default, as kube-proxy's iptables mode).
		for _, fe := range []netip.AddrPort{c.nodePort(k.port), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), k.port)} {
			seen := sockAnswers(t, cg, c.Node1, k.kind, fe, 24, func(who string, client netip.AddrPort) {
				// The backend sees the node itself: no translation on the way.
				if client.Addr() != c.Node1IP && !(who == "pod1" && client.Addr().String() == "10.244.1.1") {
					t.Errorf("%s: %s saw the client as %v", k.kind, who, client)
				}
			})
			if seen["pod1"] == 0 || seen["pod2"] == 0 {
				t.Errorf("%s from node1 to its own NodePort %s reached %v; want both the local and the remote pod", k.kind, fe, seen)
			}
		}
	}
}

// sockAnswers makes n requests of kind from ns, a process in cgroup cg, to to, and returns how
// often each backend answered. Every request must be answered with to shown as the peer; check,
// if set, is given each answer's backend and the client it saw.
func sockAnswers(t *testing.T, cg string, ns *testutil.Netns, kind string, to netip.AddrPort, n int, check func(who string, client netip.AddrPort)) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for _, r := range testutil.SockRequests(t, cg, ns.Path(), kind, to.String(), n) {
		body := r.Reply
		if strings.HasPrefix(kind, "tcp") {
			_, body, _ = strings.Cut(r.Reply, "\r\n\r\n")
		}
		who, client, err := lab.ParseReply(body)
		if r.Err != "" || err != nil || r.Peer != to.String() {
			t.Fatalf("%s from %s to %s: reply %q, peer %q, error %q %v", kind, ns.Name, to, r.Reply, r.Peer, r.Err, err)
		}
		if check != nil {
			check(who, client)
		}
		seen[who]++
	}
	return seen
}

// stickyYAML is a ClusterIP service with session affinity on the lab's two pods.
const stickyYAML = `apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: default}
spec:
  clusterIP: 10.96.0.81
  sessionAffinity: ClientIP
  ports: [{name: http, protocol: TCP, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sticky-1
  namespace: default
  labels: {kubernetes.io/service-name: sticky}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 80}]
endpoints:
  - {addresses: ["10.244.1.10"], conditions: {ready: true}, nodeName: node1}
  - {addresses: ["10.244.2.10"], conditions: {ready: true}, nodeName: node2}
`

// TestE2EEveryClientWithoutKubeProxy: with --kube-proxy-replacement and socket LB on node1's
// cgroup, and no kube-proxy, node1 itself and its pod reach the ClusterIP (TCP, connected and
// unconnected UDP; an IPv6 socket through the IPv4-mapped address too) and the pod its own
// node's NodePort, on both the local and the remote pod
// (the local one being, for the pod, itself: hairpin), each shown the address it asked for;
// session affinity keeps a client on one backend.
func TestE2EEveryClientWithoutKubeProxy(t *testing.T) {
	cg := testutil.Cgroup2(t)
	c := startClusterNoWait(t, "", "--socket-lb-cgroup", cg, "--kube-proxy-replacement")
	if err := os.WriteFile(filepath.Join(c.manifests, "sticky.yaml"), []byte(stickyYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	c.waitReady(t)
	// The sticky service is written after the agent started: wait for it too.
	c.waitFor(t, "the sticky ClusterIP served", func() error {
		if r := testutil.SockRequests(t, cg, c.Node1.Path(), "tcp", "10.96.0.81:80", 1)[0]; r.Err != "" {
			return errors.New(r.Err)
		}
		return nil
	})
	type target struct {
		kind string
		to   netip.AddrPort
	}
	clusterIP := netip.MustParseAddr("10.96.0.80")
	toClusterIP := []target{
		{"tcp", netip.AddrPortFrom(clusterIP, 80)},
		{"udp-connected", netip.AddrPortFrom(clusterIP, 5353)},
		{"udp-unconnected", netip.AddrPortFrom(clusterIP, 5353)},
	}
	for _, from := range []struct {
		name    string
		ns      *testutil.Netns
		targets []target
	}{
		// An IPv6 socket to the IPv4-mapped ClusterIP (Java's way), on this IPv4-only node.
		{"node1", c.Node1, append(toClusterIP, target{"tcp-v4mapped", netip.AddrPortFrom(netip.AddrFrom16(clusterIP.As16()), 80)})},
		{"pod1", c.Pod1, append(toClusterIP, target{"tcp", c.nodePort(30080)}, target{"udp-unconnected", c.nodePort(30053)})},
	} {
		for _, k := range from.targets {
			seen := sockAnswers(t, cg, from.ns, k.kind, k.to, 24, nil)
			if seen["pod1"] == 0 || seen["pod2"] == 0 {
				t.Errorf("%s from %s to %s reached %v; want both the local and the remote pod", k.kind, from.name, k.to, seen)
			}
		}
	}
	// Session affinity: every connection of pod1's namespace goes where its first went.
	seen := map[string]int{}
	for _, r := range testutil.SockRequests(t, cg, c.Pod1.Path(), "tcp", "10.96.0.81:80", 12) {
		_, body, _ := strings.Cut(r.Reply, "\r\n\r\n")
		who, _, err := lab.ParseReply(body)
		if r.Err != "" || err != nil {
			t.Fatalf("to the sticky ClusterIP: %+v %v", r, err)
		}
		seen[who]++
	}
	if len(seen) != 1 {
		t.Errorf("with session affinity pod1 reached %v; want one backend", seen)
	}
}

// TestE2EConnectedUDPMovesOnWhenItsBackendGoes: a connected UDP socket on node1, pointed at
// one pod through the ClusterIP, is ended when that pod leaves the service (as kube-proxy
// flushes the conntrack entries of a UDP endpoint that stops serving): it is disconnected with
// ECONNABORTED pending, and a socket connected again reaches the pod that serves.
func TestE2EConnectedUDPMovesOnWhenItsBackendGoes(t *testing.T) {
	cg := testutil.Cgroup2(t)
	c := startCluster(t, "", "--socket-lb-cgroup", cg, "--kube-proxy-replacement")
	heldUDPMovesOn(t, c, cg, "10.96.0.80:5353", "echo.yaml", func(pod string) string {
		ip := map[string]string{"pod1": "10.244.1.10", "pod2": "10.244.2.10"}[pod]
		return `  - addresses: ["` + ip + `"]
    conditions: {ready: true}
    nodeName: node` + pod[3:] + "\n"
	})
}

// heldUDPMovesOn holds a connected UDP socket on node1 to clusterIP, takes the pod it reached
// out of the service (removing endpointOf(pod) from manifest), waits until the socket is
// ended, and checks that new sockets reach the other pod.
func heldUDPMovesOn(t *testing.T, c *cluster, cg, clusterIP, manifest string, endpointOf func(pod string) string) {
	t.Helper()
	h := testutil.SockHeld(t, cg, c.Node1.Path(), clusterIP)
	who, _, err := lab.ParseReply(h.First.Reply)
	if h.First.Err != "" || err != nil {
		t.Fatalf("first request: %+v %v", h.First, err)
	}
	other := map[string]string{"pod1": "pod2", "pod2": "pod1"}[who]
	path := filepath.Join(c.manifests, manifest)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(b), endpointOf(who), "", 1)
	if edited == string(b) {
		t.Fatalf("%s changed shape; update this test", manifest)
	}
	writeAtomic(t, path, edited)
	c.waitFor(t, "the held socket to be ended", func() error {
		r := h.Next(t)
		if !strings.Contains(r.Err, unix.ECONNABORTED.Error()) {
			return fmt.Errorf("the held socket, pointed at %s, still answers: %+v", who, r)
		}
		return nil
	})
	for _, r := range testutil.SockRequests(t, cg, c.Node1.Path(), "udp-connected", clusterIP, 5) {
		if got, _, err := lab.ParseReply(r.Reply); err != nil || got != other {
			t.Errorf("a new socket after %s left: %+v (%v), want %s", who, r, err, other)
		}
	}
}

// TestE2ENodePortsCannotBeBound: with socket LB, a process on node1 cannot bind a NodePort
// (on node1's address, on loopback, or on every address), where it would never see a
// connection: EPERM, as Cilium refuses it. Other ports bind, and so does a pod's own NodePort
// number in its namespace.
func TestE2ENodePortsCannotBeBound(t *testing.T) {
	cg := testutil.Cgroup2(t)
	c := startCluster(t, "", "--socket-lb-cgroup", cg)
	for _, k := range []struct {
		ns      *testutil.Netns
		kind    string
		addr    string
		refused bool
	}{
		{c.Node1, "bind-tcp", c.nodePort(30080).String(), true},
		{c.Node1, "bind-tcp", "0.0.0.0:30080", true},
		{c.Node1, "bind-tcp", "127.0.0.1:30080", true},
		{c.Node1, "bind-udp", "0.0.0.0:30053", true},
		{c.Node1, "bind-udp", "0.0.0.0:30080", false}, // (30080 is a TCP NodePort)
		{c.Node1, "bind-tcp", "0.0.0.0:30099", false},
		{c.Pod1, "bind-tcp", "0.0.0.0:30080", false},
	} {
		r := testutil.SockRequest(t, cg, k.ns.Path(), k.kind, k.addr)
		refused := strings.Contains(r.Err, "operation not permitted")
		if refused != k.refused || (!refused && r.Reply != "bound") {
			t.Errorf("%s %s in %s: %q %q; want refused %v", k.kind, k.addr, k.ns.Name, r.Reply, r.Err, k.refused)
		}
	}
}
