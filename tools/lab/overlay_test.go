package lab_test

import (
	"errors"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/internal/cli"
	"github.com/sluicelb/sluice/tools/lab"
)

// On a flannel-style VXLAN overlay, with the agent's defaults: NodePorts reach both backend
// kinds over TCP and UDP (the remote one through the tunnel) with the addresses each should
// see, a service without endpoints refuses, bulk TCP flows both ways, 4 KB datagrams cross in
// fragments, a 1460-byte datagram with DF teaches the client the tunnel's MTU (1450), and one
// without DF is fragmented by the kernel and arrives, where kube-proxy's kernel path also
// fragments it.
func TestE2EFlannelVXLAN(t *testing.T) {
	c := startClusterOn(t, lab.VXLAN, agentBinary(t), "")
	c.waitReady(t)
	startIperf(t, c.Pod2)
	writeAtomic(t, filepath.Join(c.manifests, "bulk.yaml"), bulkManifest)
	writeAtomic(t, filepath.Join(c.manifests, "mtu.yaml"), udpService("mtu-remote", 30097, 5353, c.Pod2IP, "node2"))
	c.waitFor(t, "the services", func() error {
		if _, err := lab.UDPRequest(c.Client, c.nodePort(30097), "x"); err != nil {
			return err
		}
		return lab.TCPConnect(c.Client, c.nodePort(30201), time.Second)
	})
	if out := c.Node1.MustExec(t, "ip", "route", "get", c.Pod2IP.String()); !strings.Contains(out, "dev flannel.1") {
		t.Fatalf("node1 does not reach pod2 through the overlay: %s", out)
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
			t.Errorf("TCP through the tunnel (download %v): %.3f Gbit/s, %v", reverse, gbps, err)
		}
	}
	checkFragmentedDatagrams(t, c)

	// 1432 bytes of UDP payload: a 1460-byte packet, over the tunnel's 1450.
	flushPMTU(t, c)
	readErr, mtu, err := udpProbe(c.Client, c.nodePort(30097), 1432)
	if err != nil || !errors.Is(readErr, syscall.EMSGSIZE) || mtu != lab.OverlayMTU {
		t.Errorf("a 1460-byte datagram with DF to the pod behind the tunnel: read %v (%v), path MTU %d; want message too long, %d", readErr, err, mtu, lab.OverlayMTU)
	}
	flushPMTU(t, c)
	for i := range 5 {
		if readErr, _, err := udpProbeWith(c.Client, c.nodePort(30097), 1432, unix.IP_PMTUDISC_DONT); err != nil || readErr != nil {
			t.Errorf("a 1460-byte datagram without DF to the pod behind the tunnel (%d of 5): %v %v, want an answer", i+1, err, readErr)
		}
	}
	var st cli.StatsJSON
	c.sluicectlJSON(t, &st, "stats")
	t.Logf("datapath: %v", nonZero(st.Reasons))
}
