// Package sockterm ends the sockets that socket-level load balancing pointed at an endpoint
// that stopped serving, as kube-proxy flushes the conntrack entries of such an endpoint's UDP
// flows: a connected UDP socket is translated once, at connect(), and would otherwise go on
// sending to the old address. It finds them by cookie in the socket programs' reverse map
// (sluice_sock_revnat) and destroys them with sock_diag's SOCK_DESTROY (Linux 4.5 with
// CONFIG_INET_DIAG_DESTROY, which Debian's and most distributions' kernels have; 5.10 included)
// in every network namespace of the node, which it finds through procfs (the namespaces of
// processes: a pod's pause process holds its). The socket is disconnected with a pending
// ECONNABORTED (a recv() reports it; a send() without an address fails): connecting again goes
// through the service and reaches a serving endpoint, as Cilium's socket LB makes applications
// do. Unconnected sockets need none of this: the socket programs pick a backend for every
// sendmsg(). IPv6 sockets are found the same way in the IPv6 socket programs' reverse map
// (sluice_sock_revnat6), those pointed at IPv6 endpoints and those at IPv4 ones through
// IPv4-mapped addresses.
package sockterm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
)

// Terminator destroys the UDP sockets translated to endpoints that stopped serving.
type Terminator struct {
	// Revnat is the socket programs' reverse map (datapath.SocketLB's).
	Revnat *ebpf.Map
	// Revnat6 is the IPv6 socket programs' (SocketLB.Revnat6), nil without them.
	Revnat6 *ebpf.Map
	// ProcFS is where the node's procfs is mounted: every process's network namespace is
	// found at <ProcFS>/<pid>/ns/net (the DaemonSet mounts the node's at /host/proc).
	ProcFS string
	Log    *zap.Logger
}

// Terminate destroys every UDP socket the socket programs pointed at one of gone's endpoints
// for that service, and forgets it; it returns how many it destroyed. A namespace it cannot
// enter (a process gone meanwhile) is skipped; the sockets it found and could not destroy are
// in the error.
func (t *Terminator) Terminate(gone map[maps.FlowTarget]bool) (int, error) {
	f, err := t.translated(gone)
	if err != nil || len(f.cookies) == 0 {
		return 0, err
	}
	destroyed := 0
	var errs []error
	for _, ns := range t.namespaces() {
		n, err := destroyIn(ns, f.cookies)
		destroyed += n
		if err != nil {
			errs = append(errs, fmt.Errorf("destroy sockets in %s: %w", ns, err))
		}
	}
	// The entries go with their sockets (a socket that was not found is closed already).
	for _, k := range f.keys4 {
		if err := t.Revnat.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete socket reverse entry: %w", err))
		}
	}
	for _, k := range f.keys6 {
		if err := t.Revnat6.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete IPv6 socket reverse entry: %w", err))
		}
	}
	return destroyed, errors.Join(errs...)
}

// found is what translated finds: the sockets to end by cookie, each with the peer it has
// (an IPv4, IPv6 or IPv4-mapped address), and their reverse entries in each family's map.
type found struct {
	cookies map[uint64]netip.AddrPort
	keys4   []datapath.SluiceSockSockRevnatKey
	keys6   []datapath.SluiceSock6SockRevnatKey
}

// translated finds the UDP sockets translated to gone's endpoints.
func (t *Terminator) translated(gone map[maps.FlowTarget]bool) (found, error) {
	f := found{cookies: map[uint64]netip.AddrPort{}}
	var k datapath.SluiceSockSockRevnatKey
	var v datapath.SluiceSockSockRevnat
	it := t.Revnat.Iterate()
	for it.Next(&k, &v) {
		if lb.Proto(k.Proto) != lb.UDP {
			continue
		}
		be := netip.AddrPortFrom(maps.AddrFrom4(k.Addr), maps.PortFrom16(k.Port))
		if gone[maps.FlowTarget{ServiceID: v.SvcId, Backend: be}] {
			f.cookies[k.Cookie] = be
			f.keys4 = append(f.keys4, k)
		}
	}
	if err := it.Err(); err != nil {
		return found{}, fmt.Errorf("dump socket reverse entries: %w", err)
	}
	if t.Revnat6 == nil {
		return f, nil
	}
	var k6 datapath.SluiceSock6SockRevnatKey
	var v6 datapath.SluiceSock6SockRevnat
	it = t.Revnat6.Iterate()
	for it.Next(&k6, &v6) {
		if lb.Proto(k6.Proto) != lb.UDP {
			continue
		}
		// The socket's peer as it is, IPv4-mapped or not; the endpoint as the service has it.
		peer := netip.AddrPortFrom(netip.AddrFrom16(k6.Addr.B), maps.PortFrom16(k6.Port))
		be := netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
		if gone[maps.FlowTarget{ServiceID: v6.SvcId, Backend: be}] {
			f.cookies[k6.Cookie] = peer
			f.keys6 = append(f.keys6, k6)
		}
	}
	if err := it.Err(); err != nil {
		return found{}, fmt.Errorf("dump IPv6 socket reverse entries: %w", err)
	}
	return f, nil
}

// namespaces are the paths of the node's network namespaces, each once: the agent's own and
// every process's.
func (t *Terminator) namespaces() []string {
	seen := map[uint64]bool{}
	var out []string
	add := func(p string) {
		var st unix.Stat_t
		if unix.Stat(p, &st) != nil || seen[st.Ino] {
			return
		}
		seen[st.Ino] = true
		out = append(out, p)
	}
	add("/proc/thread-self/ns/net")
	ents, err := os.ReadDir(t.ProcFS)
	if err != nil {
		t.Log.Warn("Could not list the node's processes: only the agent's network namespace is searched", zap.Error(err))
		return out
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			add(filepath.Join(t.ProcFS, e.Name(), "ns", "net"))
		}
	}
	return out
}

// destroyIn destroys, in the network namespace at path, the UDP sockets whose cookie is in
// cookies and whose peer is the endpoint it names.
func destroyIn(path string, cookies map[uint64]netip.AddrPort) (int, error) {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return 0, nil // the process is gone
	}
	defer target.Close()
	self, err := netns.Get()
	if err != nil {
		return 0, fmt.Errorf("open own network namespace: %w", err)
	}
	defer self.Close()
	s, err := nl.GetNetlinkSocketAt(target, self, unix.NETLINK_INET_DIAG)
	if err != nil {
		return 0, fmt.Errorf("open sock_diag: %w", err)
	}
	defer s.Close()
	sh := map[int]*nl.SocketHandle{unix.NETLINK_INET_DIAG: {Socket: s}}

	n := 0
	var errs []error
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		k, err := destroyFamily(sh, family, cookies)
		n += k
		if err != nil {
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// destroyFamily is destroyIn for the family's UDP sockets.
func destroyFamily(sh map[int]*nl.SocketHandle, family uint8, cookies map[uint64]netip.AddrPort) (int, error) {
	dump := nl.NewNetlinkRequest(nl.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
	dump.Sockets = sh
	dump.AddData(&diagReq{family: family, protocol: unix.IPPROTO_UDP, states: 0xffffffff})
	var found [][]byte // the sockid of each socket to destroy
	err := dump.ExecuteIter(unix.NETLINK_INET_DIAG, nl.SOCK_DIAG_BY_FAMILY, func(msg []byte) bool {
		if len(msg) < diagMsgLen {
			return true
		}
		id := msg[4 : 4+sockIDLen]
		cookie := uint64(binary.NativeEndian.Uint32(id[40:44])) | uint64(binary.NativeEndian.Uint32(id[44:48]))<<32
		be, ok := cookies[cookie]
		// idiag_dst: 16 bytes, of which an IPv4 socket's address is the first 4.
		dst := netip.AddrFrom16([16]byte(id[20:36]))
		if family == unix.AF_INET {
			dst = netip.AddrFrom4([4]byte(id[20:24]))
		}
		if ok && netip.AddrPortFrom(dst, binary.BigEndian.Uint16(id[2:4])) == be {
			found = append(found, append([]byte(nil), id...))
		}
		return true
	})
	if err != nil {
		return 0, fmt.Errorf("dump UDP sockets (family %d): %w", family, err)
	}
	n := 0
	var errs []error
	for _, id := range found {
		req := nl.NewNetlinkRequest(nl.SOCK_DESTROY, unix.NLM_F_ACK)
		req.Sockets = sh
		req.AddData(&diagReq{family: family, protocol: unix.IPPROTO_UDP, states: 0xffffffff, id: id})
		if _, err := req.Execute(unix.NETLINK_INET_DIAG, 0); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // closed meanwhile
			}
			errs = append(errs, fmt.Errorf("destroy a UDP socket: %w", err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// The sizes of struct inet_diag_sockid and struct inet_diag_msg (linux/inet_diag.h).
const (
	sockIDLen  = 48
	diagMsgLen = 4 + sockIDLen + 20
)

// diagReq is struct inet_diag_req_v2: family, protocol, ext, pad, states, then the sockid
// (zero for a dump; a dumped socket's for SOCK_DESTROY, cookie included, so that only that
// very socket goes).
type diagReq struct {
	family, protocol uint8
	states           uint32
	id               []byte
}

func (r *diagReq) Len() int { return 8 + sockIDLen }

func (r *diagReq) Serialize() []byte {
	b := make([]byte, r.Len())
	b[0], b[1] = r.family, r.protocol
	binary.NativeEndian.PutUint32(b[4:8], r.states)
	copy(b[8:], r.id)
	return b
}
