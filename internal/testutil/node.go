package testutil

import (
	"net"
	"net/netip"
	"testing"
)

// Node is a namespace standing in for a node: eth0 with Addr/24 and permanent neighbour
// entries, so bpf_fib_lookup resolves next hops for programs run with BPF_PROG_TEST_RUN.
type Node struct {
	*Netns
	Addr    netip.Addr
	Ifindex int
	MAC     net.HardwareAddr
}

// NewNode makes a Node whose eth0 has addr and knows the given neighbours (address -> MAC).
func NewNode(t testing.TB, prefix string, addr netip.Addr, neighbours map[netip.Addr]net.HardwareAddr) *Node {
	t.Helper()
	RequirePrivileges(t)
	ns := NewTestNetns(t, prefix)
	cmds := [][]string{
		{"ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"},
		{"ip", "addr", "add", netip.PrefixFrom(addr, 24).String(), "dev", "eth0"},
		{"ip", "link", "set", "eth0", "up"},
		{"ip", "link", "set", "peer0", "up"},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
	}
	for a, mac := range neighbours {
		cmds = append(cmds, []string{"ip", "neigh", "replace", a.String(), "lladdr", mac.String(), "dev", "eth0", "nud", "permanent"})
	}
	for _, c := range cmds {
		ns.MustExec(t, c...)
	}
	n := &Node{Netns: ns, Addr: addr}
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		n.Ifindex, n.MAC = ifc.Index, ifc.HardwareAddr
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
