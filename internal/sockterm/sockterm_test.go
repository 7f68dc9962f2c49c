package sockterm_test

import (
	"errors"
	"net/netip"
	"os/exec"
	"testing"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf"
	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/sockterm"
	"github.com/sluicelb/sluice/internal/testutil"
)

// udpSocket is a UDP socket in ns connected to to, and its cookie: an IPv6 socket for an IPv6
// or IPv4-mapped address.
func udpSocket(t *testing.T, ns *testutil.Netns, to netip.AddrPort) (int, uint64) {
	t.Helper()
	var fd int
	var cookie uint64
	err := ns.Do(func() error {
		var err error
		family := unix.AF_INET6
		var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: to.Addr().As16(), Port: int(to.Port())}
		if to.Addr().Is4() {
			family, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: to.Addr().As4(), Port: int(to.Port())}
		}
		if fd, err = unix.Socket(family, unix.SOCK_DGRAM, 0); err != nil {
			return err
		}
		if err := unix.Connect(fd, sa); err != nil {
			return err
		}
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, cookie
}

// holdNamespace keeps a process in ns, as a pod's pause process holds its namespace: the
// terminator finds namespaces through processes.
func holdNamespace(t *testing.T, ns *testutil.Netns) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// loadSocketLB loads a datapath and its socket programs, both families' (the IPv6 ones
// without the IPv6 datapath: for IPv4-mapped sockets, and their reverse map), unattached.
func loadSocketLB(t *testing.T) *datapath.SocketLB {
	t.Helper()
	testutil.RequirePrivileges(t)
	dp, err := datapath.Load(datapath.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	s, err := dp.LoadSocketLB(datapath.SocketLBConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := dp.LoadSocketLB6(s); err != nil {
		t.Fatal(err)
	}
	return s
}

// Only the sockets the socket programs pointed at an endpoint that stopped serving are ended,
// in whichever namespace they are: one pointed at a serving endpoint, and one an application
// connected to the endpoint itself, are left alone.
func TestTerminateEndsSocketsOfGoneEndpoints(t *testing.T) {
	s := loadSocketLB(t)
	pod := testutil.NewTestNetns(t, "skt")
	holdNamespace(t, pod)
	for _, cmd := range [][]string{{"ip", "link", "set", "lo", "up"}, {"ip", "addr", "add", "10.244.1.5/24", "dev", "lo"}} {
		pod.MustExec(t, cmd...)
	}
	gone, kept := netip.MustParseAddrPort("10.244.1.10:5353"), netip.MustParseAddrPort("10.244.1.11:5353")
	translated, cookie := udpSocket(t, pod, gone)
	serving, servingCookie := udpSocket(t, pod, kept)
	direct, _ := udpSocket(t, pod, gone) // no reverse entry: not sluice's
	const svc = 7
	for c, be := range map[uint64]netip.AddrPort{cookie: gone, servingCookie: kept} {
		k := datapath.SluiceSockSockRevnatKey{Cookie: c, Addr: maps.Addr4(be.Addr()), Port: maps.Port16(be.Port()), Proto: uint8(lb.UDP)}
		v := datapath.SluiceSockSockRevnat{Addr: maps.Addr4(netip.MustParseAddr("10.96.0.10")), Port: maps.Port16(53), SvcId: svc}
		if err := s.Revnat().Put(&k, &v); err != nil {
			t.Fatal(err)
		}
	}

	term := &sockterm.Terminator{Revnat: s.Revnat(), ProcFS: "/proc", Log: zap.NewNop()}
	n, err := term.Terminate(map[maps.FlowTarget]bool{{ServiceID: svc, Backend: gone}: true})
	if err != nil || n != 1 {
		t.Fatalf("terminated %d sockets (%v), want 1", n, err)
	}
	// The ended socket is disconnected (a send without an address fails), and says why.
	if _, err := unix.Write(translated, []byte("x")); !errors.Is(err, unix.EDESTADDRREQ) {
		t.Errorf("the socket pointed at the gone endpoint: write %v, want EDESTADDRREQ (disconnected)", err)
	}
	if e, err := unix.GetsockoptInt(translated, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || unix.Errno(e) != unix.ECONNABORTED {
		t.Errorf("the socket pointed at the gone endpoint: SO_ERROR %v (%v), want ECONNABORTED", unix.Errno(e), err)
	}
	for name, fd := range map[string]int{"pointed at a serving endpoint": serving, "connected by the application itself": direct} {
		if _, err := unix.Write(fd, []byte("x")); err != nil {
			t.Errorf("the socket %s: write %v, want it untouched", name, err)
		}
	}
	// Its reverse entry went with it; the serving one's stays.
	if k, err := revnatCookies(s.Revnat()); err != nil || len(k) != 1 || !k[servingCookie] {
		t.Errorf("reverse entries left: %v %v", k, err)
	}
}

func revnatCookies(m *ebpf.Map) (map[uint64]bool, error) {
	out := map[uint64]bool{}
	var k datapath.SluiceSockSockRevnatKey
	var v datapath.SluiceSockSockRevnat
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k.Cookie] = true
	}
	return out, it.Err()
}

// The same for IPv6 sockets, found in the IPv6 socket programs' reverse map: one pointed at a
// gone IPv6 endpoint, one at a gone IPv4 endpoint through its IPv4-mapped address (Java's
// way); one pointed at a serving IPv6 endpoint is left alone.
func TestTerminateEndsIPv6Sockets(t *testing.T) {
	s := loadSocketLB(t)
	pod := testutil.NewTestNetns(t, "skt6")
	holdNamespace(t, pod)
	for _, cmd := range [][]string{{"ip", "link", "set", "lo", "up"}, {"ip", "addr", "add", "10.244.1.5/24", "dev", "lo"},
		{"ip", "-6", "addr", "add", "fd00:244::5/64", "dev", "lo", "nodad"}} {
		pod.MustExec(t, cmd...)
	}
	gone6, kept6 := netip.MustParseAddrPort("[fd00:244::10]:5353"), netip.MustParseAddrPort("[fd00:244::11]:5353")
	gone4 := netip.MustParseAddrPort("10.244.1.10:5353")
	mapped := netip.AddrPortFrom(netip.AddrFrom16(gone4.Addr().As16()), gone4.Port())
	sock6, cookie6 := udpSocket(t, pod, gone6)
	sockMapped, cookieMapped := udpSocket(t, pod, mapped)
	serving, servingCookie := udpSocket(t, pod, kept6)
	const svc4, svc6 = 7, 8
	for c, e := range map[uint64]struct {
		be  netip.AddrPort
		svc uint32
	}{cookie6: {gone6, svc6}, cookieMapped: {mapped, svc4}, servingCookie: {kept6, svc6}} {
		k := datapath.SluiceSock6SockRevnatKey{Cookie: c, Addr: datapath.SluiceSock6AddrT{B: e.be.Addr().As16()}, Port: maps.Port16(e.be.Port()), Proto: uint8(lb.UDP)}
		v := datapath.SluiceSock6SockRevnat{Port: maps.Port16(53), SvcId: e.svc}
		if err := s.Revnat6().Put(&k, &v); err != nil {
			t.Fatal(err)
		}
	}

	term := &sockterm.Terminator{Revnat: s.Revnat(), Revnat6: s.Revnat6(), ProcFS: "/proc", Log: zap.NewNop()}
	n, err := term.Terminate(map[maps.FlowTarget]bool{{ServiceID: svc6, Backend: gone6}: true, {ServiceID: svc4, Backend: gone4}: true})
	if err != nil || n != 2 {
		t.Fatalf("terminated %d sockets (%v), want 2", n, err)
	}
	for name, fd := range map[string]int{"to the gone IPv6 endpoint": sock6, "to the gone IPv4 endpoint, IPv4-mapped": sockMapped} {
		if e, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || unix.Errno(e) != unix.ECONNABORTED {
			t.Errorf("the socket %s: SO_ERROR %v (%v), want ECONNABORTED", name, unix.Errno(e), err)
		}
	}
	if _, err := unix.Write(serving, []byte("x")); err != nil {
		t.Errorf("the socket pointed at a serving endpoint: write %v, want it untouched", err)
	}
	var k datapath.SluiceSock6SockRevnatKey
	var v datapath.SluiceSock6SockRevnat
	left := map[uint64]bool{}
	for it := s.Revnat6().Iterate(); it.Next(&k, &v); {
		left[k.Cookie] = true
	}
	if len(left) != 1 || !left[servingCookie] {
		t.Errorf("IPv6 reverse entries left: %v, want only the serving socket's", left)
	}
}
