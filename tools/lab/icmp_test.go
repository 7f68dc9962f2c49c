package lab_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/internal/cli"
	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/lab"
)

// udpService is a NodePort UDP service with one endpoint.
func udpService(name string, nodePort, port uint16, addr netip.Addr, node string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: default}
spec:
  type: NodePort
  ports:
    - {name: udp, protocol: UDP, port: %[3]d, nodePort: %[2]d}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: %[1]s-1
  namespace: default
  labels: {kubernetes.io/service-name: %[1]s}
addressType: IPv4
ports:
  - {name: udp, protocol: UDP, port: %[3]d}
endpoints:
  - addresses: ["%[4]s"]
    conditions: {ready: true}
    nodeName: %[5]s
`, name, nodePort, port, addr, node)
}

// udpProbe sends one datagram of size bytes with DF (IP_PMTUDISC_DO) from a connected socket in
// ns, and returns what reading it answered (an error the kernel derived from an ICMP error:
// ECONNREFUSED, EMSGSIZE; or nil with a reply) and the path MTU the socket then knows.
func udpProbe(ns *testutil.Netns, addr netip.AddrPort, size int) (readErr error, mtu int, err error) {
	return udpProbeWith(ns, addr, size, unix.IP_PMTUDISC_DO)
}

// udpProbeWith is udpProbe with the socket's IP_MTU_DISCOVER setting (IP_PMTUDISC_DONT: no
// DF).
func udpProbeWith(ns *testutil.Netns, addr netip.AddrPort, size, pmtudisc int) (readErr error, mtu int, err error) {
	err = ns.Do(func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
		if err != nil {
			return err
		}
		defer c.Close()
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, pmtudisc)
		}); err != nil || serr != nil {
			return errors.Join(err, serr)
		}
		if _, err := c.Write(make([]byte, size)); err != nil {
			return fmt.Errorf("send %d bytes: %w", size, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, readErr = c.Read(make([]byte, 64<<10))
		return raw.Control(func(fd uintptr) { mtu, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU) })
	})
	return readErr, mtu, err
}

// flushPMTU forgets every path MTU the lab's hosts learnt, so each check starts from 1500.
func flushPMTU(t *testing.T, c *cluster) {
	for _, ns := range []*testutil.Netns{c.Client, c.Node1, c.Node2, c.Pod1, c.Pod2} {
		ns.MustExec(t, "ip", "route", "flush", "cache")
	}
}

// ICMP errors about translated flows reach the flow's other end translated, as through
// kube-proxy's conntrack: a backend's "port unreachable" reaches the client's connected UDP
// socket (ECONNREFUSED), and path MTU discovery works through sluice both ways, whether a
// router behind the node, the node's own kernel (local backends) or sluice itself (the next
// hop of a packet it forwards) finds the packet too big. Every link here has MTU 1500; a
// 1280-byte hop is a locked route MTU on one host.
func TestE2EICMPErrorsAndPathMTU(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *cluster) {
		startIperf(t, c.Pod2)
		writeAtomic(t, filepath.Join(c.manifests, "bulk.yaml"), bulkManifest)
		writeAtomic(t, filepath.Join(c.manifests, "icmp.yaml"), strings.Join([]string{
			udpService("closed-remote", 30095, 5399, c.Pod2IP, "node2"),
			udpService("closed-local", 30096, 5399, c.Pod1IP, "node1"),
			udpService("mtu-remote", 30097, 5353, c.Pod2IP, "node2"),
			udpService("mtu-local", 30099, 5353, c.Pod1IP, "node1"),
		}, "---\n"))
		c.waitFor(t, "the services", func() error {
			if _, err := lab.UDPRequest(c.Client, c.nodePort(30099), "x"); err != nil {
				return err
			}
			return lab.TCPConnect(c.Client, c.nodePort(30201), time.Second)
		})

		for _, s := range []struct {
			name string
			port uint16
		}{{"remote backend", 30095}, {"local backend", 30096}} {
			readErr, _, err := udpProbe(c.Client, c.nodePort(s.port), 100)
			if err != nil || !errors.Is(readErr, syscall.ECONNREFUSED) {
				t.Errorf("UDP to a port nobody listens on, %s: read %v (%v), want connection refused (the backend's port unreachable, translated)", s.name, readErr, err)
			}
		}

		pmtu := func(what string, port uint16, upload, download bool) {
			t.Helper()
			flushPMTU(t, c)
			readErr, mtu, err := udpProbe(c.Client, c.nodePort(port), 1400)
			if err != nil || !errors.Is(readErr, syscall.EMSGSIZE) || mtu != 1280 {
				t.Errorf("%s: a 1428-byte DF datagram: read %v (%v), path MTU %d; want message too long, 1280", what, readErr, err, mtu)
			}
			if _, mtu, err := udpProbe(c.Client, c.nodePort(port), 1200); err != nil || mtu != 1280 {
				t.Errorf("%s: a datagram within the learnt MTU: %v, path MTU %d", what, err, mtu)
			}
			for _, dir := range []struct {
				on      bool
				reverse bool
			}{{upload, false}, {download, true}} {
				if !dir.on {
					continue
				}
				// A stream whose packets are dropped without a translated ICMP stalls.
				if gbps, err := iperfFor(c, dir.reverse, 1); err != nil || gbps < 0.02 {
					t.Errorf("%s: TCP (download %v): %.3f Gbit/s, %v", what, dir.reverse, gbps, err)
				}
			}
		}

		// A router behind the backend's node (here node2's own forwarding) answers.
		c.Node2.MustExec(t, "ip", "route", "add", c.Pod2IP.String()+"/32", "dev", "vpod2", "mtu", "lock", "1280")
		pmtu("1280 behind node2, the remote backend's node", 30097, true, false)
		c.Node2.MustExec(t, "ip", "route", "del", c.Pod2IP.String()+"/32")

		// node1's kernel, forwarding to its local backend, answers; its error leaves through
		// tc egress.
		c.Node1.MustExec(t, "ip", "route", "add", c.Pod1IP.String()+"/32", "dev", "vpod1", "mtu", "lock", "1280")
		pmtu("1280 between node1 and its local backend", 30099, false, false)
		c.Node1.MustExec(t, "ip", "route", "del", c.Pod1IP.String()+"/32")

		// sluice finds its next hop too small and answers itself.
		c.Node1.MustExec(t, "ip", "route", "replace", "10.244.2.0/24", "via", c.Node2IP.String(), "mtu", "lock", "1280")
		pmtu("1280 on node1's route to the remote backend", 30097, true, false)
		// Without DF the datagram must be fragmented: sluice hands it, translated, to node1's
		// kernel through sluice0, which fragments it; pod2 reassembles and answers. (The
		// client forgets the path MTU it learnt, or it would fragment the datagram itself.)
		flushPMTU(t, c)
		for i := range 3 {
			if readErr, _, err := udpProbeWith(c.Client, c.nodePort(30097), 1400, unix.IP_PMTUDISC_DONT); err != nil || readErr != nil {
				t.Errorf("1280 on node1's route to the remote backend: datagram %d of 1428 bytes without DF: %v %v, want an answer", i, err, readErr)
			}
		}
		var st cli.StatsJSON
		c.sluicectlJSON(t, &st, "stats")
		if st.Reasons["frag_by_stack"] < 3 {
			t.Errorf("frag_by_stack = %d, want 3 datagrams handed to the kernel to fragment (%v)", st.Reasons["frag_by_stack"], nonZero(st.Reasons))
		}
		c.Node1.MustExec(t, "ip", "route", "replace", "10.244.2.0/24", "via", c.Node2IP.String())

		// Replies: the backend learns the client's path is 1280.
		flushPMTU(t, c)
		c.Node1.MustExec(t, "ip", "route", "add", c.ClientIP.String()+"/32", "dev", "eth0", "mtu", "lock", "1280")
		if gbps, err := iperfFor(c, true, 1); err != nil || gbps < 0.02 {
			t.Errorf("1280 on node1's route to the client: TCP download %.3f Gbit/s, %v", gbps, err)
		}
		if out := c.Pod2.MustExec(t, "ip", "route", "get", c.Node1IP.String()); !strings.Contains(out, "mtu 1280") {
			t.Errorf("the remote backend did not learn the path MTU to node1: %s", out)
		}
		c.Node1.MustExec(t, "ip", "route", "del", c.ClientIP.String()+"/32")
	})
}
