package datapath_test

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/sockterm"
	"github.com/sluicelb/sluice/internal/testutil"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// serve answers on 127.0.0.1 in ns, TCP and UDP, with its name: a backend.
func serve(t *testing.T, ns *testutil.Netns, name string) (tcp, udp netip.AddrPort) {
	t.Helper()
	return serveOn(t, ns, name, netip.MustParseAddr("127.0.0.1"))
}

// serveOn is serve on addr.
func serveOn(t *testing.T, ns *testutil.Netns, name string, addr netip.Addr) (tcp, udp netip.AddrPort) {
	t.Helper()
	var l net.Listener
	var pc net.PacketConn
	fam := "4"
	if addr.Is6() {
		fam = "6"
	}
	at := netip.AddrPortFrom(addr, 0).String()
	if err := ns.Do(func() (err error) {
		if l, err = net.Listen("tcp"+fam, at); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp"+fam, at)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); pc.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			// Read the request first: closing with it unread would reset the connection,
			// and the reply with it.
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, _ = c.Read(make([]byte, 512))
			_, _ = c.Write([]byte(name))
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(name), from)
		}
	}()
	return l.Addr().(*net.TCPAddr).AddrPort(), pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// sockLB is a test's socket LB: a datapath, the socket programs loaded from the network
// namespace in (nil: the test's own; it is the "host" namespace to them) with c, and attached
// to a fresh cgroup; everything goes when the test ends. The load's error is returned: some
// settings are refused on some kernels.
type sockLB struct {
	dp *datapath.Datapath
	s  *datapath.SocketLB
	k  *maps.Kernel
	cg string
}

func newSockLB(t *testing.T, in *testutil.Netns, c datapath.SocketLBConfig) (*sockLB, error) {
	t.Helper()
	testutil.RequirePrivileges(t)
	dp := loadShared(t, datapath.Config{})
	var s *datapath.SocketLB
	var err error
	load := func() (err error) {
		s, err = dp.LoadSocketLB(c)
		return err
	}
	if in != nil {
		err = in.Do(load)
	} else {
		err = load()
	}
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { s.Close() })
	cg := testutil.Cgroup2(t)
	if err := dp.AttachSocketLB(s, cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dp.DetachSocketLB)
	return &sockLB{dp: dp, s: s, k: maps.NewKernel(&dp.Objs.SluiceMaps), cg: cg}, nil
}

// soNetnsCookie says whether the kernel tells a socket's namespace cookie (Linux 5.14).
func soNetnsCookie() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	return err
}

// TestSocketLB: a process in the programs' cgroup that connects, or sends unconnected UDP, to
// a frontend reaches a backend directly and is shown the frontend as its peer; a frontend with
// no backend, and an address that is no frontend, are left to the kernel; with session
// affinity a namespace keeps its backend; a socket-scope entry is preferred to the packets'.
func TestSocketLB(t *testing.T) {
	l, err := newSockLB(t, nil, datapath.SocketLBConfig{})
	if err != nil {
		t.Fatal(err)
	}
	k, cg := l.k, l.cg
	ns := testutil.NewTestNetns(t, "sk")
	aTCP, aUDP := serve(t, ns, "backend-a")
	bTCP, bUDP := serve(t, ns, "backend-b")

	fe := netip.MustParseAddr("10.0.0.1") // a "node address": the namespace has no route to it
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	backend := func(id uint32, ap netip.AddrPort) {
		must(k.UpdateBackend(id, lb.Backend{Addr: ap.Addr(), Port: ap.Port(), Local: true}))
	}
	service := func(id uint32, key lb.FrontendKey, flags lb.FrontendFlags, backends ...uint32) {
		for i, b := range backends {
			must(k.UpdateSlot(maps.SlotKey{ServiceID: id, Slot: uint32(i + 1)}, b))
			if flags&lb.FrontendAffinity != 0 {
				must(k.UpdateAffinityMatch(maps.AffinityMatch{ServiceID: id, BackendID: b}))
			}
		}
		must(k.UpdateFrontend(key, lb.Frontend{ServiceID: id, Count: uint16(len(backends)), Flags: flags, AffinityTimeout: 60}))
	}
	backend(1, aTCP)
	backend(2, aUDP)
	backend(3, bTCP)
	service(1, lb.FrontendKey{Addr: fe, Port: 30080, Proto: lb.TCP}, 0, 1)
	service(2, lb.FrontendKey{Addr: fe, Port: 30053, Proto: lb.UDP}, 0, 2)
	service(3, lb.FrontendKey{Addr: fe, Port: 30081, Proto: lb.TCP}, 0) // no endpoint
	service(8, lb.FrontendKey{Addr: fe, Port: 30081, Proto: lb.UDP}, 0)
	service(4, lb.FrontendKey{Addr: fe, Port: 30082, Proto: lb.TCP}, lb.FrontendAffinity, 1, 3)
	// externalTrafficPolicy Local with no endpoint here: packets are dropped, but clients on
	// the node get the Cluster endpoints through the socket scope's entry.
	service(5, lb.FrontendKey{Addr: fe, Port: 30083, Proto: lb.TCP}, lb.FrontendDropEmpty)
	service(6, lb.FrontendKey{Addr: fe, Port: 30083, Proto: lb.TCP, Socket: true}, 0, 3)
	// A ClusterIP: one entry for every client.
	service(7, lb.FrontendKey{Addr: netip.MustParseAddr("10.96.0.10"), Port: 53, Proto: lb.UDP}, 0, 2)
	_ = bUDP

	client := func(kind, addr string) testutil.SockResult {
		t.Helper()
		return testutil.SockRequest(t, cg, ns.Path(), kind, addr)
	}
	for _, c := range []struct {
		kind, addr, reply string
	}{
		{"tcp", "10.0.0.1:30080", "backend-a"},
		{"udp-connected", "10.0.0.1:30053", "backend-a"},
		{"udp-unconnected", "10.0.0.1:30053", "backend-a"},
		{"tcp", "10.0.0.1:30083", "backend-b"},
		{"udp-connected", "10.96.0.10:53", "backend-a"},
		{"udp-unconnected", "10.96.0.10:53", "backend-a"},
	} {
		r := client(c.kind, c.addr)
		if r.Err != "" || r.Reply != c.reply || r.Peer != c.addr {
			t.Errorf("%s to %s: got reply %q from peer %q (error %q); want %q from %s", c.kind, c.addr, r.Reply, r.Peer, r.Err, c.reply, c.addr)
		}
	}
	// No endpoint: refused, as kube-proxy rejects, where the kernel has bpf_set_retval (5.18);
	// before, untouched, so the kernel answers (here: no route to the address).
	want := "unreachable"
	if features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSetRetval) == nil {
		want = "refused"
	}
	for _, kind := range []string{"tcp", "udp-unconnected"} {
		if r := client(kind, "10.0.0.1:30081"); r.Err == "" || !strings.Contains(r.Err, want) {
			t.Errorf("%s to a frontend with no endpoint: %+v; want an error saying %q", kind, r, want)
		}
	}
	// Not a frontend: untouched.
	if r := client("tcp", bTCP.String()); r.Reply != "backend-b" || r.Peer != bTCP.String() {
		t.Errorf("to a backend directly: %+v", r)
	}
	// Affinity: every connection of the namespace goes where its first went.
	first := client("tcp", "10.0.0.1:30082")
	if first.Err != "" {
		t.Fatalf("affinity: %+v", first)
	}
	for i := 0; i < 8; i++ {
		if r := client("tcp", "10.0.0.1:30082"); r.Reply != first.Reply || r.Peer != "10.0.0.1:30082" {
			t.Fatalf("affinity: connection %d reached %q (peer %q), the first %q", i+2, r.Reply, r.Peer, first.Reply)
		}
	}
}

// NodePorts on loopback are served to the loader's network namespace only (the node's), on
// every 127.0.0.0/8 address, where the kernel can tell namespaces apart (SO_NETNS_COOKIE,
// 5.14); another namespace's loopback is its own. Before 5.14 nobody gets them.
func TestSocketLBLocalhostNodePorts(t *testing.T) {
	testutil.RequirePrivileges(t)
	node := testutil.NewTestNetns(t, "skl")
	pod := testutil.NewTestNetns(t, "skp")
	pod.MustExec(t, "ip", "link", "set", "lo", "up")
	l, err := newSockLB(t, node, datapath.SocketLBConfig{LocalhostNodePorts: true})
	if err != nil {
		t.Fatal(err)
	}
	s, k, cg := l.s, l.k, l.cg
	cookieErr := soNetnsCookie()
	if want := cookieErr == nil; s.Localhost != want {
		t.Fatalf("localhost NodePorts %v, want %v (SO_NETNS_COOKIE: %v)", s.Localhost, want, cookieErr)
	}
	aTCP, _ := serve(t, node, "backend-a")
	if err := k.UpdateBackend(1, lb.Backend{Addr: aTCP.Addr(), Port: aTCP.Port(), Local: true}); err != nil {
		t.Fatal(err)
	}
	if err := k.UpdateSlot(maps.SlotKey{ServiceID: 1, Slot: 1}, 1); err != nil {
		t.Fatal(err)
	}
	key := lb.FrontendKey{Addr: netip.MustParseAddr("127.0.0.1"), Port: 30080, Proto: lb.TCP, Socket: true}
	if err := k.UpdateFrontend(key, lb.Frontend{ServiceID: 1, Count: 1}); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"127.0.0.1:30080", "127.0.0.2:30080"} {
		r := testutil.SockRequest(t, cg, node.Path(), "tcp", addr)
		if s.Localhost && (r.Err != "" || r.Reply != "backend-a" || r.Peer != addr) {
			t.Errorf("the node to %s: %+v, want backend-a shown as %s", addr, r, addr)
		}
		if !s.Localhost && !strings.Contains(r.Err, "refused") {
			t.Errorf("the node to %s without localhost NodePorts: %+v, want refused", addr, r)
		}
	}
	if r := testutil.SockRequest(t, cg, pod.Path(), "tcp", "127.0.0.1:30080"); !strings.Contains(r.Err, "refused") {
		t.Errorf("a pod to its own loopback's 30080: %+v, want it left alone (refused: nothing listens)", r)
	}
}

// With HostNamespaceOnly a pod's sockets are left alone and the node's are balanced; a kernel
// that cannot tell the two apart (before 5.14) refuses the setting rather than balance all.
func TestSocketLBHostNamespaceOnly(t *testing.T) {
	testutil.RequirePrivileges(t)
	node := testutil.NewTestNetns(t, "skh")
	pod := testutil.NewTestNetns(t, "skq")
	pod.MustExec(t, "ip", "link", "set", "lo", "up")
	l, err := newSockLB(t, node, datapath.SocketLBConfig{HostNamespaceOnly: true})
	if cookieErr := soNetnsCookie(); cookieErr != nil {
		if err == nil || !strings.Contains(err.Error(), "5.14") {
			t.Fatalf("without SO_NETNS_COOKIE: %v, want the setting refused", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	k, cg := l.k, l.cg
	// A backend on each side's loopback, one service: whoever is translated reaches its own.
	nodeTCP, _ := serve(t, node, "node-backend")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(k.UpdateBackend(1, lb.Backend{Addr: nodeTCP.Addr(), Port: nodeTCP.Port(), Local: true}))
	must(k.UpdateSlot(maps.SlotKey{ServiceID: 1, Slot: 1}, 1))
	fe := lb.FrontendKey{Addr: netip.MustParseAddr("10.0.0.1"), Port: 30080, Proto: lb.TCP}
	must(k.UpdateFrontend(fe, lb.Frontend{ServiceID: 1, Count: 1}))
	if r := testutil.SockRequest(t, cg, node.Path(), "tcp", "10.0.0.1:30080"); r.Reply != "node-backend" {
		t.Errorf("the node: %+v, want it balanced", r)
	}
	if r := testutil.SockRequest(t, cg, pod.Path(), "tcp", "10.0.0.1:30080"); r.Err == "" || !strings.Contains(r.Err, "unreachable") {
		t.Errorf("a pod: %+v, want it left alone (no route to the address)", r)
	}
}

// TestSocketLBIPv6: IPv6 sockets in the cgroup are balanced as IPv4's are, on the IPv6
// datapath's frontends and backends (connect6, sendmsg6, recvmsg6, getpeername6), IPv4's beside
// them unchanged, and an IPv6 socket to an IPv4-mapped frontend on IPv4's; a bind to an IPv6
// frontend is refused (post_bind6).
func TestSocketLBIPv6(t *testing.T) {
	testutil.RequirePrivileges(t)
	dp := loadShared(t, datapath.Config{})
	_, v6, cg := attachBothFamilies(t, dp, true)
	k := maps.NewKernel(&dp.Objs.SluiceMaps).WithIPv6(&v6.Objs.Sluice6Maps)

	ns := testutil.NewTestNetns(t, "sk6")
	// The "node address" is the namespace's own, so that a bind to it gets as far as post_bind6.
	ns.MustExec(t, "ip", "-6", "addr", "add", "fd00::1/128", "dev", "lo", "nodad")
	aTCP, aUDP := serveOn(t, ns, "backend-a6", netip.MustParseAddr("::1"))
	v4TCP, _ := serve(t, ns, "backend-a4")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for id, ap := range map[uint32]netip.AddrPort{1: aTCP, 2: aUDP, 3: v4TCP} {
		must(k.UpdateBackend(id, lb.Backend{Addr: ap.Addr(), Port: ap.Port(), Local: true}))
	}
	fe6, fe4 := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("10.0.0.1")
	for _, sv := range []struct {
		id, backend uint32
		key         lb.FrontendKey
	}{
		{11, 1, lb.FrontendKey{Addr: fe6, Port: 30080, Proto: lb.TCP}},
		{12, 2, lb.FrontendKey{Addr: fe6, Port: 30053, Proto: lb.UDP}},
		{13, 0, lb.FrontendKey{Addr: fe6, Port: 30081, Proto: lb.TCP}},
		{14, 3, lb.FrontendKey{Addr: fe4, Port: 30080, Proto: lb.TCP}},
	} {
		count := uint16(0)
		if sv.backend != 0 {
			must(k.UpdateSlot(maps.SlotKey{ServiceID: sv.id, Slot: 1}, sv.backend))
			count = 1
		}
		must(k.UpdateFrontend(sv.key, lb.Frontend{ServiceID: sv.id, Count: count}))
	}
	for _, c := range []struct{ kind, addr, reply string }{
		{"tcp", "[fd00::1]:30080", "backend-a6"},
		{"udp-connected", "[fd00::1]:30053", "backend-a6"},
		{"udp-unconnected", "[fd00::1]:30053", "backend-a6"},
		{"tcp", "10.0.0.1:30080", "backend-a4"},
		// An IPv6 socket to an IPv4 frontend through its IPv4-mapped address (Java's way):
		// connect6 balances it on IPv4's entries.
		{"tcp-v4mapped", "[::ffff:10.0.0.1]:30080", "backend-a4"},
	} {
		r := testutil.SockRequest(t, cg, ns.Path(), c.kind, c.addr)
		if r.Err != "" || r.Reply != c.reply || r.Peer != c.addr {
			t.Errorf("%s to %s: got reply %q from peer %q (error %q); want %q from %s", c.kind, c.addr, r.Reply, r.Peer, r.Err, c.reply, c.addr)
		}
	}
	// No endpoint: refused where the kernel has bpf_set_retval, else the kernel's (nothing
	// listens on the namespace's fd00::1:30081: refused too).
	if r := testutil.SockRequest(t, cg, ns.Path(), "tcp", "[fd00::1]:30081"); !strings.Contains(r.Err, "refused") {
		t.Errorf("tcp to an IPv6 frontend with no endpoint: %+v, want refused", r)
	}
	if r := testutil.SockRequest(t, cg, ns.Path(), "bind-tcp", "[fd00::1]:30080"); !strings.Contains(r.Err, "not permitted") {
		t.Errorf("bind to an IPv6 frontend: %+v, want it refused", r)
	}
	if r := testutil.SockRequest(t, cg, ns.Path(), "bind-tcp", "[fd00::1]:30999"); r.Reply != "bound" {
		t.Errorf("bind to another port: %+v, want bound", r)
	}
}

// attachBothFamilies loads both families' socket programs on dp, with the IPv6 datapath
// first when ipv6 (else they serve IPv4-mapped addresses only), and attaches them to a cgroup
// of the test's.
func attachBothFamilies(t *testing.T, dp *datapath.Datapath, ipv6 bool) (*datapath.SocketLB, *datapath.IPv6, string) {
	t.Helper()
	s, err := dp.LoadSocketLB(datapath.SocketLBConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	var v6 *datapath.IPv6
	if ipv6 {
		if v6, err = dp.LoadIPv6(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { v6.Close() })
	}
	if err := dp.LoadSocketLB6(s); err != nil {
		t.Fatal(err)
	}
	cg := testutil.Cgroup2(t)
	if err := dp.AttachSocketLB(s, cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dp.DetachSocketLB)
	return s, v6, cg
}

// TestSocketLBIPv4MappedWithoutIPv6: on a node without IPv6 (no IPv6 datapath loaded), the
// IPv6 socket programs still balance an IPv6 socket's IPv4-mapped connect to an IPv4 frontend
// (Java's way) and show it the address it asked for; IPv6 destinations are left alone.
func TestSocketLBIPv4MappedWithoutIPv6(t *testing.T) {
	testutil.RequirePrivileges(t)
	// Not a shared datapath: one that has had the IPv6 datapath keeps it.
	dp, err := datapath.Load(datapath.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	s, _, cg := attachBothFamilies(t, dp, false)
	k := maps.NewKernel(&dp.Objs.SluiceMaps)

	ns := testutil.NewTestNetns(t, "sk4in6")
	v4TCP, v4UDP := serve(t, ns, "backend-a4")
	bTCP, _ := serve(t, ns, "backend-b4")
	v6TCP, _ := serveOn(t, ns, "plain6", netip.MustParseAddr("::1"))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(k.UpdateBackend(3, lb.Backend{Addr: v4TCP.Addr(), Port: v4TCP.Port(), Local: true}))
	must(k.UpdateSlot(maps.SlotKey{ServiceID: 14, Slot: 1}, 3))
	must(k.UpdateFrontend(lb.FrontendKey{Addr: netip.MustParseAddr("10.0.0.1"), Port: 30080, Proto: lb.TCP}, lb.Frontend{ServiceID: 14, Count: 1}))
	// Session affinity over two backends: the remembered one is looked up among IPv4's backends.
	must(k.UpdateBackend(4, lb.Backend{Addr: bTCP.Addr(), Port: bTCP.Port(), Local: true}))
	for slot, id := range []uint32{3, 4} {
		must(k.UpdateSlot(maps.SlotKey{ServiceID: 15, Slot: uint32(slot + 1)}, id))
		must(k.UpdateAffinityMatch(maps.AffinityMatch{ServiceID: 15, BackendID: id}))
	}
	must(k.UpdateFrontend(lb.FrontendKey{Addr: netip.MustParseAddr("10.0.0.1"), Port: 30081, Proto: lb.TCP},
		lb.Frontend{ServiceID: 15, Count: 2, Flags: lb.FrontendAffinity, AffinityTimeout: 60}))
	for _, c := range []struct{ kind, addr, reply string }{
		{"tcp-v4mapped", "[::ffff:10.0.0.1]:30080", "backend-a4"},
		{"tcp", "10.0.0.1:30080", "backend-a4"},
		{"tcp", v6TCP.String(), "plain6"},
	} {
		r := testutil.SockRequest(t, cg, ns.Path(), c.kind, c.addr)
		if r.Err != "" || r.Reply != c.reply || r.Peer != c.addr {
			t.Errorf("%s to %s: got reply %q from peer %q (error %q); want %q from %s", c.kind, c.addr, r.Reply, r.Peer, r.Err, c.reply, c.addr)
		}
	}
	seen := map[string]int{}
	for _, r := range testutil.SockRequests(t, cg, ns.Path(), "tcp-v4mapped", "[::ffff:10.0.0.1]:30081", 16) {
		if r.Err != "" {
			t.Fatalf("tcp-v4mapped to the affinity frontend: %+v", r)
		}
		seen[r.Reply]++
	}
	if len(seen) != 1 {
		t.Errorf("with session affinity, IPv4-mapped connects reached %v; want one backend", seen)
	}

	// A connected IPv6 UDP socket translated through the IPv4-mapped address is ended, as its
	// endpoint stops serving, from the entry the program wrote in the IPv6 reverse map.
	must(k.UpdateBackend(5, lb.Backend{Addr: v4UDP.Addr(), Port: v4UDP.Port(), Local: true}))
	must(k.UpdateSlot(maps.SlotKey{ServiceID: 16, Slot: 1}, 5))
	must(k.UpdateFrontend(lb.FrontendKey{Addr: netip.MustParseAddr("10.0.0.1"), Port: 5353, Proto: lb.UDP}, lb.Frontend{ServiceID: 16, Count: 1}))
	h := testutil.SockHeld(t, cg, ns.Path(), "[::ffff:10.0.0.1]:5353")
	if h.First.Err != "" || h.First.Reply != "backend-a4" {
		t.Fatalf("held IPv4-mapped UDP socket: %+v", h.First)
	}
	term := &sockterm.Terminator{Revnat: s.Revnat(), Revnat6: s.Revnat6(), ProcFS: "/proc", Log: zap.NewNop()}
	if n, err := term.Terminate(map[maps.FlowTarget]bool{{ServiceID: 16, Backend: v4UDP}: true}); err != nil || n != 1 {
		t.Fatalf("terminated %d sockets (%v), want the held one", n, err)
	}
	if r := h.Next(t); !strings.Contains(r.Err, unix.ECONNABORTED.Error()) {
		t.Errorf("the held IPv4-mapped socket after its endpoint went: %+v, want it ended", r)
	}
}
