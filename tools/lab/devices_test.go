package lab_test

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/internal/cli"
	"github.com/sluicelb/sluice/tools/lab"
)

// A NIC plugged into node1 while the agent runs (named in --devices before it exists) is
// attached and its address serves the NodePorts; unplugged, it is let go. No restart.
func TestE2EDeviceHotPlug(t *testing.T) {
	c := startCluster(t, "", "--devices", "eth0,eth9")
	nic := netip.MustParseAddrPort("10.89.0.31:30080")
	devicesNow := func() []string {
		var ps cli.ProgShowJSON
		c.sluicectlJSON(t, &ps, "prog", "show")
		var out []string
		for _, d := range ps.Devices {
			out = append(out, d.Name)
		}
		return out
	}
	if got := devicesNow(); !slices.Equal(got, []string{"eth0"}) {
		t.Errorf("before eth9 exists: attached to %v, want [eth0]", got)
	}
	if !strings.Contains(c.agent.Logs(), "does not exist: attached when it appears") {
		t.Errorf("the agent did not say eth9 is missing:\n%s", c.agent.Logs())
	}

	plugNIC(t, c)
	c.waitFor(t, "the NodePort on the plugged-in NIC's address", func() error {
		_, err := lab.HTTPGet(c.Client, nic)
		return err
	})
	if got := devicesNow(); !slices.Equal(got, []string{"eth0", "eth9"}) {
		t.Errorf("after plugging eth9: attached to %v", got)
	}
	c.checkSpreadAndAddresses(t, "tcp", 30080, 20) // eth0's NodePort still serves both backends

	c.Node1.MustExec(t, "ip", "link", "del", "eth9")
	c.waitFor(t, "eth9's frontends removed", func() error {
		var svcs []cli.ServiceJSON
		c.sluicectlJSON(t, &svcs, "service", "list")
		for _, s := range svcs {
			for _, f := range s.Frontends {
				if strings.HasPrefix(f, "10.89.0.31:") {
					return fmt.Errorf("%s still has frontend %s", s.Name, f)
				}
			}
		}
		if got := devicesNow(); !slices.Equal(got, []string{"eth0"}) {
			return fmt.Errorf("attached to %v", got)
		}
		return nil
	})
	if _, err := lab.HTTPGet(c.Client, c.nodePort(30080)); err != nil {
		t.Errorf("eth0's NodePort after unplugging eth9: %v", err)
	}
}

const localManifest = `apiVersion: v1
kind: Service
metadata: {name: local, namespace: default}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  ports:
    - {name: http, protocol: TCP, port: 80, nodePort: 30110}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: local-1
  namespace: default
  labels: {kubernetes.io/service-name: local}
addressType: IPv4
ports:
  - {name: http, protocol: TCP, port: 80}
endpoints:
  - addresses: ["10.244.1.10"]
    conditions: {ready: true}
    nodeName: node1
`

// With --nodeport-addresses, the health check port of an externalTrafficPolicy Local service
// listens where the NodePorts are served, and follows a NIC plugged in as they do.
func TestE2EHealthCheckFollowsHotPlug(t *testing.T) {
	c := startCluster(t, "", "--devices", "eth0,eth9", "--nodeport-addresses", "10.89.0.0/24")
	writeAtomic(t, filepath.Join(c.manifests, "local.yaml"), localManifest)
	healthy := func(addr netip.Addr) func() error {
		return func() error {
			status, body, err := lab.HTTPGetPath(c.Client, netip.AddrPortFrom(addr, 32100), "/")
			if err == nil && (status != 200 || !strings.Contains(body, `"localEndpoints": 1`)) {
				err = fmt.Errorf("%d %s", status, body)
			}
			return err
		}
	}
	c.waitFor(t, "the health check on eth0's address", healthy(c.Node1IP))
	plugNIC(t, c)
	c.waitFor(t, "the health check on the plugged-in NIC's address", healthy(netip.MustParseAddr("10.89.0.31")))
	if err := healthy(c.Node1IP)(); err != nil {
		t.Errorf("the health check on eth0's address after the plug: %v", err)
	}
}

// plugNIC plugs eth9 (10.89.0.31/24, on the bridge) into node1. Two NICs of one host on one
// L2: by default Linux answers ARP for any of its addresses on either, and names any of them
// in the requests it sends (ARP flux), so the client may learn eth0's address at eth9's MAC and
// lose it for the seconds its neighbour entry takes to go stale once eth9 is gone. Multi-NIC
// hosts set arp_ignore=1 and arp_announce=2 for this, and so does node1 here: the tests are
// about sluice, not ARP.
func plugNIC(t *testing.T, c *cluster) {
	t.Helper()
	c.Node1.MustExec(t, "sh", "-c", "echo 1 >/proc/sys/net/ipv4/conf/all/arp_ignore && echo 2 >/proc/sys/net/ipv4/conf/all/arp_announce")
	c.Node1.MustExec(t, "ip", "link", "add", "eth9", "type", "veth", "peer", "name", "node1-eth9", "netns", c.Bridge.Name)
	c.Bridge.MustExec(t, "ip", "link", "set", "node1-eth9", "master", "br0", "up")
	c.Node1.MustExec(t, "ip", "addr", "add", "10.89.0.31/24", "dev", "eth9")
	c.Node1.MustExec(t, "ip", "link", "set", "eth9", "up")
}
