package lab_test

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/sluicelb/sluice/internal/cli"
	"github.com/sluicelb/sluice/tools/lab"
)

// The kernel's MASQUERADE and sluice's SNAT on one node address, to one backend: pod1's
// connections to pod2 are masqueraded by node1's iptables into the same eight source ports that
// sluice's SNAT range has (--snat-port-range 20000-20007), so every tuple the backend sees
// could be claimed twice. Each connection must keep working and the backend must see each
// from its own port.

const remoteManifest = `apiVersion: v1
kind: Service
metadata: {name: remote, namespace: default}
spec:
  type: NodePort
  ports:
    - {name: http, protocol: TCP, port: 80, nodePort: 30120}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: remote-1
  namespace: default
  labels: {kubernetes.io/service-name: remote}
addressType: IPv4
ports:
  - {name: http, protocol: TCP, port: 80}
endpoints:
  - addresses: ["10.244.2.10"]
    conditions: {ready: true}
    nodeName: node2
`

// masquerade makes node1's kernel masquerade pod1's TCP to pod2 into the given source ports,
// with --random-fully as CNIs and kube-proxy do.
func masquerade(t *testing.T, c *cluster, ports string) {
	t.Helper()
	rule := []string{"POSTROUTING", "-s", c.Pod1IP.String(), "-d", c.Pod2IP.String(), "-p", "tcp", "-j", "MASQUERADE", "--to-ports", ports, "--random-fully"}
	c.Node1.MustExec(t, append([]string{"iptables", "-t", "nat", "-A"}, rule...)...)
	t.Cleanup(func() { c.Node1.Exec(append([]string{"iptables", "-t", "nat", "-D"}, rule...)...) })
}

// seenBy sends one HTTP request on an open connection and returns the client address the
// backend saw (pod2 must answer).
func seenBy(t *testing.T, conn net.Conn, addr netip.AddrPort, what string) netip.AddrPort {
	t.Helper()
	body, err := lab.RequestBody(conn, addr)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	who, client, err := lab.ParseReply(body)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if who != "pod2" {
		t.Fatalf("%s: answered by %s, want pod2", what, who)
	}
	return client
}

func startHostNATCluster(t *testing.T) (*cluster, netip.AddrPort, netip.AddrPort) {
	c := startCluster(t, "", "--snat-port-range", "20000-20007")
	writeAtomic(t, filepath.Join(c.manifests, "remote.yaml"), remoteManifest)
	fe := c.nodePort(30120)
	// Not by a request: its closed flow would hold one of the two ports (the backend's
	// TIME_WAIT) for the rest of the test.
	c.waitFor(t, "the remote-only NodePort programmed", func() error {
		var svcs []cli.ServiceJSON
		c.sluicectlJSON(t, &svcs, "service", "list")
		for _, s := range svcs {
			if s.NodePort == 30120 && len(s.Backends) == 1 {
				return nil
			}
		}
		return fmt.Errorf("not in %d services", len(svcs))
	})
	return c, fe, netip.AddrPortFrom(c.Pod2IP, 80)
}

// The kernel's connections first, in all but one of the eight ports: sluice's connection to the
// same backend takes the one left.
func TestE2EKernelMasqueradeFirst(t *testing.T) {
	c, fe, pod2 := startHostNATCluster(t)
	masquerade(t, c, "20000-20007")
	kernel := map[netip.AddrPort]net.Conn{}
	for i := range 7 {
		kconn, err := lab.OpenTCP(c.Pod1, pod2)
		if err != nil {
			t.Fatal(err)
		}
		defer kconn.Close()
		kport := seenBy(t, kconn, pod2, fmt.Sprintf("pod1's masqueraded connection %d", i))
		if kport.Addr() != c.Node1IP {
			t.Fatalf("pod1's connection seen from %s, want node1's address (masqueraded)", kport)
		}
		kernel[kport] = kconn
	}
	sconn, err := lab.OpenTCP(c.Client, fe)
	if err != nil {
		t.Fatal(err)
	}
	defer sconn.Close()
	sport := seenBy(t, sconn, fe, "the NodePort connection")
	if kernel[sport] != nil {
		t.Fatalf("the NodePort connection reached pod2 from %s, a kernel connection's tuple", sport)
	}
	for kport, kconn := range kernel {
		if got := seenBy(t, kconn, pod2, "pod1's connection, again"); got != kport {
			t.Fatalf("pod1's connection now seen from %s, was %s", got, kport)
		}
	}
	if got := seenBy(t, sconn, fe, "the NodePort connection, again"); got != sport {
		t.Fatalf("the NodePort connection now seen from %s, was %s", got, sport)
	}
}

// sluice's connection first: the kernel, which cannot know it, masquerades pod1's connection
// into the very port sluice's holds; sluice moves it to the free one.
func TestE2EKernelMasqueradeOntoSluicesPort(t *testing.T) {
	c, fe, pod2 := startHostNATCluster(t)
	sconn, err := lab.OpenTCP(c.Client, fe)
	if err != nil {
		t.Fatal(err)
	}
	defer sconn.Close()
	sport := seenBy(t, sconn, fe, "the NodePort connection")
	masquerade(t, c, fmt.Sprint(sport.Port()))
	kconn, err := lab.OpenTCP(c.Pod1, pod2)
	if err != nil {
		t.Fatal(err)
	}
	defer kconn.Close()
	kport := seenBy(t, kconn, pod2, "pod1's masqueraded connection")
	if kport == sport || kport.Addr() != c.Node1IP {
		t.Fatalf("pod1's connection seen from %s; the NodePort connection's is %s", kport, sport)
	}
	for i := range 3 {
		if got := seenBy(t, sconn, fe, "the NodePort connection, again"); got != sport {
			t.Fatalf("round %d: NodePort connection seen from %s, was %s", i, got, sport)
		}
		if got := seenBy(t, kconn, pod2, "pod1's connection, again"); got != kport {
			t.Fatalf("round %d: pod1's connection seen from %s, was %s", i, got, kport)
		}
	}
}
