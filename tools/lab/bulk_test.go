package lab_test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/cli"
	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/lab"
)

const bulkManifest = `apiVersion: v1
kind: Service
metadata: {name: bulk, namespace: default}
spec:
  type: NodePort
  ports:
    - {name: iperf, protocol: TCP, port: 5201, nodePort: 30201}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: bulk-1
  namespace: default
  labels: {kubernetes.io/service-name: bulk}
addressType: IPv4
ports:
  - {name: iperf, protocol: TCP, port: 5201}
endpoints:
  - addresses: ["10.244.2.10"]
    conditions: {ready: true}
    nodeName: node2
`

// Bulk TCP both ways through a remote backend, in every mode. GRO merges the stream's segments
// before generic XDP and tc see them: a merged packet is longer than the MTU and must leave as
// segments, not be dropped as "fragmentation needed" (with --xdp-mode generic, a 2 MB upload
// to a pod behind another node used to fail).
func TestE2EBulkTCPThroughRemoteBackend(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *cluster) {
		startIperf(t, c.Pod2)
		writeAtomic(t, filepath.Join(c.manifests, "bulk.yaml"), bulkManifest)
		c.waitFor(t, "the bulk service", func() error { return lab.TCPConnect(c.Client, c.nodePort(30201), time.Second) })
		for _, dir := range []string{"upload", "download"} {
			gbps, err := iperf(c, dir == "download")
			if err != nil {
				t.Errorf("%s: %v", dir, err)
				continue
			}
			// A stream that stalls on dropped merged packets gets next to nothing through.
			if gbps < 0.05 {
				t.Errorf("%s: %.3f Gbit/s", dir, gbps)
			}
			t.Logf("%s: %.2f Gbit/s", dir, gbps)
		}
		var st cli.StatsJSON
		c.sluicectlJSON(t, &st, "stats")
		if n := st.Reasons["drop_frag_needed"]; n != 0 {
			t.Errorf("drop_frag_needed = %d: merged packets were dropped", n)
		}
		t.Logf("datapath: %v", nonZero(st.Reasons))
	})
}

// startIperf runs an iperf3 server on port 5201 in ns until the test ends.
func startIperf(t *testing.T, ns *testutil.Netns) {
	t.Helper()
	srv := exec.Command("ip", "netns", "exec", ns.Name, "iperf3", "-s", "-p", "5201")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
}

// iperf runs a 2-second iperf3 stream from the client through the NodePort (reverse: the
// backend sends) and returns the received rate.
func iperf(c *cluster, reverse bool) (float64, error) { return iperfFor(c, reverse, 2) }

// iperfFor is iperf for a stream of the given seconds.
func iperfFor(c *cluster, reverse bool, seconds int) (float64, error) {
	args := []string{"iperf3", "-c", c.Node1IP.String(), "-p", "30201", "-t", fmt.Sprint(seconds), "-J", "--connect-timeout", "3000"}
	if reverse {
		args = append(args, "-R")
	}
	out, err := c.Client.Exec(args...)
	var rep struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil || rep.Error != "" {
		return 0, fmt.Errorf("iperf3 to the NodePort: %v %s: %q", err, rep.Error, tail(out, 5))
	}
	return rep.End.SumReceived.BitsPerSecond / 1e9, nil
}
