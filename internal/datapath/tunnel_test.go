package datapath_test

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/testutil"
)

// Backends behind a tunnel, with real traffic: a client, node1 running the datapath (auto
// mode: tc on its veths) on both its links, and node2 holding the backend behind a tunnel
// device, as CNIs reach other nodes' pods:
//
//	client 10.77.0.9 --eth0-- node1 10.77.0.1 | 192.168.77.1 --eth1-- node2 192.168.77.2
//	                                    tunnel (tunl0 / gnv0) over eth1 --> 10.244.2.10 on node2
//
// The SNAT source of a flow into a tunnel is the frontend's address; node2 sends the replies
// back by its plain route, to node1's eth1, which restores them.
const (
	tunClient   = "10.77.0.9"
	tunNode1    = "10.77.0.1"
	tunBackend  = "10.244.2.10"
	tunNodePort = 30080
	tunUDPPort  = 30081
)

// tunnelKinds builds the tunnel on both nodes. Linux's IPIP and Geneve are modules this
// machine's kernel may lack (the host CI runs on has neither): there the subtest skips, and
// `make test-kernel` runs it in guests whose kernels have both (SLUICE_KVM_GUEST makes it a
// failure there).
var tunnelKinds = []struct {
	name  string
	probe []string // an `ip link add` of the kind, to learn whether the kernel has it
	mtu   int      // the tunnel device's
	setup func(t *testing.T, n1, n2 *testutil.Netns)
}{
	{"ipip-nbma", []string{"type", "ipip", "remote", "192.0.2.1"}, 1480, func(t *testing.T, n1, n2 *testutil.Netns) {
		// Calico's tunl0: the per-namespace fallback device, remote any; the far end is the
		// route's gateway, which the kernel reads from the route attached to the packet.
		for i, n := range []*testutil.Netns{n1, n2} {
			if _, err := n.Exec("ip", "link", "show", "tunl0"); err != nil {
				n.MustExec(t, "ip", "link", "add", "tunl0", "type", "ipip")
			}
			n.MustExec(t, "ip", "link", "set", "tunl0", "up")
			n.MustExec(t, "ip", "addr", "add", fmt.Sprintf("10.244.%d.0/32", i+1), "dev", "tunl0")
		}
		n1.MustExec(t, "ip", "route", "add", "10.244.2.0/24", "via", "192.168.77.2", "dev", "tunl0", "onlink")
	}},
	{"geneve", []string{"type", "geneve", "id", "1", "remote", "192.0.2.1"}, 1450, func(t *testing.T, n1, n2 *testutil.Netns) {
		// An L2 tunnel with a fixed far end (OVN-Kubernetes' kind): the neighbour is the
		// other node's tunnel device.
		n1.MustExec(t, "ip", "link", "add", "gnv0", "address", "02:00:00:00:77:01", "type", "geneve", "id", "77", "remote", "192.168.77.2")
		n2.MustExec(t, "ip", "link", "add", "gnv0", "address", "02:00:00:00:77:02", "type", "geneve", "id", "77", "remote", "192.168.77.1")
		for i, n := range []*testutil.Netns{n1, n2} {
			n.MustExec(t, "ip", "link", "set", "gnv0", "up")
			n.MustExec(t, "ip", "addr", "add", fmt.Sprintf("10.244.%d.1/32", i+1), "dev", "gnv0")
		}
		n1.MustExec(t, "ip", "route", "add", "10.244.2.0/24", "via", "10.244.2.1", "dev", "gnv0", "onlink")
		n1.MustExec(t, "ip", "neigh", "replace", "10.244.2.1", "lladdr", "02:00:00:00:77:02", "dev", "gnv0", "nud", "permanent")
	}},
	{"vxlan", []string{"type", "vxlan", "id", "1", "remote", "192.0.2.1", "dstport", "4789"}, 1450, func(t *testing.T, n1, n2 *testutil.Netns) {
		// flannel's kind, with a fixed far end (the lab's VXLAN variant covers flannel's own).
		n1.MustExec(t, "ip", "link", "add", "vx0", "address", "02:00:00:00:78:01", "type", "vxlan", "id", "77", "remote", "192.168.77.2", "dstport", "4789")
		n2.MustExec(t, "ip", "link", "add", "vx0", "address", "02:00:00:00:78:02", "type", "vxlan", "id", "77", "remote", "192.168.77.1", "dstport", "4789")
		for i, n := range []*testutil.Netns{n1, n2} {
			n.MustExec(t, "ip", "link", "set", "vx0", "up")
			n.MustExec(t, "ip", "addr", "add", fmt.Sprintf("10.244.%d.1/32", i+1), "dev", "vx0")
		}
		n1.MustExec(t, "ip", "route", "add", "10.244.2.0/24", "via", "10.244.2.1", "dev", "vx0", "onlink")
		n1.MustExec(t, "ip", "neigh", "replace", "10.244.2.1", "lladdr", "02:00:00:00:78:02", "dev", "vx0", "nud", "permanent")
	}},
}

func TestTunnelsCarryNodePorts(t *testing.T) {
	testutil.RequirePrivileges(t)
	for _, k := range tunnelKinds {
		t.Run(k.name, func(t *testing.T) {
			probe := testutil.NewTestNetns(t, "sl-tunprobe-")
			if out, err := probe.Exec(append([]string{"ip", "link", "add", "probe0"}, k.probe...)...); err != nil {
				if os.Getenv("SLUICE_KVM_GUEST") != "" {
					t.Fatalf("the guest kernel has no %s: %s", k.probe[1], out)
				}
				// A missing module is not a missing privilege: even under CI this host skips, and
				// the guests, which have it, fail instead (SLUICE_KVM_GUEST).
				t.Skipf("this kernel has no %s, not a failure even with CI set (make test-kernel runs it in guests that have it): %s", k.probe[1], strings.TrimSpace(out))
			}
			client, n1, n2, dp := tunnelLab(t)
			k.setup(t, n1, n2)
			must(t, n1.Do(dp.MarkL3Devices))
			checkTunnelFlows(t, client, n2, dp)
			checkTunnelPMTU(t, client, k.mtu)
		})
	}
}

// tunnelLab makes the three namespaces, the datapath on node1's two links, and the services:
// TCP tunNodePort -> tunBackend:8080 and UDP tunUDPPort -> tunBackend:5353, both remote.
func tunnelLab(t *testing.T) (client, n1, n2 *testutil.Netns, dp *datapath.Datapath) {
	t.Helper()
	client = testutil.NewTestNetns(t, "sl-tuncl-")
	n1 = testutil.NewTestNetns(t, "sl-tun1-")
	n2 = testutil.NewTestNetns(t, "sl-tun2-")
	n1.MustExec(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", client.Name)
	n1.MustExec(t, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", n2.Name)
	for _, c := range []struct {
		ns   *testutil.Netns
		cmds [][]string
	}{
		{client, [][]string{{"ip", "addr", "add", tunClient + "/24", "dev", "eth0"}, {"ip", "link", "set", "eth0", "up"},
			{"ip", "route", "add", "default", "via", tunNode1}}},
		{n1, [][]string{{"ip", "addr", "add", tunNode1 + "/24", "dev", "eth0"}, {"ip", "addr", "add", "192.168.77.1/24", "dev", "eth1"},
			{"ip", "link", "set", "eth0", "up"}, {"ip", "link", "set", "eth1", "up"}, {"sysctl", "-qw", "net.ipv4.ip_forward=1"}}},
		{n2, [][]string{{"ip", "addr", "add", "192.168.77.2/24", "dev", "eth0"}, {"ip", "link", "set", "eth0", "up"},
			{"ip", "addr", "add", tunBackend + "/32", "dev", "lo"}, {"ip", "route", "add", "10.77.0.0/24", "via", "192.168.77.1"},
			// The decapsulated packet's source (node1's address) routes back by eth0, not the tunnel.
			{"sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"}, {"sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"}}},
	} {
		for _, cmd := range c.cmds {
			c.ns.MustExec(t, cmd...)
		}
	}
	dp = loadShared(t, datapath.Config{})
	err := n1.Do(func() error {
		// Where packets too big for the next hop without DF go, to be fragmented by the kernel.
		idx, mac, err := datapath.EnsureStackDevice()
		if err != nil {
			return err
		}
		if err := dp.SetStackDevice(idx, mac); err != nil {
			return err
		}
		for dev, addr := range map[string]string{"eth0": tunNode1, "eth1": "192.168.77.1"} {
			a, xdpErr, err := dp.Attach(dev, datapath.XDPAuto, datapath.TCAuto)
			if err != nil {
				return err
			}
			if xdpErr != nil {
				return xdpErr
			}
			t.Cleanup(func() { n1.Do(a.Detach) })
			if err := dp.SetDeviceAddress(a.Ifindex, lb.IPv4, netip.MustParseAddr(addr)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m := maps.NewKernel(&dp.Objs.SluiceMaps)
	node1, backend := netip.MustParseAddr(tunNode1), netip.MustParseAddr(tunBackend)
	must(t, m.UpdateBackend(1, lb.Backend{Addr: backend, Port: 8080}))
	must(t, m.UpdateBackend(2, lb.Backend{Addr: backend, Port: 5353}))
	must(t, m.UpdateSlot(maps.SlotKey{ServiceID: 1, Slot: 1}, 1))
	must(t, m.UpdateSlot(maps.SlotKey{ServiceID: 2, Slot: 1}, 2))
	must(t, m.UpdateFrontend(lb.FrontendKey{Addr: node1, Port: tunNodePort, Proto: lb.TCP}, lb.Frontend{ServiceID: 1, Count: 1}))
	must(t, m.UpdateFrontend(lb.FrontendKey{Addr: node1, Port: tunUDPPort, Proto: lb.UDP}, lb.Frontend{ServiceID: 2, Count: 1}))
	for _, p := range []uint16{tunNodePort, tunUDPPort} {
		must(t, m.SetFrontendPort(p))
	}
	for _, p := range []uint16{8080, 5353} {
		must(t, m.SetBackendPort(p))
	}
	return client, n1, n2, dp
}

// checkTunnelFlows sends TCP connections and UDP datagrams from the client to node1's
// NodePorts; each must reach the backend on node2 from node1's address and come back.
func checkTunnelFlows(t *testing.T, client, n2 *testutil.Netns, dp *datapath.Datapath) {
	t.Helper()
	var tl net.Listener
	var ul net.PacketConn
	must(t, n2.Do(func() error {
		var err error
		if tl, err = net.Listen("tcp", tunBackend+":8080"); err != nil {
			return err
		}
		ul, err = net.ListenPacket("udp", tunBackend+":5353")
		return err
	}))
	t.Cleanup(func() { tl.Close(); ul.Close() })
	go func() { // each connection is told the address it came from
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", c.RemoteAddr())
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := ul.ReadFrom(buf)
			if err != nil {
				return
			}
			// The address it came from, and how long it was (a fragmented datagram arrived whole).
			ul.WriteTo([]byte(fmt.Sprintf("%s %d", from, n)), from)
		}
	}()

	want := tunNode1 + ":"
	var failures []string
	for i := 0; i < 5; i++ {
		var seen string
		err := client.Do(func() error {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(tunNode1, fmt.Sprint(tunNodePort)), 3*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			seen, err = bufio.NewReader(c).ReadString('\n')
			return err
		})
		if err != nil || !strings.HasPrefix(seen, want) {
			failures = append(failures, fmt.Sprintf("TCP %d: backend saw %q, err %v", i, strings.TrimSpace(seen), err))
		}
		err = client.Do(func() error {
			c, err := net.Dial("udp", net.JoinHostPort(tunNode1, fmt.Sprint(tunUDPPort)))
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := fmt.Fprintf(c, "datagram %d", i); err != nil {
				return err
			}
			buf := make([]byte, 100)
			n, err := c.Read(buf)
			seen = string(buf[:n])
			return err
		})
		if err != nil || !strings.HasPrefix(seen, want) {
			failures = append(failures, fmt.Sprintf("UDP %d: backend saw %q, err %v", i, seen, err))
		}
	}
	// A datagram larger than the tunnel's MTU without DF (the client fragments it to its 1500
	// first): translated and handed to the kernel through sluice0, which fragments it for the
	// tunnel; it arrives whole.
	seen, err := udpExchange(client, make([]byte, 4000), unix.IP_PMTUDISC_DONT)
	if err != nil || !strings.HasSuffix(seen, " 4000") {
		failures = append(failures, fmt.Sprintf("4000-byte datagram: backend saw %q, err %v", seen, err))
	}
	if len(failures) > 0 {
		reasons, _ := maps.NewKernel(&dp.Objs.SluiceMaps).Reasons()
		var counted []string
		for r, n := range reasons {
			if n > 0 {
				counted = append(counted, fmt.Sprintf("%s=%d", maps.ReasonNames[r], n))
			}
		}
		t.Errorf("through the tunnel:\n%s\ndatapath reasons: %v", strings.Join(failures, "\n"), counted)
	}
}

// udpExchange sends payload from the client to the UDP NodePort with the given path MTU
// discovery setting and returns the reply.
func udpExchange(client *testutil.Netns, payload []byte, pmtudisc int) (string, error) {
	var reply string
	err := client.Do(func() error {
		c, err := net.Dial("udp4", net.JoinHostPort(tunNode1, fmt.Sprint(tunUDPPort)))
		if err != nil {
			return err
		}
		defer c.Close()
		if err := setPMTUDisc(c, pmtudisc); err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write(payload); err != nil {
			return err
		}
		buf := make([]byte, 200)
		n, err := c.Read(buf)
		reply = string(buf[:n])
		return err
	})
	return reply, err
}

func setPMTUDisc(c net.Conn, v int) error {
	raw, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, v) }); err != nil {
		return err
	}
	return serr
}

// checkTunnelPMTU: a datagram with DF too big for the tunnel is answered by sluice with
// "fragmentation needed" and the tunnel's MTU, which the client learns.
func checkTunnelPMTU(t *testing.T, client *testutil.Netns, want int) {
	t.Helper()
	var mtu int
	err := client.Do(func() error {
		c, err := net.Dial("udp4", net.JoinHostPort(tunNode1, fmt.Sprint(tunUDPPort)))
		if err != nil {
			return err
		}
		defer c.Close()
		if err := setPMTUDisc(c, unix.IP_PMTUDISC_DO); err != nil {
			return err
		}
		raw, _ := c.(*net.UDPConn).SyscallConn()
		for i := 0; i < 10 && mtu != want; i++ {
			c.Write(make([]byte, 1472)) // 1500 bytes of IP: EMSGSIZE once the MTU is learnt
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			c.Read(make([]byte, 200))
			raw.Control(func(fd uintptr) { mtu, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU) })
		}
		return nil
	})
	if err != nil || mtu != want {
		t.Errorf("path MTU through the tunnel: client learnt %d (err %v), want %d", mtu, err, want)
	}
}

// A tun device is an L3 device this machine always has: a flow routed into it leaves with
// no link-layer header, translated, by the kernel's neighbour output (the path tunl0 needs).
// MarkL3Devices marks it, and unmarks it when it is gone.
func TestL3DeviceGetsTranslatedPackets(t *testing.T) {
	testutil.RequirePrivileges(t)
	client, n1, _, dp := tunnelLab(t)
	n1.MustExec(t, "ip", "tuntap", "add", "mode", "tun", "dev", "tun0")
	n1.MustExec(t, "ip", "link", "set", "tun0", "up")
	n1.MustExec(t, "ip", "route", "add", "10.244.2.0/24", "dev", "tun0")
	var tun *os.File
	var tunIndex uint32
	must(t, n1.Do(func() error {
		var err error
		if tun, err = openTun("tun0"); err != nil {
			return err
		}
		ifc, err := net.InterfaceByName("tun0")
		if err != nil {
			return err
		}
		tunIndex = uint32(ifc.Index)
		return dp.MarkL3Devices()
	}))
	defer tun.Close()
	// Attaching the fd turns the carrier on, but linkwatch activates tun0's qdisc later (up
	// to a second): a datagram routed to it before then is dropped (QDISC_DROP). Operstate
	// turns UP in the same step.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(n1.MustExec(t, "ip", "-o", "link", "show", "tun0"), "state UP") {
		if time.Now().After(deadline) {
			t.Fatal("tun0 not operationally up 5 s after its fd attached")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := deviceFlags(t, dp)[tunIndex]; got != 0x02 {
		t.Fatalf("tun0 (%d) flags %#x after MarkL3Devices, want L3 (0x02); all: %v", tunIndex, got, deviceFlags(t, dp))
	}

	must(t, client.Do(func() error {
		c, err := net.Dial("udp", net.JoinHostPort(tunNode1, fmt.Sprint(tunUDPPort)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("to a tun"))
		return err
	}))
	pkt := make([]byte, 2048)
	tun.SetReadDeadline(time.Now().Add(3 * time.Second))
	var n int
	for {
		var err error
		if n, err = tun.Read(pkt); err != nil {
			t.Fatalf("read tun0: %v (nothing translated arrived)", err)
		}
		if n >= 28 && pkt[0]>>4 == 4 && pkt[9] == unix.IPPROTO_UDP {
			break // skip what else the kernel sends into a new device (none for IPv4 today)
		}
	}
	frame := append(make([]byte, 14), pkt[:n]...) // VerifyChecksums reads Ethernet frames
	frame[12], frame[13] = 0x08, 0x00
	if err := testutil.VerifyChecksums(frame); err != nil {
		t.Error(err)
	}
	src, dst := netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
	dport := uint16(pkt[22])<<8 | uint16(pkt[23])
	if src.String() != tunNode1 || dst.String() != tunBackend || dport != 5353 {
		t.Errorf("left by tun0 as %s -> %s:%d, want %s -> %s:5353", src, dst, dport, tunNode1, tunBackend)
	}

	n1.MustExec(t, "ip", "link", "del", "tun0")
	must(t, n1.Do(dp.MarkL3Devices))
	if f, ok := deviceFlags(t, dp)[tunIndex]; ok {
		t.Errorf("tun0 removed but still marked (%#x)", f)
	}
}

func deviceFlags(t *testing.T, dp *datapath.Datapath) map[uint32]uint32 {
	t.Helper()
	out := map[uint32]uint32{}
	var k, v uint32
	it := dp.Objs.SluiceDevices.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	must(t, it.Err())
	return out
}

// openTun attaches to the tun device name (IFF_TUN without packet information: reads are IP
// packets).
func openTun(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	var req [unix.IFNAMSIZ + 64]byte
	copy(req[:], name)
	*(*uint16)(unsafe.Pointer(&req[unix.IFNAMSIZ])) = uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req[0]))); errno != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("attach to %s: %w", name, errno)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), nil
}
