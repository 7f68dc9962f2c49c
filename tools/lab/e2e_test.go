package lab_test

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/internal/cli"
	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/lab"
)

// End-to-end: real TCP (HTTP) and UDP from the client namespace to node1's NodePorts, through
// the agent's programs, to a local pod on node1 and a remote pod on node2, and back.

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds cmd/... once per test binary and returns the folder holding them.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sluice-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		binDir = dir
		out, err := exec.Command("go", "build", "-o", dir+"/", "github.com/sluicelb/sluice/cmd/...").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("build binaries: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func agentBinary(t *testing.T) string { return filepath.Join(binaries(t), "sluice-agent") }

// cluster is a lab with backends in both pods and the agent on node1.
type cluster struct {
	*lab.Lab
	agent     *lab.Agent
	manifests string
}

func startCluster(t *testing.T, mode string, extra ...string) *cluster {
	t.Helper()
	c := startClusterNoWait(t, mode, extra...)
	c.waitReady(t)
	return c
}

// waitReady waits for the agent's /readyz (its first full sync is written). Up to 20 s: the
// verifier's work at start (both families' objects, with IPv6) slows under a loaded CI machine.
func (c *cluster) waitReady(t *testing.T) {
	t.Helper()
	c.waitForUpTo(t, 20*time.Second, "the agent's /readyz", func() error {
		status, body, err := lab.HTTPGetPath(c.Node1, netip.MustParseAddrPort("127.0.0.1:9871"), "/readyz")
		if err == nil && status != 200 {
			err = fmt.Errorf("%d %s", status, body)
		}
		return err
	})
}

func startClusterNoWait(t *testing.T, mode string, extra ...string) *cluster {
	t.Helper()
	testutil.RequirePrivileges(t)
	return startClusterWith(t, agentBinary(t), mode, extra...)
}

// variantFor is the lab a test of an XDP mode runs on. The agent's default ("" or auto) and
// tc-only run on plain veths, as a kind-style node has them. Forcing native or generic XDP is
// only right where the NIC meets what XDP needs (complete checksums, delivered XDP_TX), so
// those runs use NIC-like veths, on purpose.
func variantFor(mode string) lab.Variant {
	if mode == "native" || mode == "generic" {
		return lab.NICLike
	}
	return lab.Plain
}

// startClusterWith starts the lab with the agent binary bin, without waiting for it.
func startClusterWith(t *testing.T, bin, mode string, extra ...string) *cluster {
	t.Helper()
	return startClusterOn(t, variantFor(mode), bin, mode, extra...)
}

// startClusterOn is startClusterWith on a lab variant of the caller's choice.
func startClusterOn(t *testing.T, v lab.Variant, bin, mode string, extra ...string) *cluster {
	t.Helper()
	testutil.RequirePrivileges(t)
	return startClusterIn(t, lab.UpVariantForTest(t, v), bin, mode, extra...)
}

// startClusterIn is startClusterOn on a lab of the caller's making (a dual-stack one, say).
func startClusterIn(t *testing.T, l *lab.Lab, bin, mode string, extra ...string) *cluster {
	t.Helper()
	c := &cluster{Lab: l, manifests: t.TempDir()}
	copyExamples(t, c.manifests)
	startPods(t, l)
	a, err := l.StartAgent(lab.AgentOptions{Binary: bin, Manifests: c.manifests, XDPMode: mode, Extra: append([]string{"--log-level", "debug"}, extra...)})
	if err != nil {
		t.Fatal(err)
	}
	c.agent = a
	c.stopAgentAtCleanup(t)
	return c
}

// startPods starts the echo backends in both pods (HTTP on 80, UDP on 5353).
func startPods(t *testing.T, l *lab.Lab) {
	t.Helper()
	for _, p := range []struct {
		ns   *testutil.Netns
		name string
	}{{l.Pod1, "pod1"}, {l.Pod2, "pod2"}} {
		b, err := lab.StartBackend(p.ns, p.name, []uint16{80}, []uint16{5353})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
	}
}

// stopAgentAtCleanup stops whichever agent the cluster runs when the test ends, and shows its
// logs if the test failed.
func (c *cluster) stopAgentAtCleanup(t *testing.T) {
	t.Cleanup(func() {
		if err := c.agent.Stop(); err != nil {
			t.Errorf("agent exit: %v", err)
		}
		if t.Failed() {
			t.Logf("agent logs:\n%s", c.agent.Logs())
		}
	})
}

func copyExamples(t *testing.T, dst string) {
	t.Helper()
	for _, f := range []string{"echo.yaml", "empty.yaml"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "examples", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func (c *cluster) nodePort(p uint16) netip.AddrPort { return netip.AddrPortFrom(c.Node1IP, p) }

// waitFor polls fn until it succeeds, for up to 5 s.
func (c *cluster) waitFor(t *testing.T, what string, fn func() error) {
	t.Helper()
	c.waitForUpTo(t, 5*time.Second, what, fn)
}

// waitForUpTo is waitFor for up to d.
func (c *cluster) waitForUpTo(t *testing.T, d time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || c.agent.Exited() {
			t.Fatalf("waiting for %s: %v\nagent logs:\n%s", what, err, c.agent.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// request sends one request of the protocol and returns who answered and whom they saw.
func (c *cluster) request(proto string, port uint16) (string, netip.AddrPort, error) {
	var body string
	var err error
	if proto == "tcp" {
		body, err = lab.HTTPGet(c.Client, c.nodePort(port))
	} else {
		body, err = lab.UDPRequest(c.Client, c.nodePort(port), "hello")
	}
	if err != nil {
		return "", netip.AddrPort{}, err
	}
	return lab.ParseReply(body)
}

// checkSpreadAndAddresses sends n requests and checks both pods answer, the remote pod sees
// the node's address with a SNAT port, and the local pod sees the client itself.
func (c *cluster) checkSpreadAndAddresses(t *testing.T, proto string, port uint16, n int) {
	t.Helper()
	seen := map[string]int{}
	d := datapath.Defaults()
	for i := 0; i < n; i++ {
		who, client, err := c.request(proto, port)
		if err != nil {
			t.Fatalf("%s request %d: %v", proto, i, err)
		}
		seen[who]++
		switch who {
		case "pod1": // local: DNAT only, the client address is kept
			if client.Addr() != c.ClientIP {
				t.Errorf("local pod saw %s, want the client %s", client, c.ClientIP)
			}
		case "pod2": // remote: SNAT to the node address and a port from the SNAT range
			if client.Addr() != c.Node1IP || client.Port() < d.SNATPortMin || client.Port() > d.SNATPortMax {
				t.Errorf("remote pod saw %s, want %s with a port in %d-%d", client, c.Node1IP, d.SNATPortMin, d.SNATPortMax)
			}
		default:
			t.Errorf("unexpected backend %q", who)
		}
	}
	if seen["pod1"] == 0 || seen["pod2"] == 0 {
		t.Errorf("%s: %d requests answered by %v, want both pods", proto, n, seen)
	}
	t.Logf("%s: %v", proto, seen)
}

// forEachMode runs fn on each way the datapath attaches: the defaults on plain veths (auto
// picks tc there; through TCX, and through clsact as kernels before 6.6 get it), and XDP native
// and generic forced on NIC-like veths (with tc for egress).
func forEachMode(t *testing.T, fn func(t *testing.T, c *cluster)) {
	for _, m := range []struct{ name, xdp, tc string }{
		{"defaults", "", "auto"},
		{"defaults-clsact", "", "clsact"},
		{"xdp-native", "native", "auto"},
		{"xdp-generic", "generic", "auto"},
	} {
		t.Run(m.name, func(t *testing.T) {
			c := startCluster(t, m.xdp, "--tc-attach", m.tc)
			fn(t, c)
		})
	}
}

func TestE2ETCPAndUDPReachBothBackendKinds(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *cluster) {
		c.checkSpreadAndAddresses(t, "tcp", 30080, 40)
		c.checkSpreadAndAddresses(t, "udp", 30053, 40)
		c.checkCounters(t)
	})
}

func TestE2ENoEndpointsRefusedAtOnce(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *cluster) {
		start := time.Now()
		err := lab.TCPConnect(c.Client, c.nodePort(30090), 2*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("TCP to a service without endpoints: %v, want connection refused (RST)", err)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("TCP refusal took %v", d)
		}
		_, err = lab.UDPRequest(c.Client, c.nodePort(30091), "anyone?")
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("UDP to a service without endpoints: %v, want connection refused (ICMP port unreachable)", err)
		}
	})
}

func TestE2ENodeTrafficUntouched(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *cluster) {
		// The node's own server on a port that is no NodePort, and a closed NodePort-range port.
		b, err := lab.StartBackend(c.Node1, "node1-sshd", []uint16{2222}, []uint16{2223})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		body, err := lab.HTTPGet(c.Client, c.nodePort(2222))
		if err != nil {
			t.Fatal(err)
		}
		who, client, err := lab.ParseReply(body)
		if err != nil || who != "node1-sshd" || client.Addr() != c.ClientIP {
			t.Errorf("node's own TCP server: %q %v %v", who, client, err)
		}
		body, err = lab.UDPRequest(c.Client, c.nodePort(2223), "x")
		if who, _, _ := lab.ParseReply(body); err != nil || who != "node1-sshd" {
			t.Errorf("node's own UDP server: %q %v", body, err)
		}
		// A NodePort-range port no service uses is the kernel's to refuse.
		if err := lab.TCPConnect(c.Client, c.nodePort(31999), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("unused port: %v", err)
		}
		// And the node still reaches pods on other nodes itself.
		if _, err := lab.HTTPGet(c.Node1, netip.AddrPortFrom(c.Pod2IP, 80)); err != nil {
			t.Errorf("node1 -> pod2: %v", err)
		}
	})
}

// Manifest edits are applied within a second, and a stopped agent leaves its maps pinned.
func TestE2EManifestEditsAndShutdown(t *testing.T) {
	c := startCluster(t, "native")
	echo := filepath.Join(c.manifests, "echo.yaml")
	b, err := os.ReadFile(echo)
	if err != nil {
		t.Fatal(err)
	}
	// Drop pod2 (the remote endpoint): only pod1 may answer new connections within a second.
	edited := strings.Replace(string(b), `  - addresses: ["10.244.2.10"]
    conditions: {ready: true}
    nodeName: node2
`, "", 1)
	if edited == string(b) {
		t.Fatal("example manifest changed shape; update this test")
	}
	writeAtomic(t, echo, edited)
	edit := time.Now()
	c.waitFor(t, "pod2 to leave the service", func() error {
		for i := 0; i < 10; i++ {
			if who, _, err := c.request("tcp", 30080); err != nil || who != "pod1" {
				return fmt.Errorf("answered by %q (%v)", who, err)
			}
		}
		return nil
	})
	if d := time.Since(edit); d > 1500*time.Millisecond {
		t.Errorf("edit took %v to apply", d)
	}
	// A broken file is logged and skipped; the service keeps working.
	writeAtomic(t, filepath.Join(c.manifests, "broken.yaml"), "kind: Service\nmetadata: [oops\n")
	time.Sleep(700 * time.Millisecond)
	if who, _, err := c.request("tcp", 30080); err != nil || who != "pod1" {
		t.Errorf("after a broken file: %q %v", who, err)
	}
	if !strings.Contains(c.agent.Logs(), "broken.yaml") {
		t.Errorf("broken file not named in the logs")
	}

	if err := c.agent.Stop(); err != nil {
		t.Fatalf("agent exit: %v", err)
	}
	// Without its agent the datapath keeps serving, as kube-proxy's rules do.
	if who, _, err := c.request("tcp", 30080); err != nil || who != "pod1" {
		t.Errorf("after the agent stopped: %q %v", who, err)
	}
	if out := c.Node1.MustExec(t, "ip", "-d", "link", "show", "eth0"); !strings.Contains(out, "xdp") {
		t.Errorf("XDP detached when the agent stopped:\n%s", out)
	}
	for _, m := range []string{"sluice_frontends", "sluice_ct", "sluice_backends", "links/eth0_xdp-native", "links/eth0_tcx-ingress"} {
		if _, err := os.Stat(filepath.Join(c.PinDir(), m)); err != nil {
			t.Errorf("%s not pinned after stop: %v", m, err)
		}
	}
	// --cleanup removes it all: the NodePort is the kernel's again, nothing listens, refused.
	if out, err := c.Cleanup(agentBinary(t)); err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	if out := c.Node1.MustExec(t, "ip", "-d", "link", "show", "eth0"); strings.Contains(out, "xdp") {
		t.Errorf("XDP attached after --cleanup:\n%s", out)
	}
	if _, err := os.Stat(c.PinDir()); err == nil {
		t.Errorf("pins left after --cleanup")
	}
	if err := lab.TCPConnect(c.Client, c.nodePort(30080), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after cleanup: %v", err)
	}
}

func writeAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// checkCounters reads the pinned per-service counters: the traffic went through our programs.
func (c *cluster) checkCounters(t *testing.T) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(c.PinDir(), "sluice_svc_stats"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var total, replies uint64
	var key uint32
	var per []datapath.SluiceSvcStats
	it := m.Iterate()
	for it.Next(&key, &per) {
		for _, s := range per {
			total += s.Packets
			replies += s.ReplyPackets
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	if total == 0 || replies == 0 {
		t.Errorf("service counters: %d packets, %d replies; want both > 0", total, replies)
	}
	_ = lb.TCP
}

// sluicectl runs the CLI on node1 (nsenter --net: ip netns exec would hide the pins) with
// extra leading arguments (such as setpriv to drop root), returning output and exit error.
func (c *cluster) sluicectl(t *testing.T, prefix []string, args ...string) (string, error) {
	t.Helper()
	cmdline := append(append([]string{"--net=" + c.Node1.Path()}, prefix...), filepath.Join(binaries(t), "sluicectl"), "--bpffs", c.PinDir())
	out, err := exec.Command("nsenter", append(cmdline, args...)...).CombinedOutput()
	return string(out), err
}

func (c *cluster) sluicectlJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out, err := c.sluicectl(t, nil, append([]string{"-o", "json"}, args...)...)
	if err != nil {
		t.Fatalf("sluicectl %v: %v\n%s", args, err, out)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("sluicectl %v: %v\n%s", args, err, out)
	}
}

// sluicectl reads a live agent's datapath, and the maps it left after it stopped; only root.
// The defaults on a plain veth attach tc only and say why; native forced on a NIC-like veth
// adds XDP.
func TestE2ESluicectl(t *testing.T) {
	for _, m := range []struct {
		mode, xdp, reason, first string
		progs                    int
	}{
		{"", "off", "veth", "sluice_tc_ingress", 2},
		{"native", "native", "flag", "sluice_xdp", 3},
	} {
		t.Run(cmp.Or(m.mode, "defaults"), func(t *testing.T) {
			testSluicectl(t, m.mode, m.xdp, m.reason, m.first, m.progs)
		})
	}
}

func testSluicectl(t *testing.T, mode, xdp, reason, first string, progs int) {
	c := startCluster(t, mode)
	conn, err := lab.OpenTCP(c.Client, c.nodePort(30080))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	var svcs []cli.ServiceJSON
	c.sluicectlJSON(t, &svcs, "service", "list")
	found := false
	for _, s := range svcs {
		if s.Name == "default/echo:http" && s.NodePort == 30080 && len(s.Backends) == 2 && s.Packets > 0 {
			found = true
		}
	}
	if !found {
		t.Errorf("service list: %+v", svcs)
	}
	var ps cli.ProgShowJSON
	c.sluicectlJSON(t, &ps, "prog", "show")
	if !ps.Agent.Running || len(ps.Devices) != 1 || ps.Devices[0].XDPMode != xdp || ps.Devices[0].XDPReason != reason ||
		len(ps.Devices[0].Programs) != progs {
		t.Errorf("prog show (running): %+v, want XDP %s because %s, %d programs", ps, xdp, reason, progs)
	}
	_, metrics, err := lab.HTTPGetPath(c.Node1, netip.MustParseAddrPort("127.0.0.1:9871"), "/metrics")
	want := fmt.Sprintf(`sluice_device_info{device="eth0",tc_mode="tcx",xdp_mode="%s",xdp_reason="%s"} 1`, xdp, reason)
	if err != nil || !strings.Contains(metrics, want) {
		t.Errorf("metrics: want %s (%v)", want, err)
	}
	var flows []cli.FlowJSON
	c.sluicectlJSON(t, &flows, "ct", "list", "--client", c.ClientIP.String())
	if len(flows) == 0 {
		t.Errorf("ct list: no flow from the client")
	}
	var tr cli.TraceJSON
	c.sluicectlJSON(t, &tr, "trace", "--src", c.ClientIP.String()+":50000", "--dst", c.nodePort(30080).String())
	// A remote backend whose next hop is not resolved yet is left to tc: also a right answer.
	if (tr.Stage != "new-flow" && tr.Stage != "to-tc") || tr.Service != "default/echo:http" || tr.Backend == "" {
		t.Errorf("trace: %+v", tr)
	}

	if out, err := c.sluicectl(t, []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}, "service", "list"); err == nil || !strings.Contains(out, "only root") {
		t.Errorf("as nobody: %v\n%s", err, out)
	}

	if err := c.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	c.sluicectlJSON(t, &ps, "prog", "show")
	if ps.Agent.Running || len(ps.Devices) != 1 || ps.Devices[0].Programs[0].Name != first {
		t.Errorf("prog show (agent stopped, programs still attached): %+v", ps)
	}
	c.sluicectlJSON(t, &svcs, "service", "list")
	if len(svcs) != 4 {
		t.Errorf("service list after stop: %d services", len(svcs))
	}
}

// Restarting the agent, gently or by kill -9, keeps established connections: the links are
// pinned, the programs keep running, and the new agent swaps its own in atomically.
func TestE2ERestartKeepsConnections(t *testing.T) {
	for _, mode := range []string{"native", ""} {
		t.Run(cmp.Or(mode, "defaults"), func(t *testing.T) {
			c := startCluster(t, mode)
			for round, how := range []string{"SIGTERM", "SIGKILL"} {
				// Open connections (to both backends, by chance over 16) before the restart and
				// use them after it. Each serves a request first: the backend closes a
				// connection whose first request takes longer than its ReadHeaderTimeout (2 s,
				// less than a restart), whatever sluice does; an idle one it keeps for 30 s.
				var conns []net.Conn
				var first []string
				for i := 0; i < 16; i++ {
					conn, err := lab.OpenTCP(c.Client, c.nodePort(30080))
					if err != nil {
						t.Fatal(err)
					}
					defer conn.Close()
					who, err := lab.RequestOn(conn, c.nodePort(30080))
					if err != nil {
						t.Fatal(err)
					}
					conns = append(conns, conn)
					first = append(first, who)
				}
				before := xdpProgID(t, c)
				if how == "SIGTERM" {
					if err := c.agent.Stop(); err != nil {
						t.Fatal(err)
					}
				} else {
					c.agent.Kill()
				}
				a, err := c.StartAgent(lab.AgentOptions{Binary: agentBinary(t), Manifests: c.manifests, XDPMode: mode})
				if err != nil {
					t.Fatal(err)
				}
				c.agent = a
				c.waitReady(t)
				if mode == "native" {
					if after := xdpProgID(t, c); after == before {
						t.Errorf("round %d: XDP program %s still attached: the new agent did not swap its own in", round, before)
					}
				}
				// New connections work with the new agent, and so do the old ones.
				if _, err := lab.HTTPGet(c.Client, c.nodePort(30080)); err != nil {
					t.Errorf("new connection after the restart: %v", err)
				}
				seen := map[string]int{}
				for i, conn := range conns {
					who, err := lab.RequestOn(conn, c.nodePort(30080))
					if err != nil {
						t.Errorf("round %d (%s): connection %d broke across the restart: %v", round, how, i, err)
						continue
					}
					if who != first[i] {
						t.Errorf("round %d (%s): connection %d answered by %s before the restart, by %s after", round, how, i, first[i], who)
					}
					seen[who]++
				}
				t.Logf("%s: %d connections kept, answered by %v", how, len(conns), seen)
			}
		})
	}
}

// xdpProgID is the ID of the XDP program on node1's eth0, as ip link shows it.
func xdpProgID(t *testing.T, c *cluster) string {
	t.Helper()
	out := c.Node1.MustExec(t, "ip", "-d", "link", "show", "eth0")
	if i := strings.Index(out, "prog/xdp id "); i >= 0 {
		return strings.Fields(out[i+len("prog/xdp id "):])[0]
	}
	return ""
}

// The agent needs no more than the capabilities the DaemonSet grants (BPF, NET_ADMIN,
// SYS_ADMIN, PERFMON): run with every other one dropped from its bounding set, it serves; and it
// leaves the node's iptables and nftables empty.
func TestE2EAgentWithOnlyItsCapabilities(t *testing.T) {
	testutil.RequirePrivileges(t)
	l := lab.UpForTest(t)
	c := &cluster{Lab: l, manifests: t.TempDir()}
	copyExamples(t, c.manifests)
	startPods(t, l)
	a, err := l.StartAgent(lab.AgentOptions{Binary: agentBinary(t), Manifests: c.manifests,
		Wrap: []string{"setpriv", "--bounding-set=-all,+bpf,+net_admin,+sys_admin,+perfmon", "--inh-caps=-all", "--"}})
	if err != nil {
		t.Fatal(err)
	}
	c.agent = a
	c.stopAgentAtCleanup(t)
	c.waitReady(t)
	c.checkSpreadAndAddresses(t, "tcp", 30080, 20)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.PID()))
	if err != nil || !strings.Contains(string(status), "CapBnd:\t000000c000201000") {
		t.Errorf("agent's bounding set is not just BPF, NET_ADMIN, SYS_ADMIN, PERFMON: %v\n%s", err, status)
	}
	// Nothing of the agent's in the node's packet filter: no iptables rule, no nftables table
	// (kube-proxy's are what users migrate away from; ours would collide with them).
	if out := l.Node1.MustExec(t, "iptables-save"); strings.Contains(out, "-A ") || strings.Contains(out, ":KUBE") {
		t.Errorf("iptables rules on the node:\n%s", out)
	}
	if out := l.Node1.MustExec(t, "nft", "list", "ruleset"); strings.TrimSpace(out) != "" {
		t.Errorf("nftables ruleset on the node:\n%s", out)
	}
}

// NodePorts are served only on the addresses --nodeport-addresses allows: another address of
// the same device is the kernel's (nothing listens there: refused).
func TestE2ENodePortAddresses(t *testing.T) {
	// A CIDR, and "primary" (no Node object in the lab: the device's primary address, not
	// the secondary one added here).
	for _, flag := range []string{"10.89.0.11/32", "primary"} {
		t.Run(flag, func(t *testing.T) { checkNodePortAddresses(t, flag) })
	}
}

func checkNodePortAddresses(t *testing.T, flag string) {
	testutil.RequirePrivileges(t)
	l := lab.UpForTest(t)
	l.Node1.MustExec(t, "ip", "addr", "add", "10.89.0.21/24", "dev", "eth0")
	c := &cluster{Lab: l, manifests: t.TempDir()}
	copyExamples(t, c.manifests)
	startPods(t, l)
	a, err := l.StartAgent(lab.AgentOptions{Binary: agentBinary(t), Manifests: c.manifests,
		Extra: []string{"--nodeport-addresses", flag}})
	if err != nil {
		t.Fatal(err)
	}
	c.agent = a
	c.stopAgentAtCleanup(t)
	c.waitReady(t)
	c.waitFor(t, "the NodePort on the allowed address", func() error { _, err := lab.HTTPGet(l.Client, c.nodePort(30080)); return err })
	other := netip.MustParseAddrPort("10.89.0.21:30080")
	if err := lab.TCPConnect(l.Client, other, time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("address outside --nodeport-addresses: %v, want refused by the kernel", err)
	}
	var svcs []cli.ServiceJSON
	c.sluicectlJSON(t, &svcs, "service", "list")
	for _, s := range svcs {
		if len(s.Frontends) != 1 || !strings.HasPrefix(s.Frontends[0], "10.89.0.11:") {
			t.Errorf("%s frontends %v", s.Name, s.Frontends)
		}
	}
}
