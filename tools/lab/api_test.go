package lab_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"

	"github.com/sluicelb/sluice/internal/cli"
	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/controlplane"
	"github.com/sluicelb/sluice/tools/lab"
)

// Integration with a real kube-apiserver: the agent follows Services and EndpointSlices through
// client-go, and every change shows in real traffic through the lab within a second.

var (
	cpOnce   sync.Once
	cpShared *controlplane.ControlPlane
	cpErr    error
)

// sharedControlPlane starts one API server for the test binary (TestMain stops it).
func sharedControlPlane(t *testing.T) *controlplane.ControlPlane {
	t.Helper()
	testutil.RequirePrivileges(t)
	cpOnce.Do(func() { cpShared, cpErr = controlplane.Start() })
	if cpErr != nil {
		t.Fatal(cpErr)
	}
	return cpShared
}

func TestMain(m *testing.M) {
	testutil.SockClientMain()
	code := m.Run()
	if cpShared != nil {
		cpShared.Stop()
	}
	os.Exit(code)
}

// apiCluster is a lab whose agent follows the API server, in a namespace of its own.
type apiCluster struct {
	*cluster
	client kubernetes.Interface
	ns     string
}

func startAPICluster(t *testing.T, mode string) *apiCluster {
	t.Helper()
	c, kubeconfig := newAPILab(t)
	a, err := c.StartAgent(lab.AgentOptions{Binary: agentBinary(t), XDPMode: mode,
		Extra: []string{"--kubeconfig", kubeconfig, "--log-level", "debug", "--min-sync-interval", "20ms"}})
	if err != nil {
		t.Fatal(err)
	}
	c.agent = a
	c.stopAgentAtCleanup(t)
	// Changes are timed from here: not from an agent still loading its datapath.
	c.waitReady(t)
	return c
}

// newAPILab is a lab with pods, node1's 127.0.0.1:6443 relayed to the shared API server, and a
// namespace of its own; it returns the kubeconfig a proxy on node1 uses.
func newAPILab(t *testing.T) (*apiCluster, string) { return newAPILabOf(t, false) }

// newAPILabOf is newAPILab on a dual-stack lab when dual.
func newAPILabOf(t *testing.T, dual bool) (*apiCluster, string) {
	t.Helper()
	cp := sharedControlPlane(t)
	client, err := cp.Client()
	if err != nil {
		t.Fatal(err)
	}
	var l *lab.Lab
	if dual {
		l = lab.UpDualStackForTest(t, lab.Plain)
	} else {
		l = lab.UpForTest(t)
	}
	c := &apiCluster{cluster: &cluster{Lab: l}, client: client, ns: "t-" + l.ID}
	startPods(t, l)
	// The agent runs in node1's namespace: relay its 127.0.0.1:6443 to the API server.
	var ln net.Listener
	if err := l.Node1.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:6443")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go cp.Relay(ctx, ln)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(cp.KubeconfigFor("https://127.0.0.1:6443")), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Namespaces().Create(context.Background(), &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.CoreV1().Namespaces().Delete(context.Background(), c.ns, metav1.DeleteOptions{}) })
	return c, kubeconfig
}

func (c *apiCluster) service(name string, ports ...v1.ServicePort) *v1.Service {
	return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: c.ns, Name: name},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort, Selector: map[string]string{"app": name}, Ports: ports}}
}

func endpoint(addr netip.Addr, node string) discoveryv1.Endpoint {
	ready := true
	return discoveryv1.Endpoint{Addresses: []string{addr.String()}, NodeName: &node, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}
}

func (c *apiCluster) slice(svc string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	name, proto, port := "http", v1.ProtocolTCP, int32(80)
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: c.ns, Name: svc + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4, Endpoints: eps,
		Ports: []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
	}
}

// within polls check until it succeeds, failing the test if that takes longer than limit.
func (c *apiCluster) within(t *testing.T, limit time.Duration, what string, check func() error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := check()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			// sluice's counters, when it is the proxy (kube-proxy's runs have none).
			var st cli.StatsJSON
			if out, serr := c.sluicectl(t, nil, "-o", "json", "stats"); serr == nil && json.Unmarshal([]byte(out), &st) == nil {
				t.Fatalf("%s: not within %v: %v (datapath: %v)", what, limit, err, nonZero(st.Reasons))
			}
			t.Fatalf("%s: not within %v: %v", what, limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// answeredBy checks that n requests are all answered, by exactly the backends in want. Each
// connection gets 400 ms: a SYN lost on this busy 2-CPU machine (the whole suite runs at once)
// then costs a retry, not the 1 s TCP waits to send it again, which within's limits cannot
// absorb.
func (c *apiCluster) answeredBy(port uint16, n int, want ...string) func() error {
	return func() error {
		seen := map[string]int{}
		for i := 0; i < n; i++ {
			conn, err := lab.DialTCP(c.Client, c.nodePort(port), 400*time.Millisecond)
			if err != nil {
				return err
			}
			who, err := lab.RequestOn(conn, c.nodePort(port))
			conn.Close()
			if err != nil {
				return err
			}
			seen[who]++
		}
		return answeredByExactly(seen, want)
	}
}

// answeredByExactly checks that the answers came from each of want and nobody else.
func answeredByExactly(seen map[string]int, want []string) error {
	if len(seen) != len(want) {
		return fmt.Errorf("answered by %v, want each of %v", seen, want)
	}
	for _, w := range want {
		if seen[w] == 0 {
			return fmt.Errorf("answered by %v, want each of %v", seen, want)
		}
	}
	return nil
}

func (c *apiCluster) refused(port uint16) func() error {
	return func() error {
		err := lab.TCPConnect(c.Client, c.nodePort(port), time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("port %d: %v, want connection refused", port, err)
		}
		return nil
	}
}

func TestAPIServiceLifecycle(t *testing.T) {
	c := startAPICluster(t, "")
	ctx := context.Background()
	svcs := c.client.CoreV1().Services(c.ns)
	slices := c.client.DiscoveryV1().EndpointSlices(c.ns)

	// The agent follows its own Node object.
	for _, n := range []struct {
		name string
		ip   netip.Addr
	}{{"node1", c.Node1IP}, {"node2", c.Node2IP}} {
		node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name},
			Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: n.ip.String()}}}}
		if _, err := c.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.client.CoreV1().Nodes().Delete(context.Background(), node.Name, metav1.DeleteOptions{}) })
	}

	svc, err := svcs.Create(ctx, c.service("web", v1.ServicePort{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(80)}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(svc.Spec.Ports[0].NodePort)
	// No endpoints yet: refused at once (RST from the datapath).
	c.within(t, 3*time.Second, "service without endpoints refused", c.refused(port))

	sl, err := slices.Create(ctx, c.slice("web", endpoint(c.Pod1IP, "node1"), endpoint(c.Pod2IP, "node2")), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := c.within(t, time.Second, "endpoints added", c.answeredBy(port, 30, "pod1", "pod2"))
	t.Logf("endpoints added: serving after %v", d)
	c.checkPinned(t, port, 2)

	// From here on, a client keeps sending; no request may fail while its backend lives.
	var failures, total atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, _, err := c.request("tcp", port); err != nil {
				failures.Add(1)
				t.Logf("request failed: %v", err)
			}
			total.Add(1)
		}
	}()

	sl.Endpoints = sl.Endpoints[:1]
	if sl, err = slices.Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	d = c.within(t, time.Second, "scaled down to pod1", c.answeredBy(port, 20, "pod1"))
	t.Logf("scale down: applied after %v", d)
	sl.Endpoints = append(sl.Endpoints, endpoint(c.Pod2IP, "node2"))
	if _, err = slices.Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	d = c.within(t, time.Second, "scaled up again", c.answeredBy(port, 30, "pod1", "pod2"))
	t.Logf("scale up: applied after %v", d)
	close(stop)
	<-done
	if f := failures.Load(); f != 0 {
		t.Errorf("%d of %d requests failed while endpoints changed", f, total.Load())
	}
	t.Logf("%d requests during scale down and up, %d failed", total.Load(), failures.Load())

	// A new nodePort: served on the new one, refused on the old one.
	svc, err = svcs.Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old := port
	for p := int32(30000 + time.Now().UnixNano()%2000); ; p++ {
		svc.Spec.Ports[0].NodePort = p
		if svc, err = svcs.Update(ctx, svc, metav1.UpdateOptions{}); err == nil {
			break
		}
		if svc, err = svcs.Get(ctx, "web", metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	port = uint16(svc.Spec.Ports[0].NodePort)
	c.within(t, time.Second, "new nodePort served", c.answeredBy(port, 10, "pod1", "pod2"))
	c.within(t, time.Second, "old nodePort released", c.refused(old))

	// ClusterIP: no NodePort any more.
	svc.Spec.Type = v1.ServiceTypeClusterIP
	svc.Spec.Ports[0].NodePort = 0
	if svc, err = svcs.Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.within(t, time.Second, "type ClusterIP: NodePort gone", c.refused(port))

	// Back to NodePort, then deleted.
	svc.Spec.Type = v1.ServiceTypeNodePort
	if svc, err = svcs.Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	port = uint16(svc.Spec.Ports[0].NodePort)
	c.within(t, time.Second, "type NodePort again", c.answeredBy(port, 10, "pod1", "pod2"))
	c.checkMetrics(t)
	if err := svcs.Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.within(t, time.Second, "service deleted", c.refused(port))
	c.checkPinned(t, port, -1)
}

// checkPinned reads the agent's pinned maps: the frontend on node1 for port and its backend
// count (-1: no frontend).
func (c *apiCluster) checkPinned(t *testing.T, port uint16, count int) {
	t.Helper()
	objs, err := datapath.OpenPinned(c.PinDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	fe, ok := maps.NewKernel(objs).LookupFrontend(lb.FrontendKey{Addr: c.Node1IP, Port: port, Proto: lb.TCP})
	switch {
	case count < 0 && ok:
		t.Errorf("frontend for %d still pinned: %+v", port, fe)
	case count >= 0 && (!ok || int(fe.Count) != count):
		t.Errorf("frontend for %d: %+v (%v), want %d backends", port, fe, ok, count)
	}
}

// checkMetrics reads the agent's endpoints on node1's loopback.
func (c *apiCluster) checkMetrics(t *testing.T) {
	t.Helper()
	agent := netip.MustParseAddrPort("127.0.0.1:9871")
	for _, p := range []string{"/healthz", "/readyz"} {
		if status, body, err := lab.HTTPGetPath(c.Node1, agent, p); err != nil || status != 200 {
			t.Errorf("%s: %d %q %v", p, status, body, err)
		}
	}
	status, body, err := lab.HTTPGetPath(c.Node1, agent, "/metrics")
	if err != nil || status != 200 {
		t.Fatalf("/metrics: %d %v", status, err)
	}
	for _, want := range []string{
		"sluice_sync_duration_seconds_count",
		"sluice_network_programming_duration_seconds_count",
		"sluice_services_programmed 1",
		`sluice_service_packets_total{family="IPv4",scope="external",service="` + c.ns + `/web:http"}`,
		`sluice_datapath_packets_total{reason="reject_tcp_rst"}`,
		`sluice_map_max_entries{map="sluice_ct"} 524288`,
		`sluice_services_failed{reason="map_full"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// The install manifests are valid for the API server (server-side dry run).
func TestManifestsDryRun(t *testing.T) {
	cp := sharedControlPlane(t)
	dyn, err := dynamic.NewForConfig(cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	client, err := cp.Client()
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(client.Discovery()))
	files, _ := filepath.Glob(filepath.Join("..", "..", "manifests", "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no manifests")
	}
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
		for {
			var obj unstructured.Unstructured
			if err := dec.Decode(&obj.Object); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				t.Fatalf("%s: %v", f, err)
			}
			if len(obj.Object) == 0 {
				continue
			}
			gvk := obj.GroupVersionKind()
			m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				t.Fatalf("%s: %s: %v", f, gvk, err)
			}
			var r dynamic.ResourceInterface = dyn.Resource(m.Resource)
			if m.Scope.Name() == meta.RESTScopeNameNamespace {
				r = dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
			}
			if _, err := r.Create(context.Background(), &obj, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
				t.Errorf("%s: %s %s: %v", f, gvk.Kind, obj.GetName(), err)
			}
			n++
		}
	}
	if n < 4 {
		t.Errorf("dry-ran %d objects, want the DaemonSet, ServiceAccount, ClusterRole and binding", n)
	}
}
