package lab_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/tools/lab"
)

// A 4 KB datagram leaves the client in three fragments and its 4 KB answer leaves the backend
// in three: each way the later fragments follow the first one's flow (frag.h), to and from
// both backend kinds, each seeing the address it sees for whole datagrams (the local backend
// the client's, the remote one node1's).
func TestE2EFragmentedDatagramsBothWays(t *testing.T) {
	forEachMode(t, checkFragmentedDatagrams)
}

// checkFragmentedDatagrams sends 4 KB datagrams to the echo service (both backends) and checks
// the 4 KB answers.
func checkFragmentedDatagrams(t *testing.T, c *cluster) {
	t.Helper()
	const size = 4000
	seen := map[string]int{}
	for i := range 20 {
		answer, err := lab.UDPRequest(c.Client, c.nodePort(30053), strings.Repeat("x", size))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if len(answer) != size {
			t.Fatalf("request %d: a %d-byte answer, want %d", i, len(answer), size)
		}
		backend, client, err := lab.ParseReply(answer)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string]netip.Addr{"pod1": c.ClientIP, "pod2": c.Node1IP}[backend]; client.Addr() != want {
			t.Errorf("%s saw the client as %s, want %v", backend, client, want)
		}
		seen[backend]++
	}
	if seen["pod1"] == 0 || seen["pod2"] == 0 {
		t.Errorf("4 KB datagrams reached %v, want both the local and the remote backend", seen)
	}
	t.Logf("answers from %v", seen)
}
