package proxy

import (
	"context"
	"errors"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/reconciler"
)

func drained(t *Tracker) bool {
	select {
	case <-t.Changed():
		return true
	default:
		return false
	}
}

func TestTrackerDropsNoOpUpdates(t *testing.T) {
	tr := NewTracker()
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"}, Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort}}
	tr.OnServiceAdd(svc)
	if !drained(tr) {
		t.Fatal("add did not signal")
	}
	// Same spec, new resourceVersion, other status conditions and annotations: nothing to
	// program.
	same := svc.DeepCopy()
	same.ResourceVersion = "2"
	same.Annotations = map[string]string{"example.com/owner": "team-a"}
	same.Status.Conditions = []metav1.Condition{{Type: "Example", Status: metav1.ConditionTrue}}
	tr.OnServiceUpdate(svc, same)
	if drained(tr) {
		t.Error("a metadata-only update signalled a sync")
	}
	// Load-balancer IPs live in the status; the algorithm in an annotation.
	for _, mod := range []func(*v1.Service){
		func(s *v1.Service) { s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "1.2.3.4"}} },
		func(s *v1.Service) { s.Annotations["service.sluice.io/lb-algorithm"] = "maglev" },
	} {
		next := same.DeepCopy()
		mod(next)
		tr.OnServiceUpdate(same, next)
		if !drained(tr) {
			t.Error("a load-balancer IP or algorithm change did not signal")
		}
		same = next
	}
	changed := same.DeepCopy()
	changed.Spec.Ports = []v1.ServicePort{{NodePort: 30080}}
	tr.OnServiceUpdate(same, changed)
	if !drained(tr) {
		t.Error("a spec change did not signal")
	}
	if got := tr.ServiceNames(); len(got) != 1 {
		t.Errorf("services %v", got)
	}
	tr.OnServiceDelete(changed)
	if !drained(tr) || len(tr.ServiceNames()) != 0 {
		t.Error("delete")
	}
}

func TestSyncerWaitsForTheFirstFullSet(t *testing.T) {
	f := maps.NewFake()
	tr := NewTracker()
	s := &Syncer{
		Tracker: tr, Reconciler: reconciler.New(f, 100, 100, zap.NewNop()), Options: desired.Options{NodeName: "node1", NodePortRange: desired.PortRange{Min: 30000, Max: 32767}}, Log: zap.NewNop(),
		Addresses: func() ([]netip.Addr, error) { return []netip.Addr{netip.MustParseAddr("10.89.0.11")}, nil },
	}
	tr.OnServiceAdd(&v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort, Ports: []v1.ServicePort{{Protocol: v1.ProtocolTCP, NodePort: 30080}}}})
	tr.OnEndpointSliceAdd(&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-1",
		Labels: map[string]string{discoveryv1.LabelServiceName: "web"}}, AddressType: discoveryv1.AddressTypeIPv4})
	if err := s.Sync(); err != nil || len(f.Writes) != 0 {
		t.Fatalf("synced before the source's first full set: %v %q", err, f.Writes)
	}
	tr.OnSynced()
	if err := s.Sync(); err != nil || len(f.FrontendMap) != 1 {
		t.Fatalf("after synced: %v %v", err, f.FrontendMap)
	}
}

// runnerHarness drives a Runner on a fake clock, with no sleeps: step moves time and, if
// that fired the timer, waits until the loop has handled it; the fake clock's only waiter is
// the runner's timer, so "no waiter right after Step" means it fired.
type runnerHarness struct {
	t       *testing.T
	clk     *clocktesting.FakeClock
	trigger chan struct{}
	idle    chan struct{}
	syncs   atomic.Int32
	results chan error // what each sync returns (nil when empty)
}

func startRunner(t *testing.T, min, max time.Duration) *runnerHarness {
	h := &runnerHarness{t: t, clk: clocktesting.NewFakeClock(time.Unix(1000, 0)), trigger: make(chan struct{}),
		idle: make(chan struct{}), results: make(chan error, 100)}
	r := &Runner{MinInterval: min, MaxInterval: max, Clock: h.clk, idle: func() { h.idle <- struct{}{} },
		Sync: func() error {
			h.syncs.Add(1)
			select {
			case err := <-h.results:
				return err
			default:
				return nil
			}
		}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go r.Run(ctx, h.trigger)
	for !h.clk.HasWaiters() { // the timer exists
		runtime.Gosched()
	}
	return h
}

func (h *runnerHarness) step(d time.Duration) {
	h.clk.Step(d)
	if !h.clk.HasWaiters() {
		<-h.idle
	}
}

func (h *runnerHarness) poke() {
	h.trigger <- struct{}{}
	<-h.idle
}

func (h *runnerHarness) want(n int32, what string) {
	h.t.Helper()
	if got := h.syncs.Load(); got != n {
		h.t.Fatalf("%s: %d syncs, want %d", what, got, n)
	}
}

func TestRunnerCoalescesAndRetries(t *testing.T) {
	h := startRunner(t, 50*time.Millisecond, time.Hour)
	h.results <- errors.New("transient")
	h.step(0)
	h.want(1, "at start")
	// The failure is retried after the first backoff (MinInterval), not before.
	h.step(49 * time.Millisecond)
	h.want(1, "before the backoff")
	h.step(time.Millisecond)
	h.want(2, "after the backoff")
	// A burst of changes within MinInterval is one sync, MinInterval after the last sync.
	for i := 0; i < 20; i++ {
		h.poke()
	}
	h.step(49 * time.Millisecond)
	h.want(2, "within MinInterval of the last sync")
	h.step(time.Millisecond)
	h.want(3, "a burst")
	// Nothing changes: the periodic sync comes after MaxInterval.
	h.step(time.Hour - time.Millisecond)
	h.want(3, "before MaxInterval")
	h.step(time.Millisecond)
	h.want(4, "after MaxInterval")
}

// While failures back off, a new change is still synced at the minimum interval.
func TestRunnerSyncsChangesDuringBackoff(t *testing.T) {
	h := startRunner(t, 10*time.Millisecond, time.Hour)
	for i := 0; i < 20; i++ {
		h.results <- errors.New("failing")
	}
	h.step(0)
	// Backoffs 10, 20, 40, 80, 160 ms: five more failures.
	for _, d := range []time.Duration{10, 20, 40, 80, 160} {
		h.step(d * time.Millisecond)
	}
	h.want(6, "after five backoffs")
	h.poke() // the next retry is 320 ms away
	h.step(10 * time.Millisecond)
	h.want(7, "a change during backoff")
}

// The device manager finds the node's devices by its Node's InternalIP and ExternalIP (not its
// hostname or other addresses), and a Node change pokes the sync loop, which re-detects.
func TestTrackerNodeAddresses(t *testing.T) {
	tr := NewTracker()
	if got := tr.NodeAddresses("node1"); got != nil {
		t.Errorf("before the Node arrives: %v", got)
	}
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"}, Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
		{Type: v1.NodeHostName, Address: "node1"},
		{Type: v1.NodeInternalIP, Address: "10.89.0.11"},
		{Type: v1.NodeExternalIP, Address: "203.0.113.5"},
		{Type: v1.NodeInternalDNS, Address: "node1.example"},
		{Type: v1.NodeInternalIP, Address: "not-an-ip"},
	}}}
	tr.OnNodeAdd(node)
	select {
	case <-tr.Changed():
	default:
		t.Error("a Node change did not signal")
	}
	want := []netip.Addr{netip.MustParseAddr("10.89.0.11"), netip.MustParseAddr("203.0.113.5")}
	if got := tr.NodeAddresses("node1"); len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("NodeAddresses = %v, want %v", got, want)
	}
	if got := tr.NodeAddresses("node2"); got != nil {
		t.Errorf("another node's: %v", got)
	}
	tr.Poke()
	select {
	case <-tr.Changed():
	default:
		t.Error("Poke did not signal")
	}
}

// Programming latency is measured from changes made while the agent runs: a slice's trigger
// time from before the tracker started (every slice of the initial list carries one) is not a
// latency of ours, as kube-proxy also skips them.
func TestTrackerSkipsTriggerTimesBeforeItsStart(t *testing.T) {
	start := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	now := start
	tr := NewTrackerWithClock(func() time.Time { return now })
	slice := func(name, addr string) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: "web"}}, AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{addr}}}}
	}
	old := slice("old", "10.244.1.10")
	old.Annotations = map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": start.Add(-time.Hour).Format(time.RFC3339Nano)}
	tr.OnEndpointSliceAdd(old)
	now = start.Add(2 * time.Second)
	fresh := slice("fresh", "10.244.1.11")
	fresh.Annotations = map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": start.Add(time.Second).Format(time.RFC3339Nano)}
	tr.OnEndpointSliceAdd(fresh)
	tr.OnSynced()
	got := tr.TakeChanges().Triggers
	if len(got) != 1 || !got[0].Equal(start.Add(time.Second)) {
		t.Errorf("triggers %v, want only the fresh slice's (%v)", got, start.Add(time.Second))
	}
}

// The node's zone label decides which zone-hinted endpoints serve; a label that changes
// re-programs every service.
func TestSyncerFollowsTheNodesZone(t *testing.T) {
	f := maps.NewFake()
	tr := NewTracker()
	s := &Syncer{
		Tracker: tr, Reconciler: reconciler.New(f, 100, 100, zap.NewNop()), Options: desired.Options{NodeName: "node1", NodePortRange: desired.PortRange{Min: 30000, Max: 32767}}, Log: zap.NewNop(),
		Addresses: func() ([]netip.Addr, error) { return []netip.Addr{netip.MustParseAddr("10.89.0.11")}, nil },
		NodeZone:  func() string { return tr.NodeZone("node1") },
	}
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1", Labels: map[string]string{v1.LabelTopologyZone: "a"}}}
	tr.OnNodeAdd(node)
	tr.OnServiceAdd(&v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort, Ports: []v1.ServicePort{{Protocol: v1.ProtocolTCP, NodePort: 30080}}}})
	hinted := func(addr, zone string) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{addr}, Hints: &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: zone}}}}
	}
	tcp, name, port := v1.ProtocolTCP, "", int32(80)
	tr.OnEndpointSliceAdd(&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-1",
		Labels: map[string]string{discoveryv1.LabelServiceName: "web"}}, AddressType: discoveryv1.AddressTypeIPv4,
		Ports:     []discoveryv1.EndpointPort{{Name: &name, Protocol: &tcp, Port: &port}},
		Endpoints: []discoveryv1.Endpoint{hinted("10.244.1.10", "a"), hinted("10.244.2.10", "b")}})
	tr.OnSynced()
	backends := func() []string {
		var out []string
		for _, b := range f.BackendMap {
			out = append(out, b.Addr.String())
		}
		return out
	}
	if err := s.Sync(); err != nil || len(f.SlotMap) != 1 || backends()[0] != "10.244.1.10" {
		t.Fatalf("zone a: %v, slots %v, backends %v", err, f.SlotMap, backends())
	}
	relabelled := node.DeepCopy()
	relabelled.Labels[v1.LabelTopologyZone] = "b"
	tr.OnNodeUpdate(node, relabelled)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	var slotted []string
	for _, id := range f.SlotMap {
		slotted = append(slotted, f.BackendMap[id].Addr.String())
	}
	if len(slotted) != 1 || slotted[0] != "10.244.2.10" {
		t.Errorf("zone b: slots hold %v", slotted)
	}
}

// The node health server is told of each change to program once the first complete set is in
// (a change queued), and of each sync that programmed them, not of one that failed.
func TestNodeHealthIsToldOfQueuedChangesAndSyncs(t *testing.T) {
	f := maps.NewFake()
	tr := NewTracker()
	var queued, updated int
	tr.Queued = func() { queued++ }
	addrErr := error(nil)
	s := &Syncer{
		Tracker: tr, Reconciler: reconciler.New(f, 100, 100, zap.NewNop()), Options: desired.Options{NodeName: "node1", NodePortRange: desired.PortRange{Min: 30000, Max: 32767}}, Log: zap.NewNop(),
		Addresses: func() ([]netip.Addr, error) { return []netip.Addr{netip.MustParseAddr("10.89.0.11")}, addrErr },
		Updated:   func() { updated++ },
	}
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort, Ports: []v1.ServicePort{{Protocol: v1.ProtocolTCP, NodePort: 30080}}}}
	tr.OnServiceAdd(svc)
	tr.OnNodeAdd(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"}})
	if err := s.Sync(); err != nil || queued != 0 || updated != 0 {
		t.Fatalf("before the first full set: %v, queued %d, updated %d; want neither", err, queued, updated)
	}
	tr.OnSynced()
	if err := s.Sync(); err != nil || queued != 0 || updated != 1 {
		t.Fatalf("first sync: %v, queued %d, updated %d", err, queued, updated)
	}

	// A metadata-only update is nothing to program.
	same := svc.DeepCopy()
	same.ResourceVersion = "2"
	tr.OnServiceUpdate(svc, same)
	if queued != 0 {
		t.Errorf("a no-op update queued a change")
	}
	changed := same.DeepCopy()
	changed.Spec.Ports[0].NodePort = 30081
	tr.OnServiceUpdate(same, changed)
	tr.Poke()
	if queued != 2 {
		t.Errorf("queued %d, want 2 (a service change, a device change)", queued)
	}
	addrErr = errors.New("netlink: no such device")
	if err := s.Sync(); err == nil || updated != 1 {
		t.Errorf("failed sync: %v, updated %d; want an error and no update", err, updated)
	}
	addrErr = nil
	if err := s.Sync(); err != nil || updated != 2 {
		t.Errorf("sync: %v, updated %d", err, updated)
	}
	if n := tr.Node("node1"); n == nil || n.Name != "node1" || tr.Node("node2") != nil {
		t.Errorf("Node: %v", n)
	}
}
