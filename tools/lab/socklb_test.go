package lab_test

import (
	"strings"
	"testing"

	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/lab"
)

// TestE2ENodeToItsOwnNodePort: a process on node1 connecting to node1's own NodePort (its
// packets never cross eth0, where the packet path is) reaches both the local and the remote
// pod, over TCP and UDP (connected and not), and is shown the NodePort as its peer: the socket
// programs, attached to the node's cgroup. Without them the kernel refuses it (nothing
// listens there).
func TestE2ENodeToItsOwnNodePort(t *testing.T) {
	cg := testutil.Cgroup2(t)
	c := startCluster(t, "", "--socket-lb-cgroup", cg)
	for _, k := range []struct {
		kind string
		port uint16
	}{{"tcp", 30080}, {"udp-connected", 30053}, {"udp-unconnected", 30053}} {
		fe := c.nodePort(k.port)
		seen := map[string]int{}
		for _, r := range testutil.SockRequests(t, cg, c.Node1.Path(), k.kind, fe.String(), 24) {
			body := r.Reply
			if k.kind == "tcp" {
				_, body, _ = strings.Cut(r.Reply, "\r\n\r\n")
			}
			who, client, err := lab.ParseReply(body)
			if r.Err != "" || err != nil || r.Peer != fe.String() {
				t.Fatalf("%s from node1 to %s: reply %q, peer %q, error %q %v", k.kind, fe, r.Reply, r.Peer, r.Err, err)
			}
			// The backend sees the node itself: no translation on the way.
			if client.Addr() != c.Node1IP && !(who == "pod1" && client.Addr().String() == "10.244.1.1") {
				t.Errorf("%s: %s saw the client as %v", k.kind, who, client)
			}
			seen[who]++
		}
		if seen["pod1"] == 0 || seen["pod2"] == 0 {
			t.Errorf("%s from node1 to its own NodePort reached %v; want both the local and the remote pod", k.kind, seen)
		}
	}
}
