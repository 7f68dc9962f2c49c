// Package proxy turns object events into datapath syncs, as kube-proxy's config and change
// trackers do: the Tracker holds the current Services, EndpointSlices and Nodes (it is the
// sources' Handler) and signals changes; the Syncer builds the desired state from a snapshot
// and hands it to the reconciler; the Runner drives the Syncer at a bounded rate.
package proxy

import (
	"net/netip"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluicelb/sluice/internal/desired"
)

// Tracker implements source.Handler.
type Tracker struct {
	mu       sync.Mutex
	services map[types.NamespacedName]*v1.Service
	slices   map[types.NamespacedName]*discoveryv1.EndpointSlice
	nodes    map[string]*v1.Node
	synced   bool
	changed  chan struct{}
	// bySvc indexes slices by the service they belong to; dirty are the services changed
	// since the last TakeChanges.
	bySvc map[types.NamespacedName]map[types.NamespacedName]*discoveryv1.EndpointSlice
	dirty map[types.NamespacedName]bool
	// triggers are when the changes not yet synced happened, for the network programming
	// latency metric.
	triggers []time.Time
	now      func() time.Time
	start    time.Time // when the tracker was made: older trigger times are not ours to measure

	// Queued, if set, is told of each change to program once the first complete set is in
	// (the node health server's QueuedUpdate: kube-proxy's proxier queues only once
	// initialized). Set it before the source runs; it is called with the tracker's lock held.
	Queued func()
}

// triggerTimeAnnotation is set by the EndpointSlice controller to when the change that caused
// this version of the slice happened (what kube-proxy measures programming latency from).
const triggerTimeAnnotation = "endpoints.kubernetes.io/last-change-trigger-time"

func (t *Tracker) trigger(annotations map[string]string) {
	when := t.now()
	if v, ok := annotations[triggerTimeAnnotation]; ok {
		if parsed, err := time.Parse(time.RFC3339Nano, v); err == nil && parsed.Before(when) {
			// A change from before the agent started (each slice of the initial list has
			// one) measures the agent's absence, not its programming: kube-proxy skips them.
			if parsed.Before(t.start) {
				return
			}
			when = parsed
		}
	}
	if len(t.triggers) < 10000 {
		t.triggers = append(t.triggers, when)
	}
}

// NewTracker returns an empty tracker.
func NewTracker() *Tracker { return NewTrackerWithClock(time.Now) }

// NewTrackerWithClock returns an empty tracker that reads the time from now.
func NewTrackerWithClock(now func() time.Time) *Tracker {
	return &Tracker{
		now:      now,
		start:    now(),
		services: map[types.NamespacedName]*v1.Service{},
		slices:   map[types.NamespacedName]*discoveryv1.EndpointSlice{},
		nodes:    map[string]*v1.Node{},
		changed:  make(chan struct{}, 1),
		bySvc:    map[types.NamespacedName]map[types.NamespacedName]*discoveryv1.EndpointSlice{},
		dirty:    map[types.NamespacedName]bool{},
	}
}

// Changed fires (coalesced) after any change that may alter the desired state.
func (t *Tracker) Changed() <-chan struct{} { return t.changed }

// Poke asks for a sync without a change of objects: something else the desired state is built
// from (the node's devices or addresses) may have changed.
func (t *Tracker) Poke() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.queue()
}

// Node returns the Node named name, nil while the source has not delivered it (or it was
// deleted). Shared: the caller must not modify it.
func (t *Tracker) Node(name string) *v1.Node {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.nodes[name]
}

// NodeAddresses returns the InternalIP and ExternalIP addresses of the Node named name, if the
// source delivered it.
func (t *Tracker) NodeAddresses(name string) []netip.Addr {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[name]
	if n == nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != v1.NodeInternalIP && a.Type != v1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			out = append(out, ip)
		}
	}
	return out
}

// NodeZone returns the topology.kubernetes.io/zone label of the Node named name ("" while
// unknown or unlabelled).
func (t *Tracker) NodeZone(name string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := t.nodes[name]; n != nil {
		return n.Labels[v1.LabelTopologyZone]
	}
	return ""
}

// queue signals a change to program: t.mu is held.
func (t *Tracker) queue() {
	if t.synced && t.Queued != nil {
		t.Queued()
	}
	t.notify()
}

func (t *Tracker) notify() {
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

func key(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

func (t *Tracker) OnServiceAdd(svc *v1.Service) { t.OnServiceUpdate(nil, svc) }

func (t *Tracker) OnServiceUpdate(old, svc *v1.Service) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := key(svc.Namespace, svc.Name)
	// Metadata churn that does not change what we program is dropped here. The status holds
	// the load-balancer IPs; an annotation chooses the algorithm.
	if cur := t.services[k]; cur != nil && equality.Semantic.DeepEqual(cur.Spec, svc.Spec) && equality.Semantic.DeepEqual(cur.Labels, svc.Labels) &&
		equality.Semantic.DeepEqual(cur.Status.LoadBalancer, svc.Status.LoadBalancer) &&
		cur.Annotations[desired.AnnotationLBAlgorithm] == svc.Annotations[desired.AnnotationLBAlgorithm] {
		t.services[k] = svc
		return
	}
	t.services[k] = svc
	t.dirty[k] = true
	t.trigger(svc.Annotations)
	t.queue()
}

func (t *Tracker) OnServiceDelete(svc *v1.Service) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.services, key(svc.Namespace, svc.Name))
	t.dirty[key(svc.Namespace, svc.Name)] = true
	t.trigger(nil)
	t.queue()
}

func (t *Tracker) OnEndpointSliceAdd(sl *discoveryv1.EndpointSlice) { t.OnEndpointSliceUpdate(nil, sl) }

func (t *Tracker) OnEndpointSliceUpdate(old, sl *discoveryv1.EndpointSlice) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := key(sl.Namespace, sl.Name)
	if cur := t.slices[k]; cur != nil && equality.Semantic.DeepEqual(cur.Endpoints, sl.Endpoints) &&
		equality.Semantic.DeepEqual(cur.Ports, sl.Ports) && equality.Semantic.DeepEqual(cur.Labels, sl.Labels) &&
		cur.AddressType == sl.AddressType {
		t.slices[k] = sl
		return
	}
	t.index(k, sl)
	t.trigger(sl.Annotations)
	t.queue()
}

// index files slice k (nil: deleted) under its service, and marks the services it left and
// joined dirty.
func (t *Tracker) index(k types.NamespacedName, sl *discoveryv1.EndpointSlice) {
	if old := t.slices[k]; old != nil {
		if svc, ok := desired.SliceService(old); ok {
			delete(t.bySvc[svc], k)
			if len(t.bySvc[svc]) == 0 {
				delete(t.bySvc, svc)
			}
			t.dirty[svc] = true
		}
	}
	if sl == nil {
		delete(t.slices, k)
		return
	}
	t.slices[k] = sl
	if svc, ok := desired.SliceService(sl); ok {
		if t.bySvc[svc] == nil {
			t.bySvc[svc] = map[types.NamespacedName]*discoveryv1.EndpointSlice{}
		}
		t.bySvc[svc][k] = sl
		t.dirty[svc] = true
	}
}

func (t *Tracker) OnEndpointSliceDelete(sl *discoveryv1.EndpointSlice) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.index(key(sl.Namespace, sl.Name), nil)
	t.trigger(nil)
	t.queue()
}

func (t *Tracker) OnNodeAdd(n *v1.Node) { t.OnNodeUpdate(nil, n) }

func (t *Tracker) OnNodeUpdate(old, n *v1.Node) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.nodes[n.Name] = n
	t.queue()
}

func (t *Tracker) OnNodeDelete(n *v1.Node) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.nodes, n.Name)
	t.queue()
}

func (t *Tracker) OnSynced() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.synced = true
	t.notify()
}

// requeue puts back the change times of a sync that failed.
func (t *Tracker) requeue(triggers []time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.triggers = append(triggers, t.triggers...)
}

// Changes are what happened since the last TakeChanges.
type Changes struct {
	Synced   bool
	Dirty    []types.NamespacedName
	Triggers []time.Time
}

// TakeChanges returns and clears the services changed since the last call.
func (t *Tracker) TakeChanges() Changes {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := Changes{Synced: t.synced, Triggers: t.triggers}
	if !t.synced {
		return c // keep collecting until the first full set is in
	}
	for k := range t.dirty {
		c.Dirty = append(c.Dirty, k)
	}
	t.dirty = map[types.NamespacedName]bool{}
	t.triggers = nil
	return c
}

// Service returns a service (nil if there is none) and its slices.
func (t *Tracker) Service(k types.NamespacedName) (*v1.Service, []*discoveryv1.EndpointSlice) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var sls []*discoveryv1.EndpointSlice
	for _, sl := range t.bySvc[k] {
		sls = append(sls, sl)
	}
	return t.services[k], sls
}

// ServiceNames lists every service, and every name slices point at, for a full rebuild.
func (t *Tracker) ServiceNames() []types.NamespacedName {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]types.NamespacedName, 0, len(t.services))
	for k := range t.services {
		out = append(out, k)
	}
	return out
}
