package lab_test

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/lab"
)

// TestE2EPodsWithoutSocketHooks: with --kube-proxy-replacement and socket LB for the node's
// own processes only (--socket-lb-hostns-only, which some service meshes need), no kube-proxy
// and no socket hook for pods, pod1's packets are translated at its device: it reaches the
// ClusterIP (TCP, connected and unconnected UDP) and its own node's NodePort on the remote pod
// and on itself (hairpin), shown the address it asked for. The remote pod sees pod1's own
// address (DNAT only, as kube-proxy leaves a ClusterIP's traffic); pod1 reaching itself sees
// its node's address, as kube-proxy's masquerade of a hairpin shows it (a packet from its own
// address would be a martian to it). Only the pod path does that (a socket hook would connect
// pod1 to itself directly), so the test knows no socket hook served.
func TestE2EPodsWithoutSocketHooks(t *testing.T) {
	cg := testutil.Cgroup2(t)
	c := startCluster(t, "", "--socket-lb-cgroup", cg, "--socket-lb-hostns-only", "--kube-proxy-replacement")
	clusterIP := netip.MustParseAddr("10.96.0.80")
	for _, k := range []struct {
		kind string
		to   netip.AddrPort
	}{
		{"tcp", netip.AddrPortFrom(clusterIP, 80)},
		{"udp-connected", netip.AddrPortFrom(clusterIP, 5353)},
		{"udp-unconnected", netip.AddrPortFrom(clusterIP, 5353)},
		{"tcp", c.nodePort(30080)},
		{"udp-unconnected", c.nodePort(30053)},
	} {
		seen := sockAnswers(t, cg, c.Pod1, k.kind, k.to, 24, func(who string, client netip.AddrPort) {
			want := c.Pod1IP
			if who == "pod1" {
				want = c.Node1IP // hairpin
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

// TestE2EClusterIPFromOutside: a ClusterIP packet that arrives on a NIC (a router sending the
// service range to a node, as some clusters announce it by BGP) is translated by the packet
// path as kube-proxy's PREROUTING rules translate it: the client, routing 10.96.0.0/12 through
// node1, reaches both pods over TCP and UDP, shown the ClusterIP.
func TestE2EClusterIPFromOutside(t *testing.T) {
	cg := testutil.Cgroup2(t) // (no hooks there: the client's requests are plain sockets)
	c := startCluster(t, "", "--kube-proxy-replacement")
	c.Client.MustExec(t, "ip", "route", "add", "10.96.0.0/12", "via", c.Node1IP.String())
	for _, k := range []struct{ kind, to string }{{"tcp", "10.96.0.80:80"}, {"udp-connected", "10.96.0.80:5353"}} {
		seen := map[string]int{}
		for _, r := range testutil.SockRequests(t, cg, c.Client.Path(), k.kind, k.to, 16) {
			body := r.Reply
			if k.kind == "tcp" {
				_, body, _ = strings.Cut(r.Reply, "\r\n\r\n")
			}
			who, _, err := lab.ParseReply(body)
			if r.Err != "" || err != nil || r.Peer != k.to {
				t.Fatalf("%s from the client to %s: reply %q, peer %q, error %q %v", k.kind, k.to, r.Reply, r.Peer, r.Err, err)
			}
			seen[who]++
		}
		if seen["pod1"] == 0 || seen["pod2"] == 0 {
			t.Errorf("%s from the client to %s reached %v; want both pods", k.kind, k.to, seen)
		}
	}
}

// remoteLocalManifest: a NodePort with externalTrafficPolicy Local whose one endpoint is pod2,
// on node2: node1 drops it from outside (no local endpoint), as kube-proxy does.
const remoteLocalManifest = `apiVersion: v1
kind: Service
metadata: {name: remote-local, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.82
  externalTrafficPolicy: Local
  ports:
    - {name: http, protocol: TCP, port: 80, nodePort: 30111}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: remote-local-1
  namespace: default
  labels: {kubernetes.io/service-name: remote-local}
addressType: IPv4
ports:
  - {name: http, protocol: TCP, port: 80}
endpoints:
  - addresses: ["10.244.2.10"]
    conditions: {ready: true}
    nodeName: node2
`

// TestE2EPodGetsClusterEndpointsOfALocalNodePort: pod1, whose packets only its device
// translates (no socket LB), reaching its own node's NodePort of an externalTrafficPolicy
// Local service with no endpoint on node1, gets the Cluster endpoints, as kube-proxy gives
// traffic that starts on the node; the client outside gets nothing from node1.
func TestE2EPodGetsClusterEndpointsOfALocalNodePort(t *testing.T) {
	c := startCluster(t, "", "--kube-proxy-replacement")
	writeAtomic(t, filepath.Join(c.manifests, "remote-local.yaml"), remoteLocalManifest)
	fe := c.nodePort(30111)
	c.waitFor(t, "pod1 served by pod2 through node1's Local NodePort", func() error {
		body, err := lab.HTTPGet(c.Pod1, fe)
		if err != nil {
			return err
		}
		if who, _, err := lab.ParseReply(body); err != nil || who != "pod2" {
			return fmt.Errorf("reply %q: %v", body, err)
		}
		return nil
	})
	if body, err := lab.HTTPGet(c.Client, fe); err == nil {
		t.Errorf("the client outside reached node1's Local NodePort without a local endpoint: %q", body)
	}
}
