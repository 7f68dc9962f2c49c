package lab_test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/cli"
	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/lab"
)

// churnManifest is a service with an HTTP port (30060) and a stream port (30070) whose
// endpoints are pod1, and pod2 when withPod2.
func churnManifest(withPod2 bool) string {
	eps := `  - addresses: ["10.244.1.10"]
    conditions: {ready: true}
    nodeName: node1
`
	if withPod2 {
		eps += `  - addresses: ["10.244.2.10"]
    conditions: {ready: true}
    nodeName: node2
`
	}
	return `apiVersion: v1
kind: Service
metadata: {name: churn, namespace: default}
spec:
  type: NodePort
  ports:
    - {name: http, protocol: TCP, port: 80, nodePort: 30060}
    - {name: stream, protocol: TCP, port: 7070, nodePort: 30070}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: churn-1
  namespace: default
  labels: {kubernetes.io/service-name: churn}
addressType: IPv4
ports:
  - {name: http, protocol: TCP, port: 80}
  - {name: stream, protocol: TCP, port: 7070}
endpoints:
` + eps
}

// loadCluster is a lab with the churn service, stream servers in both pods, open streams
// and HTTP load running.
type loadCluster struct {
	*cluster
	streams []*lab.Stream
	load    *lab.Load
	wrk     []*lab.Wrk
	wrkMode []string
}

func startLoadCluster(t *testing.T, mode string) *loadCluster {
	t.Helper()
	return startLoadClusterWith(t, agentBinary(t), mode)
}

func startLoadClusterWith(t *testing.T, agent, mode string, extra ...string) *loadCluster {
	t.Helper()
	return startLoad(t, startClusterWith(t, agent, mode, extra...))
}

// startLoad puts the churn service and its load on a started cluster.
func startLoad(t *testing.T, cl *cluster) *loadCluster {
	t.Helper()
	c := &loadCluster{cluster: cl}
	c.waitReady(t)
	writeAtomic(t, filepath.Join(c.manifests, "churn.yaml"), churnManifest(true))
	for name, ns := range map[string]*testutil.Netns{"pod1": c.Pod1, "pod2": c.Pod2} {
		stop, err := lab.StartStreamServer(ns, name, 7070)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	c.waitFor(t, "the churn service", func() error {
		_, err := lab.HTTPGet(c.Client, c.nodePort(30060))
		return err
	})
	for len(c.streams) < 12 {
		s, err := lab.OpenStream(c.Client, c.nodePort(30070))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		c.streams = append(c.streams, s)
	}
	// About 600 new connections a second: within what one backend's SNAT ports sustain
	// (28976 ports, each held 70 s after its flow closes, ~410/s), so failures here are churn's.
	c.load = lab.StartLoad(c.Client, c.nodePort(30060), 4, 5*time.Millisecond)
	return c
}

// startWrk adds wrk's load for d: two keep-alive connections, and, with newConns, one opening
// a new connection per request (about 4000 a second here: half of them to the remote backend,
// which a minute of would take more SNAT ports than the range holds).
func (c *loadCluster) startWrk(t *testing.T, d time.Duration, newConns bool) {
	t.Helper()
	url := "http://" + c.nodePort(30060).String() + "/"
	modes := []bool{true}
	if newConns {
		modes = append(modes, false)
	}
	for _, keepAlive := range modes {
		conns, mode := 2, "keep-alive"
		if !keepAlive {
			conns, mode = 1, "new connection per request"
		}
		w, err := lab.StartWrk(c.Client, url, d, conns, keepAlive)
		if err != nil {
			t.Fatal(err)
		}
		c.wrk, c.wrkMode = append(c.wrk, w), append(c.wrkMode, mode)
	}
}

// pingStreams checks every stream still reaches the backend it started with.
func (c *loadCluster) pingStreams(t *testing.T, when string) {
	t.Helper()
	for i, s := range c.streams {
		who, err := s.Ping()
		if err != nil || who != s.Backend {
			t.Errorf("%s: stream %d to %s: %q %v", when, i, s.Backend, who, err)
		}
	}
}

func (c *loadCluster) finish(t *testing.T) {
	t.Helper()
	ok, failed, errs := c.load.Stop()
	if failed != 0 {
		t.Errorf("%d of %d requests failed: %v", failed, ok+failed, errs)
	}
	byBackend := map[string]int{}
	for _, s := range c.streams {
		byBackend[s.Backend]++
	}
	var st cli.StatsJSON
	c.sluicectlJSON(t, &st, "stats")
	t.Logf("%d requests, %d failed; %d streams kept (%v); datapath: %v", ok+failed, failed, len(c.streams), byBackend, nonZero(st.Reasons))
	for i, w := range c.wrk {
		mode := c.wrkMode[i]
		r, err := w.Wait()
		if err != nil {
			t.Error(err)
			continue
		}
		if r.Failed() != 0 || r.Requests == 0 {
			t.Errorf("wrk (%s): %d requests, %d failed:\n%s", mode, r.Requests, r.Failed(), r.Output)
			continue
		}
		t.Logf("wrk (%s): %d requests, 0 failed", mode, r.Requests)
	}
}

// Endpoints come and go every 100 ms under load: no request to a backend that stays fails, and
// streams to the endpoint being removed and re-added keep going (kube-proxy keeps such flows;
// users complain when a proxy cuts them). SLUICE_CHURN_SECONDS sets the length (default 5).
func TestE2EEndpointChurnUnderLoad(t *testing.T) {
	c := startLoadCluster(t, "")
	seconds := 5
	if v, err := strconv.Atoi(os.Getenv("SLUICE_CHURN_SECONDS")); err == nil && v > 0 {
		seconds = v
	}
	c.startWrk(t, time.Duration(seconds)*time.Second, false)
	deadline := time.Now().Add(time.Duration(seconds) * time.Second)
	manifest := filepath.Join(c.manifests, "churn.yaml")
	for i := 0; time.Now().Before(deadline); i++ {
		writeAtomic(t, manifest, churnManifest(i%2 == 1))
		time.Sleep(100 * time.Millisecond)
		if i%5 == 0 {
			c.pingStreams(t, fmt.Sprintf("churn step %d", i))
		}
	}
	c.pingStreams(t, "after churn")
	c.finish(t)
}

// Restarting the agent under load, by SIGTERM and by SIGKILL: no request fails and every
// stream survives.
func TestE2ERestartUnderLoad(t *testing.T) {
	c := startLoadCluster(t, "")
	c.startWrk(t, 5*time.Second, true)
	for _, how := range []string{"SIGTERM", "SIGKILL"} {
		time.Sleep(300 * time.Millisecond)
		if how == "SIGTERM" {
			if err := c.agent.Stop(); err != nil {
				t.Fatal(err)
			}
		} else {
			c.agent.Kill()
		}
		a, err := c.StartAgent(lab.AgentOptions{Binary: agentBinary(t), Manifests: c.manifests})
		if err != nil {
			t.Fatal(err)
		}
		c.agent = a
		c.waitReady(t)
		c.pingStreams(t, "after "+how)
	}
	time.Sleep(300 * time.Millisecond)
	c.finish(t)
}

func nonZero(m map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

// previousRelease is the last commit whose pinned maps have the v0.1 layouts (8-byte frontend
// values, 13 reason counters): the build an upgrade starts from.
const previousRelease = "73681d1"

// previousAgent builds the agent of previousRelease from this repository's history.
func previousAgent(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	tarball := filepath.Join(t.TempDir(), "previous.tar")
	if out, err := exec.Command("git", "-C", root, "archive", "-o", tarball, previousRelease).CombinedOutput(); err != nil {
		t.Fatalf("read commit %s from git history (a shallow clone lacks it: git fetch --unshallow): %v: %s", previousRelease, err, out)
	}
	if out, err := exec.Command("tar", "-xf", tarball, "-C", src).CombinedOutput(); err != nil {
		t.Fatalf("unpack %s: %v: %s", previousRelease, err, out)
	}
	bin := filepath.Join(src, "sluice-agent-previous")
	build := exec.Command("go", "build", "-ldflags", "-X main.version="+previousRelease, "-o", bin, "./cmd/sluice-agent")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the %s agent: %v: %s", previousRelease, err, out)
	}
	return bin
}

// An upgrade under load to a build whose map layout changed: the new agent copies the old
// maps into new ones, swaps its programs in, and pins the new maps; no request fails and every
// stream keeps its backend. The old build knows only native XDP by default, so both run it,
// on NIC-like veths.
func TestE2EUpgradeUnderLoad(t *testing.T) {
	old := previousAgent(t)
	// The old build needs --devices (it finds no device by itself) and serves its health on
	// 127.0.0.1:10249 unless told the address this build's tests read.
	c := startLoadClusterWith(t, old, "native", "--devices", "eth0", "--metrics-addr", "127.0.0.1:9871")
	a := c.upgradeUnderLoad(t)
	if logs := a.Logs(); !strings.Contains(logs, "Migrated pinned map") || !strings.Contains(logs, "sluice_frontends") {
		t.Errorf("the new agent did not report migrating sluice_frontends:\n%s", logs)
	}
	time.Sleep(500 * time.Millisecond)
	c.finish(t)
}

// On a dual-stack node, an upgrade under load from the previous release, which serves IPv4
// only, keeps every IPv4 flow as on an IPv4 node, and the new agent serves IPv6 besides.
func TestE2EUpgradeUnderLoadDualStack(t *testing.T) {
	old := previousAgent(t)
	testutil.RequirePrivileges(t)
	c := startLoad(t, startClusterIn(t, lab.UpDualStackForTest(t, lab.NICLike), old, "native",
		"--devices", "eth0", "--metrics-addr", "127.0.0.1:9871"))
	c.upgradeUnderLoad(t)
	b, err := os.ReadFile(filepath.Join("..", "..", "examples", "dual-stack", "services.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, filepath.Join(c.manifests, "dual-stack.yaml"), string(b))
	c.waitFor(t, "the IPv6 NodePort", func() error {
		_, err := lab.HTTPGet(c.Client, netip.AddrPortFrom(c.Node1IP6, 30180))
		return err
	})
	time.Sleep(500 * time.Millisecond)
	c.finish(t)
}

// upgradeUnderLoad replaces the running (previous release's) agent with this build's, native
// XDP, under wrk's load, and checks that every stream kept its backend. It returns the new agent.
func (c *loadCluster) upgradeUnderLoad(t *testing.T) *lab.Agent {
	t.Helper()
	c.startWrk(t, 4*time.Second, true)
	time.Sleep(500 * time.Millisecond)
	if err := c.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	a, err := c.StartAgent(lab.AgentOptions{Binary: agentBinary(t), Manifests: c.manifests, XDPMode: "native"})
	if err != nil {
		t.Fatal(err)
	}
	c.agent = a
	c.waitReady(t)
	c.pingStreams(t, "after the upgrade")
	return a
}
