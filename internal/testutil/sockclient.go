package testutil

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The socket client runs as a process of its own (the test binary again): cgroup v2 membership
// is per process, and only sockets created in the socket programs' cgroup are balanced.
const sockClientEnv = "SLUICE_SOCK_CLIENT"

// SockResult is what the client saw: the reply, and the peer as the application is shown it
// (getpeername for connected sockets, recvfrom's address for unconnected UDP).
type SockResult struct {
	Reply, Peer, Err string
}

// SockClientMain, called first in a TestMain, turns the test binary into the socket client
// when SockRequest runs it: it joins the cgroup and namespace it is given, makes one request
// and exits.
func SockClientMain() {
	if os.Getenv(sockClientEnv) != "" {
		os.Exit(sockClient())
	}
}

// sockClient makes n requests, each on a new socket, as
// SLUICE_SOCK_CLIENT=<cgroup>|<netns path>|<tcp|udp-connected|udp-unconnected|bind-tcp|bind-udp>|<addr:port>|<n>,
// and prints one SockResult per request.
func sockClient() int {
	f := strings.Split(os.Getenv(sockClientEnv), "|")
	n, _ := strconv.Atoi(f[4])
	enc := json.NewEncoder(os.Stdout)
	fail := func(err error) int {
		for i := 0; i < n; i++ {
			_ = enc.Encode(SockResult{Err: err.Error()})
		}
		return 0
	}
	if err := os.WriteFile(filepath.Join(f[0], "cgroup.procs"), []byte(fmt.Sprint(os.Getpid())), 0o644); err != nil {
		return fail(err)
	}
	runtime.LockOSThread()
	h, err := netns.GetFromPath(f[1])
	if err == nil {
		err = netns.Set(h)
	}
	if err != nil {
		return fail(err)
	}
	if f[2] == "udp-held" {
		return heldClient(f[3], enc)
	}
	for i := 0; i < n; i++ {
		var r SockResult
		r.Reply, r.Peer, err = sockRequest(f[2], f[3])
		if err != nil {
			r.Err = err.Error()
		}
		_ = enc.Encode(r)
	}
	return 0
}

func sockRequest(kind, addr string) (reply, peer string, err error) {
	// The address's family picks the socket's: "4" or "6" after tcp or udp.
	fam := "4"
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Is6() {
		fam = "6"
	}
	// bind-tcp, bind-udp: only whether the address can be bound ("bound", or the error).
	if proto, ok := strings.CutPrefix(kind, "bind-"); ok {
		var c io.Closer
		if proto == "tcp" {
			c, err = net.Listen("tcp"+fam, addr)
		} else {
			c, err = net.ListenPacket("udp"+fam, addr)
		}
		if err != nil {
			return "", "", err
		}
		c.Close()
		return "bound", "", nil
	}
	buf := make([]byte, 512)
	if kind == "udp-unconnected" {
		c, err := net.ListenUDP("udp"+fam, nil)
		if err != nil {
			return "", "", err
		}
		defer c.Close()
		dst, _ := net.ResolveUDPAddr("udp"+fam, addr)
		if _, err := c.WriteTo([]byte("ping"), dst); err != nil {
			return "", "", err
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			return "", "", err
		}
		return string(buf[:n]), from.String(), nil
	}
	var c net.Conn
	if kind == "tcp-v4mapped" {
		// An IPv6 socket without IPV6_V6ONLY to an IPv4-mapped address (Java's way): Go's own
		// dialer would open an IPv4 socket for it.
		c, err = dialV4Mapped(addr)
		kind = "tcp"
	} else {
		c, err = net.DialTimeout(strings.TrimSuffix(kind, "-connected")+fam, addr, 2*time.Second)
	}
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	// The peer as the kernel reports it now (net.Conn caches the address it dialled).
	rc, _ := c.(syscall.Conn).SyscallConn()
	_ = rc.Control(func(fd uintptr) {
		if sa, e := syscall.Getpeername(int(fd)); e == nil {
			switch in := sa.(type) {
			case *syscall.SockaddrInet4:
				peer = netip.AddrPortFrom(netip.AddrFrom4(in.Addr), uint16(in.Port)).String()
			case *syscall.SockaddrInet6:
				peer = netip.AddrPortFrom(netip.AddrFrom16(in.Addr), uint16(in.Port)).String()
			}
		}
	})
	// An HTTP request for the lab's backends; the tests' own answer anything.
	if _, err := c.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		return "", peer, err
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if kind == "udp-connected" {
		n, err := c.Read(buf)
		return string(buf[:n]), peer, err
	}
	b, err := io.ReadAll(io.LimitReader(c, 4096))
	if len(b) > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
		err = nil
	}
	return string(b), peer, err
}

// Cgroup2Root is where the cgroup v2 hierarchy is mounted (the unified one of a hybrid setup),
// or "" when it is not.
func Cgroup2Root() string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		pre, post, _ := strings.Cut(l, " - ")
		if f := strings.Fields(pre); strings.HasPrefix(post, "cgroup2 ") && len(f) > 4 {
			return f[4]
		}
	}
	return ""
}

// Cgroup2 is a fresh cgroup v2 for the test: under the mounted v2 hierarchy (the unified one of
// a hybrid setup), or a v2 mount of the test's own.
func Cgroup2(t testing.TB) string {
	t.Helper()
	root := Cgroup2Root()
	if root == "" {
		root = t.TempDir()
		if err := syscall.Mount("none", root, "cgroup2", 0, ""); err != nil {
			t.Fatalf("mount cgroup2: %v", err)
		}
		t.Cleanup(func() { _ = syscall.Unmount(root, syscall.MNT_DETACH) })
	}
	cg := filepath.Join(root, UniqueName("sluice-socklb-"))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(cg) })
	return cg
}

// SockRequest runs one request from a process of its own in cgroup and the network namespace
// at nsPath (the test binary again: see SockClientMain) and returns what it saw.
func SockRequest(t testing.TB, cgroup, nsPath, kind, addr string) SockResult {
	t.Helper()
	return SockRequests(t, cgroup, nsPath, kind, addr, 1)[0]
}

// SockRequests is SockRequest n times, each on a new socket, from one process.
func SockRequests(t testing.TB, cgroup, nsPath, kind, addr string, n int) []SockResult {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), sockClientEnv+"="+strings.Join([]string{cgroup, nsPath, kind, addr, strconv.Itoa(n)}, "|"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("socket client: %v\n%s", err, out)
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	rs := make([]SockResult, n)
	for i := range rs {
		if err := dec.Decode(&rs[i]); err != nil {
			t.Fatalf("socket client said %q: %v", out, err)
		}
	}
	return rs
}

// heldClient is the "udp-held" kind: one connected UDP socket that makes a request for every
// line on stdin (the first at once), until stdin closes. A request's error says what the
// socket had pending (SO_ERROR) too: an ended socket is disconnected, and sends then fail for
// want of an address.
func heldClient(addr string, enc *json.Encoder) int {
	var c net.Conn
	var err error
	switch ap, _ := netip.ParseAddrPort(addr); {
	case ap.Addr().Is4In6():
		c, err = dialMapped(unix.SOCK_DGRAM, addr) // Go's dialer would open an IPv4 socket
	case ap.Addr().Is6():
		c, err = net.Dial("udp6", addr)
	default:
		c, err = net.Dial("udp4", addr)
	}
	if err != nil {
		_ = enc.Encode(SockResult{Err: err.Error()})
		return 0
	}
	defer c.Close()
	rc, _ := c.(syscall.Conn).SyscallConn()
	in := bufio.NewScanner(os.Stdin)
	buf := make([]byte, 512)
	for first := true; first || in.Scan(); first = false {
		var r SockResult
		_ = rc.Control(func(fd uintptr) {
			if e, err := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_ERROR); err == nil && e != 0 {
				r.Err = "pending: " + syscall.Errno(e).Error() + "; "
			}
		})
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			r.Err += err.Error()
		} else if n, err := c.Read(buf); err != nil {
			r.Err += err.Error()
		} else {
			r.Reply = string(buf[:n])
		}
		_ = enc.Encode(r)
	}
	return 0
}

// HeldSock is a connected UDP socket in a process of its own in a cgroup and namespace (see
// SockHeld), kept across changes: Next makes a request on it.
type HeldSock struct {
	stdin io.WriteCloser
	dec   *json.Decoder
	First SockResult // the request made at once
}

// SockHeld connects a UDP socket to addr from a process in cgroup and the namespace at nsPath,
// makes one request (First), and keeps it open until the test ends.
func SockHeld(t testing.TB, cgroup, nsPath, addr string) *HeldSock {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), sockClientEnv+"="+strings.Join([]string{cgroup, nsPath, "udp-held", addr, "1"}, "|"))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	h := &HeldSock{stdin: stdin, dec: json.NewDecoder(stdout)}
	if err := h.dec.Decode(&h.First); err != nil {
		t.Fatalf("held socket client: %v", err)
	}
	return h
}

// Next makes another request on the held socket.
func (h *HeldSock) Next(t testing.TB) SockResult {
	t.Helper()
	var r SockResult
	if _, err := io.WriteString(h.stdin, "\n"); err != nil {
		t.Fatalf("held socket client: %v", err)
	}
	if err := h.dec.Decode(&r); err != nil {
		t.Fatalf("held socket client: %v", err)
	}
	return r
}

// dialV4Mapped connects an AF_INET6 TCP socket with IPV6_V6ONLY off to addr, an IPv4-mapped
// address ([::ffff:a.b.c.d]:port).
func dialV4Mapped(addr string) (net.Conn, error) { return dialMapped(unix.SOCK_STREAM, addr) }

// dialMapped connects an IPv6 socket of type typ (stream or datagram) to an IPv4-mapped addr.
func dialMapped(typ int, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4In6() {
		return nil, fmt.Errorf("dial %s: want an IPv4-mapped address", addr)
	}
	fd, err := unix.Socket(unix.AF_INET6, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "v4mapped")
	defer f.Close()
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		return nil, err
	}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 2})
	if err := unix.Connect(fd, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}); err != nil {
		return nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	return net.FileConn(f)
}
