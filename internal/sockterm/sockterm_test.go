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

// udpSocket is a UDP socket in ns connected to to, and its cookie.
func udpSocket(t *testing.T, ns *testutil.Netns, to netip.AddrPort) (int, uint64) {
	t.Helper()
	var fd int
	var cookie uint64
	err := ns.Do(func() error {
		var err error
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0); err != nil {
			return err
		}
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: to.Addr().As4(), Port: int(to.Port())}); err != nil {
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

// Only the sockets the socket programs pointed at an endpoint that stopped serving are ended,
// in whichever namespace they are: one pointed at a serving endpoint, and one an application
// connected to the endpoint itself, are left alone.
func TestTerminateEndsSocketsOfGoneEndpoints(t *testing.T) {
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
