package lab

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/sluicelb/sluice/internal/testutil"
)

// Timeout bounds each of HTTPGet and UDPRequest.
const Timeout = 2 * time.Second

// Backend answers HTTP on its TCP ports and single datagrams on its UDP ports with the line
// "backend=<name> client=<ip:port>\n", so a caller sees which backend served it and which source
// address reached it (e.g. whether a load balancer kept the client's).
type Backend struct {
	Name    string
	servers []*http.Server
	udp     []net.PacketConn
	wg      sync.WaitGroup
}

func reply(backend, client string) string {
	return fmt.Sprintf("backend=%s client=%s\n", backend, client)
}

// StartBackend listens on the ports on all IPv4 and IPv6 addresses inside ns (a socket per
// family). The sockets belong to ns; serving continues in the background until Close.
func StartBackend(ns *testutil.Netns, name string, tcpPorts, udpPorts []uint16) (*Backend, error) {
	b := &Backend{Name: name}
	var lns []net.Listener
	err := ns.Do(func() error {
		for _, p := range tcpPorts {
			for _, a := range []string{"tcp4 0.0.0.0", "tcp6 [::]"} {
				network, host, _ := strings.Cut(a, " ")
				ln, err := net.Listen(network, fmt.Sprintf("%s:%d", host, p))
				if err != nil {
					return err
				}
				lns = append(lns, ln)
			}
		}
		for _, p := range udpPorts {
			for _, a := range []string{"udp4 0.0.0.0", "udp6 [::]"} {
				network, host, _ := strings.Cut(a, " ")
				pc, err := net.ListenPacket(network, fmt.Sprintf("%s:%d", host, p))
				if err != nil {
					return err
				}
				b.udp = append(b.udp, pc)
			}
		}
		return nil
	})
	if err != nil {
		for _, ln := range lns {
			ln.Close()
		}
		b.Close()
		return nil, fmt.Errorf("start backend %s in %s: %w", name, ns.Name, err)
	}

	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, reply(name, r.RemoteAddr))
	})
	for _, ln := range lns {
		// Keep-alive on, as real servers: wrk's keep-alive load reuses connections (the lab's
		// own clients open one per request).
		srv := &http.Server{Handler: h, ReadHeaderTimeout: Timeout, IdleTimeout: 30 * time.Second}
		b.servers = append(b.servers, srv)
		b.wg.Go(func() { _ = srv.Serve(ln) })
	}
	for _, pc := range b.udp {
		b.wg.Go(func() { serveUDP(pc, name) })
	}
	return b, nil
}

// serveUDP answers each datagram with the reply line, padded with spaces to the datagram's
// length when that is longer: a large request gets a large (fragmented) answer.
func serveUDP(pc net.PacketConn, name string) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err == nil {
			out := []byte(reply(name, from.String()))
			if n > len(out) {
				out = append(out, bytes.Repeat([]byte{' '}, n-len(out))...)
			}
			_, _ = pc.WriteTo(out, from)
		}
	}
}

// Close stops serving and waits for the serving goroutines. Until then the backend's sockets
// keep its namespace alive. Closing twice is fine.
func (b *Backend) Close() {
	for _, srv := range b.servers {
		_ = srv.Close()
	}
	for _, pc := range b.udp {
		_ = pc.Close()
	}
	b.wg.Wait()
}

// dial opens a new connection from inside ns ("tcp" or "udp": of addr's family).
func dial(ns *testutil.Netns, network string, addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	if addr.Addr().Is4() {
		network += "4"
	} else {
		network += "6"
	}
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = net.DialTimeout(network, addr.String(), timeout)
		return err
	})
	return c, err
}

// HTTPGet sends GET / from inside ns over a new connection, closed afterwards, and returns the
// body of a 200 response.
func HTTPGet(ns *testutil.Netns, addr netip.AddrPort) (string, error) {
	body, err := httpGet(ns, addr)
	if err != nil {
		return "", fmt.Errorf("get http://%s/ from %s: %w", addr, ns.Name, err)
	}
	return body, nil
}

func httpGet(ns *testutil.Netns, addr netip.AddrPort) (string, error) {
	status, body, err := HTTPGetPath(ns, addr, "/")
	if err == nil && status != http.StatusOK {
		err = fmt.Errorf("status %d", status)
	}
	return body, err
}

// HTTPGetPath GETs path from inside ns on a new connection and returns status and body.
func HTTPGetPath(ns *testutil.Netns, addr netip.AddrPort, path string) (int, string, error) {
	c, err := dial(ns, "tcp", addr, Timeout)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(Timeout))
	req, err := http.NewRequest(http.MethodGet, "http://"+addr.String()+path, nil)
	if err != nil {
		return 0, "", err
	}
	req.Close = true // Connection: close, so every call is a fresh flow through the datapath.
	if err := req.Write(c); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// UDPRequest sends payload from a new connected UDP socket inside ns and returns the first
// datagram that comes back.
func UDPRequest(ns *testutil.Netns, addr netip.AddrPort, payload string) (string, error) {
	c, err := dial(ns, "udp", addr, Timeout)
	if err != nil {
		return "", fmt.Errorf("send udp to %s from %s: %w", addr, ns.Name, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(Timeout))
	if _, err := c.Write([]byte(payload)); err != nil {
		return "", fmt.Errorf("send udp to %s from %s: %w", addr, ns.Name, err)
	}
	buf := make([]byte, 64<<10)
	n, err := c.Read(buf)
	if err != nil {
		return "", fmt.Errorf("read udp reply from %s in %s: %w", addr, ns.Name, err)
	}
	return string(buf[:n]), nil
}

// TCPConnect opens and closes a TCP connection from inside ns. The dial error is returned
// unwrapped, so callers can test it for syscall.ECONNREFUSED and the like.
func TCPConnect(ns *testutil.Netns, addr netip.AddrPort, timeout time.Duration) error {
	c, err := dial(ns, "tcp", addr, timeout)
	if err != nil {
		return err
	}
	return c.Close()
}

// DialTCP opens a TCP connection from inside ns, giving up after timeout.
func DialTCP(ns *testutil.Netns, addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	return dial(ns, "tcp", addr, timeout)
}

// RequestOn sends one HTTP request on an open connection and returns who answered.
func RequestOn(c net.Conn, addr netip.AddrPort) (string, error) {
	body, err := RequestBody(c, addr)
	if err != nil {
		return "", err
	}
	who, _, err := ParseReply(body)
	return who, err
}

// RequestBody sends one HTTP request on an open connection and returns the reply's body.
func RequestBody(c net.Conn, addr netip.AddrPort) (string, error) {
	_ = c.SetDeadline(time.Now().Add(Timeout))
	req, err := http.NewRequest(http.MethodGet, "http://"+addr.String()+"/", nil)
	if err != nil {
		return "", err
	}
	if err := req.Write(c); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

// OpenTCP connects from inside ns and leaves the connection open, for a flow that lasts.
func OpenTCP(ns *testutil.Netns, addr netip.AddrPort) (net.Conn, error) {
	return dial(ns, "tcp", addr, Timeout)
}

// ParseReply splits a backend's reply line.
func ParseReply(s string) (backend string, client netip.AddrPort, err error) {
	f := strings.Fields(s)
	if len(f) == 2 {
		b, ok1 := strings.CutPrefix(f[0], "backend=")
		c, ok2 := strings.CutPrefix(f[1], "client=")
		if ok1 && ok2 && b != "" {
			if client, err = netip.ParseAddrPort(c); err == nil {
				return b, client, nil
			}
		}
	}
	if err == nil {
		err = errors.New("want \"backend=NAME client=IP:PORT\"")
	}
	return "", netip.AddrPort{}, fmt.Errorf("parse reply %q: %w", s, err)
}
