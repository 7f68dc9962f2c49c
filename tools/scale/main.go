// Command scale measures the control plane at scale through a real kube-apiserver: the time
// from the agent's start to N NodePort services (each with M endpoints) programmed, the latency
// from an EndpointSlice update (the API write returning) to the datapath's maps holding it,
// and the agent's memory. Run as root (`make bench` runs it); prints a JSON report.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/tools/controlplane"
	"github.com/sluicelb/sluice/tools/lab"
)

// Report is the JSON the command prints.
type Report struct {
	Services          int     `json:"services"`
	EndpointsPerSvc   int     `json:"endpointsPerService"`
	CreateSeconds     float64 `json:"apiCreateSeconds"`
	ColdStartSeconds  float64 `json:"coldStartToAllProgrammedSeconds"`
	Updates           int     `json:"updates"`
	UpdateP50Millis   float64 `json:"sliceUpdateToMapP50Millis"`
	UpdateP99Millis   float64 `json:"sliceUpdateToMapP99Millis"`
	UpdateMaxMillis   float64 `json:"sliceUpdateToMapMaxMillis"`
	AgentRSSMegabytes float64 `json:"agentRSSMegabytes"`
}

func main() {
	n := flag.Int("services", 10000, "NodePort services")
	m := flag.Int("endpoints", 10, "endpoints per service")
	updates := flag.Int("updates", 200, "EndpointSlice updates to time")
	agentBin := flag.String("agent", "bin/sluice-agent", "sluice-agent binary")
	flag.StringVar(&agentLog, "agent-log", "", "write the agent's log here")
	flag.Parse()
	rep, err := run(*n, *m, *updates, *agentBin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(rep)
}

const firstPort = 20000

var agentLog string

func run(n, m, updates int, agentBin string) (*Report, error) {
	rep := &Report{Services: n, EndpointsPerSvc: m, Updates: updates}
	portRange := fmt.Sprintf("%d-%d", firstPort, firstPort+n+100)
	cp, err := controlplane.StartWith(controlplane.Options{NodePortRange: portRange})
	if err != nil {
		return nil, err
	}
	defer cp.Stop()
	client, err := cp.Client()
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	const ns = "scale"
	if _, err := client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "creating %d services with %d endpoints each\n", n, m)
	start := time.Now()
	if err := parallel(n, 16, func(i int) error { return create(ctx, client, ns, i, m) }); err != nil {
		return nil, err
	}
	rep.CreateSeconds = time.Since(start).Seconds()

	l, err := lab.Up()
	if err != nil {
		return nil, err
	}
	defer l.Down()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var ln net.Listener
	if err := l.Node1.Do(func() error { ln, err = net.Listen("tcp", "127.0.0.1:6443"); return err }); err != nil {
		return nil, err
	}
	go cp.Relay(rctx, ln)
	kubeconfig := filepath.Join(cp.Dir, "agent.kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(cp.KubeconfigFor("https://127.0.0.1:6443")), 0o600); err != nil {
		return nil, err
	}
	fmt.Fprintln(os.Stderr, "starting the agent")
	start = time.Now()
	a, err := l.StartAgent(lab.AgentOptions{Binary: agentBin, Extra: []string{
		"--kubeconfig", kubeconfig, "--nodeport-range", portRange, "--min-sync-interval", "10ms",
		"--kube-api-qps", "1000", "--kube-api-burst", "2000", "--log-level", "debug"}})
	if err != nil {
		return nil, err
	}
	defer func() {
		a.Stop()
		if agentLog != "" {
			_ = os.WriteFile(agentLog, []byte(a.Logs()), 0o644)
		}
	}()
	objs, err := waitPins(l.PinDir(), a)
	if err != nil {
		return nil, err
	}
	defer objs.Close()
	k := maps.NewKernel(objs)
	for {
		fes, err := k.Frontends()
		if err == nil && len(fes) >= n {
			break
		}
		if a.Exited() || time.Since(start) > 5*time.Minute {
			return nil, fmt.Errorf("services not programmed (%d of %d): %s", len(fes), n, tail(a.Logs()))
		}
		time.Sleep(5 * time.Millisecond)
	}
	rep.ColdStartSeconds = time.Since(start).Seconds()

	fmt.Fprintf(os.Stderr, "timing %d EndpointSlice updates\n", updates)
	var lat []time.Duration
	for u := 0; u < updates; u++ {
		i := rand.Intn(n)
		addr := netip.AddrFrom4([4]byte{10, 250, byte(u >> 8), byte(u)})
		sl, err := client.DiscoveryV1().EndpointSlices(ns).Get(ctx, fmt.Sprintf("svc-%d-1", i), metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		sl.Endpoints[0].Addresses = []string{addr.String()}
		if _, err := client.DiscoveryV1().EndpointSlices(ns).Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
			return nil, err
		}
		t0 := time.Now()
		for !hasBackend(k, l.Node1IP, uint16(firstPort+i), addr) {
			if time.Since(t0) > 10*time.Second {
				return nil, fmt.Errorf("update %d not programmed in 10 s", u)
			}
			time.Sleep(200 * time.Microsecond)
		}
		lat = append(lat, time.Since(t0))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	rep.UpdateP50Millis, rep.UpdateP99Millis = ms(lat[len(lat)/2]), ms(lat[len(lat)*99/100])
	rep.UpdateMaxMillis = ms(lat[len(lat)-1])
	rep.AgentRSSMegabytes = rss(a.PID())
	return rep, nil
}

func create(ctx context.Context, c kubernetes.Interface, ns string, i, m int) error {
	name := fmt.Sprintf("svc-%d", i)
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: v1.ServiceSpec{
		Type: v1.ServiceTypeNodePort, Selector: map[string]string{"app": name},
		Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080), NodePort: int32(firstPort + i)}},
	}}
	if _, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service %s: %w", name, err)
	}
	pname, proto, port := "http", v1.ProtocolTCP, int32(8080)
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Protocol: &proto, Port: &port}},
	}
	ready := true
	node := "node2"
	for e := 0; e < m; e++ {
		addr := netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)}).String()
		if e > 0 {
			addr = netip.AddrFrom4([4]byte{10, byte(200 + e), byte(i >> 8), byte(i)}).String()
		}
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{addr}, NodeName: &node, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	if _, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, sl, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create slice %s: %w", name, err)
	}
	return nil
}

func parallel(n, workers int, fn func(i int) error) error {
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	next := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

func waitPins(dir string, a *lab.Agent) (*datapath.SluiceMaps, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		objs, err := datapath.OpenPinned(dir, true)
		if err == nil {
			return objs, nil
		}
		if a.Exited() || time.Now().After(deadline) {
			return nil, fmt.Errorf("agent pins: %w: %s", err, tail(a.Logs()))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// hasBackend reports whether the service on port holds addr among its backends.
func hasBackend(k *maps.Kernel, node netip.Addr, port uint16, addr netip.Addr) bool {
	fe, ok := k.LookupFrontend(lb.FrontendKey{Addr: node, Port: port, Proto: lb.TCP})
	if !ok {
		return false
	}
	for s := uint32(1); s <= uint32(fe.Count); s++ {
		if b, ok := k.LookupSlotBackend(maps.SlotKey{ServiceID: fe.ServiceID, Slot: s}); ok && b.Addr == addr {
			return true
		}
	}
	return false
}

func rss(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

func tail(s string) string {
	if len(s) > 3000 {
		return s[len(s)-3000:]
	}
	return s
}
