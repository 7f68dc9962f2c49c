package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/controlplane"
	"github.com/sluicelb/sluice/tools/lab"
)

// The services every datapath serves, the same API objects for sluice and kube-proxy. The
// remote ones have pod2 (on node2) as their only endpoint, the local one pod1 (on node1).
type service struct {
	name       string
	proto      v1.Protocol
	port       int32 // service port
	nodePort   uint16
	targetPort uint16
	pod        string // pod1 or pod2
}

var (
	svcHTTP     = service{"http", v1.ProtocolTCP, 80, 30080, 80, "pod2"}
	svcUDP      = service{"udp", v1.ProtocolUDP, 53, 30053, 5353, "pod2"}
	svcUDPLocal = service{"udp-local", v1.ProtocolUDP, 53, 30054, 5353, "pod1"}
	svcIperf    = service{"iperf", v1.ProtocolTCP, 5201, 30201, 5201, "pod2"}
	benchSvcs   = []service{svcHTTP, svcUDP, svcUDPLocal, svcIperf}
)

const (
	// Each new-connection (wrk) run gets a service and backend port of its own, created for
	// it: the backend's TIME_WAIT sockets from an earlier run (of another datapath, which
	// chose the same SNAT ports) would otherwise meet its SYNs.
	maxConnServices = 100
	connEndpoints   = 8     // addresses of pod2, each an endpoint of the conn-i services
	connPort0       = 8000  // conn-i's backend port is connPort0+i
	connNodePort0   = 30100 // and its NodePort connNodePort0+i
	benchNS         = "bench"
	nodePortRange   = "30000-45000"
	fillerPort0     = 30300 // filler service i has NodePort fillerPort0+i
)

// env is the lab for the datapath and sweep sections: a real kube-apiserver, one lab whose
// node1 reaches it through a relay, backends in both pods (HTTP on 80, UDP on 5353, iperf3 on
// 5201 in pod2) and the services.
type env struct {
	cfg        *config
	l          *lab.Lab
	cp         *controlplane.ControlPlane
	client     kubernetes.Interface
	kubeconfig string
	cleanups   []func() error

	brNode1Index int // the bridge's port facing node1 (where the generator sends from)
	pod1MAC      net.HardwareAddr
	vpod1Index   int
	vpod1MAC     net.HardwareAddr
	fillers      int
	podCgroup    string // the in-cluster section's cgroup v2 for pod1's clients
	connSeq      int
	// pod2Addrs are pod2's addresses, each an endpoint of the new-connection services: a
	// proxy that SNATs has a port range per endpoint (sluice: 28976 ports, none reused for
	// 60 s), which one endpoint's worth of wrk would use up in a few seconds.
	pod2Addrs []netip.Addr
}

// newConnService creates the next conn-i service (remote backend pod2) and returns it with a
// function that deletes it.
func (e *env) newConnService(ctx context.Context) (service, func(), error) {
	if e.connSeq >= maxConnServices {
		return service{}, nil, fmt.Errorf("more than %d new-connection runs", maxConnServices)
	}
	i := e.connSeq
	e.connSeq++
	s := service{fmt.Sprintf("conn-%d", i), v1.ProtocolTCP, 80, uint16(connNodePort0 + i), uint16(connPort0 + i), "pod2"}
	var eps []endpoint
	for _, a := range e.pod2Addrs {
		eps = append(eps, endpoint{a, "node2"})
	}
	if err := createService(ctx, e.client, s.name, s.proto, s.port, s.nodePort, s.targetPort, eps); err != nil {
		return service{}, nil, err
	}
	return s, func() {
		_ = e.client.CoreV1().Services(benchNS).Delete(context.Background(), s.name, metav1.DeleteOptions{})
		_ = e.client.DiscoveryV1().EndpointSlices(benchNS).Delete(context.Background(), s.name+"-1", metav1.DeleteOptions{})
	}, nil
}

func (e *env) defer_(fn func() error) { e.cleanups = append(e.cleanups, fn) }

// close undoes everything in reverse order.
func (e *env) close() error {
	var errs []error
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		if err := e.cleanups[i](); err != nil {
			errs = append(errs, err)
		}
	}
	e.cleanups = nil
	return errors.Join(errs...)
}

func newEnv(ctx context.Context, cfg *config) (_ *env, err error) {
	e := &env{cfg: cfg}
	defer func() {
		if err != nil {
			if cerr := e.close(); cerr != nil {
				logf("cleanup: %v", cerr)
			}
		}
	}()
	t0 := time.Now()
	if _, err := os.Stat(cfg.agentBin); err != nil {
		return nil, fmt.Errorf("sluice-agent: %w (run make build)", err)
	}
	for _, bin := range []string{"iperf3", "wrk", "nft", "iptables", "conntrack", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s is needed: %w (make deps installs it)", bin, err)
		}
	}
	if e.cp, err = controlplane.StartWith(controlplane.Options{NodePortRange: nodePortRange}); err != nil {
		return nil, err
	}
	e.defer_(func() error { e.cp.Stop(); return nil })
	if e.client, err = e.cp.Client(); err != nil {
		return nil, err
	}
	// NIC-like veths on purpose: the benchmark stands in for a node with a NIC, where sluice
	// runs native XDP (auto's choice on such drivers); sluice-tc is measured on the same lab.
	// Dual-stack, for the IPv6 packet rate (pps6.go).
	if e.l, err = lab.UpDualStack(lab.NICLike); err != nil {
		return nil, err
	}
	e.defer_(e.l.Down)
	logf("lab %s up, API server on 127.0.0.1:%d (%v)", e.l.ID, e.cp.Port, time.Since(t0).Round(time.Millisecond))
	l := e.l

	for _, p := range []struct {
		ns   *testutil.Netns
		name string
	}{{l.Pod1, "pod1"}, {l.Pod2, "pod2"}} {
		tcp := []uint16{80}
		if p.name == "pod2" {
			for i := 0; i < maxConnServices; i++ {
				tcp = append(tcp, connPort0+uint16(i))
			}
		}
		b, err := lab.StartBackend(p.ns, p.name, tcp, []uint16{5353})
		if err != nil {
			return nil, err
		}
		e.defer_(func() error { b.Close(); return nil })
	}
	iperf := exec.Command("nsenter", "--net="+l.Pod2.Path(), "iperf3", "-s", "-p", "5201")
	iperf.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	wait, err := startLocked(iperf)
	if err != nil {
		return nil, fmt.Errorf("start iperf3 server: %w", err)
	}
	e.defer_(func() error { _ = iperf.Process.Kill(); _ = wait(); return nil })

	// Both directions of plain forwarding through node1: the client reaches the pods via
	// node1, and node2 answers the client via node1 (as the proxies' SNAT makes replies do).
	// node1 sends no ICMP redirects (it forwards out of the device packets came in on).
	for _, c := range []struct {
		ns   *testutil.Netns
		args []string
	}{
		{l.Client, []string{"ip", "route", "add", "10.244.0.0/16", "via", l.Node1IP.String()}},
		{l.Client, []string{"sysctl", "-qw", "net.ipv4.conf.all.accept_redirects=0"}},
		{l.Node2, []string{"ip", "route", "add", l.ClientIP.String() + "/32", "via", l.Node1IP.String()}},
		{l.Node1, []string{"sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.eth0.send_redirects=0"}},
		{l.Node2, []string{"sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.eth0.send_redirects=0"}},
		// The sink drops ARP with everything else: node1's next hops are known in advance.
		{l.Node1, []string{"ip", "neigh", "replace", l.Node2IP.String(), "lladdr", l.Node2MAC.String(), "dev", "eth0", "nud", "permanent"}},
		{l.Node1, []string{"ip", "neigh", "replace", l.ClientIP.String(), "lladdr", l.ClientMAC.String(), "dev", "eth0", "nud", "permanent"}},
	} {
		if _, err := c.ns.Exec(c.args...); err != nil {
			return nil, err
		}
	}
	e.pod2Addrs = []netip.Addr{l.Pod2IP}
	for i := 1; i < connEndpoints; i++ {
		a := netip.AddrFrom4([4]byte{10, 244, 2, byte(10 + i)})
		if _, err := l.Pod2.Exec("ip", "addr", "add", a.String()+"/24", "dev", "eth0"); err != nil {
			return nil, err
		}
		e.pod2Addrs = append(e.pod2Addrs, a)
	}
	if e.pod1MAC, _, err = linkOf(l.Pod1, "eth0"); err != nil {
		return nil, err
	}
	if e.vpod1MAC, e.vpod1Index, err = linkOf(l.Node1, "vpod1"); err != nil {
		return nil, err
	}
	if _, e.brNode1Index, err = linkOf(l.Bridge, "node1"); err != nil {
		return nil, err
	}
	if _, err := l.Node1.Exec("ip", "neigh", "replace", l.Pod1IP.String(), "lladdr", e.pod1MAC.String(), "dev", "vpod1", "nud", "permanent"); err != nil {
		return nil, err
	}
	if err := e.setUpIPv6(e.pod1MAC); err != nil {
		return nil, err
	}

	// node1's 127.0.0.1:6443 is the API server.
	var ln net.Listener
	if err := l.Node1.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:6443")
		return err
	}); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	go e.cp.Relay(rctx, ln)
	e.defer_(func() error { cancel(); return nil })
	e.kubeconfig = filepath.Join(e.cp.Dir, "node1.kubeconfig")
	if err := os.WriteFile(e.kubeconfig, []byte(e.cp.KubeconfigFor("https://127.0.0.1:6443")), 0o600); err != nil {
		return nil, err
	}
	if err := e.createObjects(ctx); err != nil {
		return nil, err
	}
	logf("backends, routes and services ready (%v)", time.Since(t0).Round(time.Millisecond))
	return e, nil
}

func linkOf(ns *testutil.Netns, name string) (net.HardwareAddr, int, error) {
	var mac net.HardwareAddr
	var idx int
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return err
		}
		mac, idx = ifc.HardwareAddr, ifc.Index
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("find %s in %s: %w", name, ns.Name, err)
	}
	return mac, idx, nil
}

func (e *env) createObjects(ctx context.Context) error {
	c := e.client
	for name, ips := range map[string][]netip.Addr{"node1": {e.l.Node1IP, e.l.Node1IP6}, "node2": {e.l.Node2IP, e.l.Node2IP6}} {
		n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
		if _, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		n, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.Addresses = nil
		for _, ip := range ips {
			n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeInternalIP, Address: ip.String()})
		}
		if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	if _, err := c.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNS}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	for _, s := range benchSvcs {
		addr, node := e.l.Pod2IP, "node2"
		if s.pod == "pod1" {
			addr, node = e.l.Pod1IP, "node1"
		}
		if err := createService(ctx, c, s.name, s.proto, s.port, s.nodePort, s.targetPort, []endpoint{{addr, node}}); err != nil {
			return err
		}
	}
	for _, s := range benchSvcs6 {
		addr, node := e.l.Pod2IP6, "node2"
		if s.pod == "pod1" {
			addr, node = e.l.Pod1IP6, "node1"
		}
		if err := createService(ctx, c, s.name, s.proto, s.port, s.nodePort, s.targetPort, []endpoint{{addr, node}}); err != nil {
			return err
		}
	}
	return nil
}

type endpoint struct {
	addr netip.Addr
	node string
}

// createService creates a NodePort service and its slice of eps: single-stack IPv6 when the
// endpoints are IPv6, the API server's default (IPv4) otherwise.
func createService(ctx context.Context, c kubernetes.Interface, name string, proto v1.Protocol, port int32, nodePort, target uint16, eps []endpoint) error {
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: name}, Spec: v1.ServiceSpec{
		Type: v1.ServiceTypeNodePort, Selector: map[string]string{"app": name},
		Ports: []v1.ServicePort{{Name: "p", Protocol: proto, Port: port, TargetPort: intstr.FromInt32(int32(target)), NodePort: int32(nodePort)}},
	}}
	addrType := discoveryv1.AddressTypeIPv4
	if len(eps) > 0 && eps[0].addr.Is6() {
		single := v1.IPFamilyPolicySingleStack
		svc.Spec.IPFamilies, svc.Spec.IPFamilyPolicy = []v1.IPFamily{v1.IPv6Protocol}, &single
		addrType = discoveryv1.AddressTypeIPv6
	}
	if _, err := c.CoreV1().Services(benchNS).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service %s: %w", name, err)
	}
	pname, tport := "p", int32(target)
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: benchNS, Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: addrType,
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Protocol: &proto, Port: &tport}},
	}
	ready := true
	for _, ep := range eps {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{ep.addr.String()}, NodeName: &ep.node,
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	if _, err := c.DiscoveryV1().EndpointSlices(benchNS).Create(ctx, sl, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create slice %s: %w", name, err)
	}
	return nil
}

// fillTo creates filler services until n exist besides the measured ones: TCP, one endpoint
// each on node2 (addresses 10.250.0.0 onwards, nothing listens: they are never sent to).
func (e *env) fillTo(ctx context.Context, n int) error {
	if n <= e.fillers {
		return nil
	}
	if fillerPort0+n > 45000 {
		return fmt.Errorf("%d filler services do not fit the NodePort range %s", n, nodePortRange)
	}
	t0 := time.Now()
	from := e.fillers
	err := parallel(ctx, n-from, 16, func(i int) error {
		i += from
		addr := netip.AddrFrom4([4]byte{10, 250, byte(i >> 8), byte(i)})
		return createService(ctx, e.client, fmt.Sprintf("fill-%d", i), v1.ProtocolTCP, 80, uint16(fillerPort0+i), 8080, []endpoint{{addr, "node2"}})
	})
	if err != nil {
		return err
	}
	e.fillers = n
	logf("created %d filler services through the API server (%v)", n-from, time.Since(t0).Round(time.Millisecond))
	return nil
}

func parallel(ctx context.Context, n, workers int, fn func(i int) error) error {
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	next := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Go(func() {
			for i := range next {
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
				}
			}
		})
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// passProgram is the lab's XDP_PASS for the bridge's ports (see lab.attachXDPPass): put back
// on the bridge's node1 port after the sink leaves it.
func setXDPPass(ns *testutil.Netns, dev string) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "lab_xdp_pass", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load xdp pass: %w", err)
	}
	defer prog.Close()
	return ns.Do(func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFdWithFlags(l, prog.FD(), nl.XDP_FLAGS_DRV_MODE)
	})
}

func clearXDP(ns *testutil.Netns, dev string) error {
	return ns.Do(func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFd(l, -1)
	})
}
