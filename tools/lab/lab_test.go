package lab

import (
	"errors"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/vishvananda/netlink"
)

func startBackend(t *testing.T, ns *testutil.Netns, name string, tcp, udp []uint16) *Backend {
	t.Helper()
	b, err := StartBackend(ns, name, tcp, udp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// expectReply checks that a reply comes from backend and shows client's address.
func expectReply(t *testing.T, body string, err error, backend string, client netip.Addr) {
	t.Helper()
	if err != nil {
		t.Error(err)
		return
	}
	b, c, err := ParseReply(body)
	if err != nil || b != backend || c.Addr() != client {
		t.Errorf("reply %q (%v): want backend=%s client=%s:*", body, err, backend, client)
	}
}

// leftovers lists what of lab id remains: namespaces per `ip netns list`, root-namespace links.
func leftovers(t *testing.T, id string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("list netns: %v: %s", err, out)
	}
	var left []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "sl-"+id+"-") {
			left = append(left, line)
		}
	}
	links, err := linkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, tmpPrefix(id)) {
			left = append(left, "link "+l.Attrs().Name)
		}
	}
	return left
}

// TestLab checks each variant: routing, addresses, and the veth settings the variant promises.
func TestLab(t *testing.T) {
	for _, v := range []Variant{Plain, NICLike} {
		t.Run(string(v), func(t *testing.T) { testLab(t, v) })
	}
}

func testLab(t *testing.T, v Variant) {
	testutil.RequirePrivileges(t)
	t.Parallel()
	l, err := UpVariant(v)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Down() })

	backends := []*Backend{
		startBackend(t, l.Node1, "node1", []uint16{80}, nil),
		startBackend(t, l.Node2, "node2", []uint16{80}, nil),
		startBackend(t, l.Pod1, "pod1", []uint16{80}, []uint16{5353}),
		startBackend(t, l.Pod2, "pod2", []uint16{80, 8080}, []uint16{5353}),
	}

	ap := netip.AddrPortFrom
	for _, c := range []struct {
		from    *testutil.Netns
		to      netip.AddrPort
		backend string
		client  netip.Addr
	}{
		{l.Client, ap(l.Node1IP, 80), "node1", l.ClientIP},
		{l.Client, ap(l.Node2IP, 80), "node2", l.ClientIP},
		{l.Node1, ap(l.Pod2IP, 80), "pod2", l.Node1IP},
		{l.Pod1, ap(l.Pod2IP, 8080), "pod2", l.Pod1IP},
		{l.Pod2, ap(l.Pod1IP, 80), "pod1", l.Pod2IP},
	} {
		body, err := HTTPGet(c.from, c.to)
		expectReply(t, body, err, c.backend, c.client)
	}
	body, err := UDPRequest(l.Pod1, ap(l.Pod2IP, 5353), "hi")
	expectReply(t, body, err, "pod2", l.Pod1IP)
	body, err = UDPRequest(l.Node2, ap(l.Pod1IP, 5353), "hi")
	expectReply(t, body, err, "pod1", l.Node2IP)

	if err := TCPConnect(l.Client, ap(l.Node1IP, 81), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connect to a closed port: got %v, want ECONNREFUSED", err)
	}
	if err := TCPConnect(l.Client, ap(l.Pod2IP, 80), time.Second); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("connect from client to a pod: got %v, want ENETUNREACH", err)
	}

	for _, e := range []struct {
		ns  *testutil.Netns
		dev string
	}{
		{l.Client, "eth0"}, {l.Node1, "eth0"}, {l.Node2, "eth0"}, {l.Pod1, "eth0"}, {l.Pod2, "eth0"},
		{l.Node1, "vpod1"}, {l.Node2, "vpod2"}, {l.Bridge, "client"}, {l.Bridge, "node1"}, {l.Bridge, "node2"},
	} {
		out := e.ns.MustExec(t, "ethtool", "-k", e.dev)
		tuned := strings.Contains(out, "tx-checksumming: off") && strings.Contains(out, "generic-receive-offload: on")
		if plainTx := strings.Contains(out, "tx-checksumming: on"); v == Plain && !plainTx || v == NICLike && !tuned {
			t.Errorf("%s in %s (%s lab): want tx-checksumming on (plain) or off with GRO on (nic-like):\n%s", e.dev, e.ns.Name, v, out)
		}
	}
	for _, port := range []string{"node1", "node2"} {
		out := l.Bridge.MustExec(t, "ip", "link", "show", port)
		if hasXDP := strings.Contains(out, "xdp"); hasXDP != (v == NICLike) {
			t.Errorf("bridge port %s (%s lab): XDP program attached = %v, want %v:\n%s", port, v, hasXDP, v == NICLike, out)
		}
	}
	for _, n := range []*testutil.Netns{l.Node1, l.Node2} {
		for _, k := range []string{"ip_forward", "conf/eth0/rp_filter", "conf/all/rp_filter", "conf/all/accept_local"} {
			want := "1"
			if strings.HasSuffix(k, "rp_filter") || strings.HasSuffix(k, "accept_local") {
				want = "0"
			}
			if got := strings.TrimSpace(n.MustExec(t, "cat", "/proc/sys/net/ipv4/"+k)); got != want {
				t.Errorf("%s in %s = %s, want %s", k, n.Name, got, want)
			}
		}
	}
	for _, n := range []*testutil.Netns{l.Node1, l.Node2} {
		if out := n.MustExec(t, "ip", "route", "show", "default"); !strings.Contains(out, "via "+Gateway.String()+" dev eth0") {
			t.Errorf("%s: default route %q, want via %s dev eth0 (as a kind node has)", n.Name, out, Gateway)
		}
	}
	if got := strings.TrimSpace(l.Client.MustExec(t, "cat", "/proc/sys/net/ipv4/conf/eth0/accept_redirects")); got != "0" {
		t.Errorf("client eth0 accept_redirects = %s, want 0", got)
	}
	if len(l.ClientMAC) != 6 || slices.Equal(l.Node1MAC, l.Node2MAC) {
		t.Errorf("MACs: client %s node1 %s node2 %s", l.ClientMAC, l.Node1MAC, l.Node2MAC)
	}

	// Open sockets would keep the namespaces alive after Down.
	for _, b := range backends {
		b.Close()
	}
	if err := l.Down(); err != nil {
		t.Fatal(err)
	}
	if err := l.Down(); err != nil {
		t.Fatalf("second Down: %v", err)
	}
	if left := leftovers(t, l.ID); len(left) > 0 {
		t.Errorf("left after Down: %v", left)
	}
	if ids, err := List(); err != nil || slices.Contains(ids, l.ID) {
		t.Errorf("List after Down = %v, %v; still has %s", ids, err, l.ID)
	}
}

// TestTwoLabs brings two labs up at once: same addresses, same interface names, no collision.
func TestTwoLabs(t *testing.T) {
	testutil.RequirePrivileges(t)
	t.Parallel()
	var (
		labs [2]*Lab
		errs [2]error
		wg   sync.WaitGroup
	)
	for i := range labs {
		wg.Go(func() { labs[i], errs[i] = Up() })
	}
	wg.Wait()
	for _, l := range labs {
		if l != nil {
			t.Cleanup(func() { _ = l.Down() })
		}
	}
	if err := errors.Join(errs[:]...); err != nil {
		t.Fatal(err)
	}
	if labs[0].ID == labs[1].ID {
		t.Fatalf("both labs have ID %s", labs[0].ID)
	}
	for _, l := range labs {
		startBackend(t, l.Pod2, "pod2-"+l.ID, []uint16{80}, nil)
	}
	for _, l := range labs {
		body, err := HTTPGet(l.Node1, netip.AddrPortFrom(l.Pod2IP, 80))
		expectReply(t, body, err, "pod2-"+l.ID, l.Node1IP)
	}
	ids, err := List()
	if err != nil || !slices.Contains(ids, labs[0].ID) || !slices.Contains(ids, labs[1].ID) {
		t.Errorf("List = %v, %v; want both %s and %s", ids, err, labs[0].ID, labs[1].ID)
	}
}

// TestUpFails makes Up fail halfway and checks that it leaves nothing behind.
func TestUpFails(t *testing.T) {
	testutil.RequirePrivileges(t)
	t.Parallel()
	id := testutil.UniqueName("")
	// Take the temporary name of the third veth pair, after namespaces and two pairs exist.
	squatter := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tmpPrefix(id) + "2a"}, PeerName: tmpPrefix(id) + "x"}
	if err := netlink.LinkAdd(squatter); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Remove(id) })
	l, err := up(id, NICLike, false)
	if err == nil || !strings.HasPrefix(err.Error(), "create lab: ") {
		t.Errorf("up with a squatted link name = %v, %v; want a create lab error", l, err)
	}
	if left := leftovers(t, id); len(left) > 0 {
		t.Errorf("left after a failed Up: %v", left)
	}
}

func TestParseReply(t *testing.T) {
	b, c, err := ParseReply(reply("pod1", "10.89.0.11:40000"))
	if err != nil || b != "pod1" || c != netip.MustParseAddrPort("10.89.0.11:40000") {
		t.Errorf("ParseReply = %q, %v, %v", b, c, err)
	}
	for _, s := range []string{"", "backend=pod1", "backend= client=1.2.3.4:5", "backend=a client=1.2.3.4", "x=a client=1.2.3.4:5"} {
		if _, _, err := ParseReply(s); err == nil {
			t.Errorf("ParseReply(%q) succeeded", s)
		}
	}
}
