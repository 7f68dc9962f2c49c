package cli

import (
	"bytes"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/reconciler"
	"github.com/sluicelb/sluice/internal/testutil"
)

var (
	nodeIP     = netip.MustParseAddr("10.0.0.1")
	backendIP  = netip.MustParseAddr("10.0.0.2")
	clientIP   = netip.MustParseAddr("10.0.0.9")
	podIP      = netip.MustParseAddr("10.244.1.10")
	backendMAC = net.HardwareAddr{2, 0, 0, 0, 0, 2}
	clientMAC  = net.HardwareAddr{2, 0, 0, 0, 0, 9}
)

// fixture is a pinned datapath with known services, an agent record and a few live flows:
// what the tests of every subcommand read.
type fixture struct {
	node *testutil.Node
	dp   *datapath.Datapath
	dir  string
	snat uint16 // the SNAT port of the TCP flow client:41000 -> api
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	node := testutil.NewNode(t, "sl-cli-", nodeIP, map[netip.Addr]net.HardwareAddr{backendIP: backendMAC, clientIP: clientMAC})
	dir := filepath.Join("/sys/fs/bpf", testutil.UniqueName("sluicectl-test-"))
	dp, err := datapath.Load(datapath.Config{PinPath: dir, XDPIfindex: uint32(node.Ifindex), PodPrograms: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dp.Close()
		os.RemoveAll(dir)
	})
	k := maps.NewKernel(&dp.Objs.SluiceMaps)
	be := func(a netip.Addr, p uint16, local bool) lb.Backend {
		return lb.Backend{Addr: a, Port: p, Local: local}
	}
	st := desired.State{Addresses: []netip.Addr{nodeIP}, Services: map[desired.ServiceKey]*desired.Service{}}
	for _, s := range []*desired.Service{
		{Key: desired.ServiceKey{NodePort: 30080, Proto: lb.TCP}, Name: "default/web:http", Backends: []lb.Backend{be(backendIP, 8080, false), be(podIP, 80, true)}},
		{Key: desired.ServiceKey{NodePort: 30081, Proto: lb.TCP}, Name: "default/api:http", Backends: []lb.Backend{be(backendIP, 8080, false)}},
		{Key: desired.ServiceKey{NodePort: 30053, Proto: lb.UDP}, Name: "default/dns:dns", Backends: []lb.Backend{be(backendIP, 5353, false)}},
		{Key: desired.ServiceKey{NodePort: 30090, Proto: lb.TCP}, Name: "default/empty:http"},
		{Key: desired.ServiceKey{NodePort: 30095, Proto: lb.TCP}, Name: "default/sticky:http", Backends: []lb.Backend{be(podIP, 80, true)},
			AffinityTimeout: 600, ExternalLocal: true, Maglev: true},
	} {
		st.Services[s.Key] = s
	}
	if err := reconciler.New(k, 1000, 1000, zap.NewNop()).Apply(st); err != nil {
		t.Fatal(err)
	}
	xdpID, tcIn, tcEg := dp.ProgramIDs()
	err = k.WriteAgentInfo(maps.AgentInfo{Version: "v-test", Object: datapath.ObjectHash(), Started: time.Now(), PID: os.Getpid(),
		Config: dp.Config, Devices: []maps.DeviceInfo{{Name: "eth0", Ifindex: node.Ifindex, XDPMode: "native", TCMode: "tcx",
			XDPProg: xdpID, TCIngressProg: tcIn, TCEgressProg: tcEg}}})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{node: node, dp: dp, dir: dir}
	// Live flows: TCP to api (remote, SNAT), UDP to dns.
	out := f.send(t, layers.IPProtocolTCP, 41000, 30081, 3)
	f.snat = uint16(out[34])<<8 | uint16(out[35])
	f.send(t, layers.IPProtocolUDP, 41001, 30053, 3)
	return f
}

// send runs a client packet through the XDP program and checks the verdict.
func (f *fixture) send(t *testing.T, proto layers.IPProtocol, sport, dport uint16, want uint32) []byte {
	t.Helper()
	p := testutil.Pkt{SrcMAC: clientMAC, DstMAC: f.node.MAC, Proto: proto, SYN: proto == layers.IPProtocolTCP,
		Src: netip.AddrPortFrom(clientIP, sport), Dst: netip.AddrPortFrom(nodeIP, dport), Window: 1000}
	var ret uint32
	var out []byte
	err := f.node.Do(func() error {
		var err error
		ret, out, err = testutil.RunXDP(f.dp.Objs.SluiceXdp, f.node.Ifindex, p.Bytes())
		return err
	})
	if err != nil || ret != want {
		t.Fatalf("send %v:%d: verdict %d (%v), want %d", proto, dport, ret, err, want)
	}
	return out
}

// run runs sluicectl with args inside the node's namespace and returns stdout; it fails the
// test on a non-zero exit.
func (f *fixture) run(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := f.runCode(t, args...)
	if code != 0 {
		t.Fatalf("sluicectl %v: exit %d: %s", args, code, errOut)
	}
	return out
}

func (f *fixture) runCode(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := 0
	err := f.node.Do(func() error {
		code = Run(append([]string{"--bpffs", f.dir}, args...), &out, &errOut)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

// runJSON runs with -o json and decodes into v.
func (f *fixture) runJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out := f.run(t, append([]string{"-o", "json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("decode %q: %v", out, err)
	}
}

// ctCount is how many connection-table entries exist.
func (f *fixture) ctCount(t *testing.T) int {
	t.Helper()
	n := 0
	if err := maps.NewKernel(&f.dp.Objs.SluiceMaps).Conntrack(func(maps.CTEntry) bool { n++; return true }); err != nil {
		t.Fatal(err)
	}
	return n
}
