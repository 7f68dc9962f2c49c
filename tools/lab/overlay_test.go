package lab_test

import (
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/internal/cli"
	"github.com/sluicelb/sluice/tools/lab"
)

// On a flannel-style VXLAN overlay, with the agent's defaults, everything checkCNI checks
// holds; the path MTU to the pod behind the tunnel is the tunnel's (1450), and a 1460-byte
// datagram without DF is fragmented by the kernel and arrives, where kube-proxy's kernel path
// also fragments it.
func TestE2EFlannelVXLAN(t *testing.T) {
	c := startClusterOn(t, lab.VXLAN, agentBinary(t), "")
	c.waitReady(t)
	checkCNI(t, c, "flannel.1", lab.OverlayMTU)
}

// With Calico's routed wiring (/32 pod routes, proxy ARP for the pods' gateway), everything
// checkCNI checks holds; a 1280-byte hop is a locked route MTU on node2 toward its pod.
func TestE2ECalicoRouted(t *testing.T) {
	c := startClusterOn(t, lab.Routed, agentBinary(t), "")
	c.waitReady(t)
	c.Node2.MustExec(t, "ip", "route", "replace", c.Pod2IP.String()+"/32", "dev", "vpod2", "mtu", "lock", "1280")
	checkCNI(t, c, "eth0", 1280)
}

// checkCNI is what a CNI's lab variant must pass, with node1 reaching pod2 through dev and a
// path MTU of mtu to it: NodePorts reach both backend kinds over TCP and UDP with the addresses
// each should see, a service without endpoints refuses, bulk TCP flows both ways, 4 KB
// datagrams cross in fragments, a datagram over the MTU with DF teaches the client the MTU, and
// one without DF is fragmented on the way and arrives.
func checkCNI(t *testing.T, c *cluster, dev string, mtu int) {
	t.Helper()
	startIperf(t, c.Pod2)
	writeAtomic(t, filepath.Join(c.manifests, "bulk.yaml"), bulkManifest)
	writeAtomic(t, filepath.Join(c.manifests, "mtu.yaml"), udpService("mtu-remote", 30097, 5353, c.Pod2IP, "node2"))
	c.waitFor(t, "the services", func() error {
		if _, err := lab.UDPRequest(c.Client, c.nodePort(30097), "x"); err != nil {
			return err
		}
		return lab.TCPConnect(c.Client, c.nodePort(30201), time.Second)
	})
	if out := c.Node1.MustExec(t, "ip", "route", "get", c.Pod2IP.String()); !strings.Contains(out, "dev "+dev) {
		t.Fatalf("node1 does not reach pod2 through %s: %s", dev, out)
	}

	c.checkSpreadAndAddresses(t, "tcp", 30080, 30)
	c.checkSpreadAndAddresses(t, "udp", 30053, 30)
	if err := lab.TCPConnect(c.Client, c.nodePort(30090), 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("TCP to a service without endpoints: %v, want connection refused", err)
	}
	if _, err := lab.UDPRequest(c.Client, c.nodePort(30091), "anyone?"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("UDP to a service without endpoints: %v, want connection refused", err)
	}
	for _, reverse := range []bool{false, true} {
		if gbps, err := iperfFor(c, reverse, 1); err != nil || gbps < 0.02 {
			t.Errorf("bulk TCP to pod2 (download %v): %.3f Gbit/s, %v", reverse, gbps, err)
		}
	}
	checkFragmentedDatagrams(t, c)

	// A packet of 1500 bytes: over the path MTU.
	payload := 1500 - 28
	flushPMTU(t, c)
	readErr, got, err := udpProbe(c.Client, c.nodePort(30097), payload)
	if err != nil || !errors.Is(readErr, syscall.EMSGSIZE) || got != mtu {
		t.Errorf("a 1500-byte datagram with DF to pod2: read %v (%v), path MTU %d; want message too long, %d", readErr, err, got, mtu)
	}
	flushPMTU(t, c)
	for i := range 5 {
		if readErr, _, err := udpProbeWith(c.Client, c.nodePort(30097), payload, unix.IP_PMTUDISC_DONT); err != nil || readErr != nil {
			t.Errorf("a 1500-byte datagram without DF to pod2 (%d of 5): %v %v, want an answer", i+1, err, readErr)
		}
	}
	var st cli.StatsJSON
	c.sluicectlJSON(t, &st, "stats")
	t.Logf("datapath: %v", nonZero(st.Reasons))
}

// A second NIC that the local backend's replies leave by (policy routing, as AWS's VPC CNI
// does for a secondary ENI's pods): the agent finds it by itself (a default route through it
// in another table) and restores the replies there, so both backend kinds answer with the
// addresses each should see. sluice translates replies on every device they can leave by,
// rather than masquerading: the local backend keeps seeing its real client.
func TestE2ESecondNICReplies(t *testing.T) {
	c := startClusterOn(t, lab.TwoNICs, agentBinary(t), "")
	c.waitReady(t)
	if out := c.Node1.MustExec(t, "ip", "route", "get", c.ClientIP.String(), "from", c.Pod1IP.String(), "iif", "vpod1"); !strings.Contains(out, "dev eth1") {
		t.Fatalf("pod1's replies do not leave through eth1: %s", out)
	}
	var ps cli.ProgShowJSON
	c.sluicectlJSON(t, &ps, "prog", "show")
	var devs []string
	for _, d := range ps.Devices {
		devs = append(devs, d.Name)
	}
	if strings.Join(devs, ",") != "eth0,eth1" {
		t.Errorf("attached to %v, want eth0 and eth1", devs)
	}
	c.checkSpreadAndAddresses(t, "tcp", 30080, 30)
	c.checkSpreadAndAddresses(t, "udp", 30053, 30)
	checkFragmentedDatagrams(t, c)
}

// A NodePort reached on the second NIC's address, to the remote backend, which node1 reaches
// by eth0: the flow is SNATed to eth0's address, the device it leaves by, because node2 has no
// route back to the second NIC's network (the frontend's address would strand the replies).
func TestE2ESNATToTheEgressDevice(t *testing.T) {
	c := startClusterOn(t, lab.TwoNICs, agentBinary(t), "")
	c.waitReady(t)
	c.Client.MustExec(t, "ip", "route", "add", "10.90.0.0/24", "via", lab.Gateway.String())
	c.Node2.MustExec(t, "ip", "route", "del", "default")
	fe := netip.AddrPortFrom(lab.SecondNICIP, 30080)
	seen := map[string]int{}
	c.waitFor(t, "the NodePort on eth1's address", func() error { _, err := lab.HTTPGet(c.Client, fe); return err })
	for i := range 30 {
		body, err := lab.HTTPGet(c.Client, fe)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		who, client, err := lab.ParseReply(body)
		if err != nil {
			t.Fatal(err)
		}
		seen[who]++
		if want := map[string]netip.Addr{"pod1": c.ClientIP, "pod2": c.Node1IP}[who]; client.Addr() != want {
			t.Errorf("%s saw %s, want %s", who, client, want)
		}
	}
	if seen["pod1"] == 0 || seen["pod2"] == 0 {
		t.Errorf("answered by %v, want both pods", seen)
	}
	t.Logf("answered by %v", seen)
}
