// Package desired translates Kubernetes objects into the datapath state sluice wants on this
// node: a pure function, table-tested, with no knowledge of maps or kernels.
package desired

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluicelb/sluice/internal/maps"
)

const (
	// LabelServiceProxyName marks a service handled by another proxy (kube-proxy ignores it).
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// LabelHeadless marks the EndpointSlices of headless services.
	LabelHeadless = "service.kubernetes.io/headless"
)

// ServiceKey identifies one service port on the datapath: NodePorts are unique per protocol
// in a cluster, so the key survives agent restarts (it is what the frontends map holds).
type ServiceKey struct {
	NodePort uint16
	Proto    maps.Proto
}

func (k ServiceKey) String() string { return fmt.Sprintf("%d/%s", k.NodePort, k.Proto) }

// Service is one NodePort service port and the backends it balances over.
type Service struct {
	Key ServiceKey
	// Name is "namespace/name:port" for logs, as kube-proxy's ServicePortName.
	Name     string
	Backends []maps.Backend // sorted by address and port, no duplicates
}

// State is everything the datapath should hold.
type State struct {
	// Addresses are the node addresses every NodePort is served on.
	Addresses []netip.Addr
	Services  map[ServiceKey]*Service
}

// Input is what Build works from.
type Input struct {
	NodeName      string
	Addresses     []netip.Addr
	NodePortRange PortRange
	Services      map[types.NamespacedName]*v1.Service
	Slices        map[types.NamespacedName]*discoveryv1.EndpointSlice
}

// PortRange is an inclusive port range.
type PortRange struct{ Min, Max uint16 }

// ParsePortRange parses "30000-32767".
func ParsePortRange(s string) (PortRange, error) {
	var r PortRange
	if _, err := fmt.Sscanf(s, "%d-%d", &r.Min, &r.Max); err != nil || r.Min == 0 || r.Min > r.Max {
		return r, fmt.Errorf("parse port range %q: want MIN-MAX with 0 < MIN <= MAX <= 65535", s)
	}
	return r, nil
}

func (r PortRange) Contains(p uint16) bool { return p >= r.Min && p <= r.Max }

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Min, r.Max) }

// Problem is an object (or part of one) that could not be used; the rest of the state is
// built without it.
type Problem struct {
	Object string // "Service default/web" or "EndpointSlice default/web-abc"
	Err    error
}

func (p Problem) Error() string { return p.Object + ": " + p.Err.Error() }

// Build computes the desired state from scratch. It never fails as a whole: objects it cannot
// use are returned as problems and left out. (The agent keeps an Index and updates it per
// changed service; Build is the same computation over everything.)
func Build(in Input) (State, []Problem) {
	bySvc := map[types.NamespacedName][]*discoveryv1.EndpointSlice{}
	for _, sl := range in.Slices {
		if key, ok := SliceService(sl); ok {
			bySvc[key] = append(bySvc[key], sl)
		}
	}
	x := NewIndex(in.NodeName, in.NodePortRange)
	var problems []Problem
	for n, svc := range in.Services {
		_, p := x.Set(n, svc, bySvc[n])
		problems = append(problems, p...)
	}
	problems = append(problems, x.Conflicts()...)
	sort.SliceStable(problems, func(i, j int) bool { return problems[i].Object < problems[j].Object })
	addrs := slices.Clone(in.Addresses)
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	st := State{Addresses: addrs, Services: make(map[ServiceKey]*Service, len(x.Services))}
	for k, v := range x.Services {
		st.Services[k] = v
	}
	return st, problems
}

// SliceService names the service a slice belongs to, or false for a slice sluice does not use
// (no service label, a headless service's, not IPv4).
func SliceService(sl *discoveryv1.EndpointSlice) (types.NamespacedName, bool) {
	name := sl.Labels[discoveryv1.LabelServiceName]
	if name == "" || sl.Labels[LabelHeadless] != "" || sl.AddressType != discoveryv1.AddressTypeIPv4 {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: sl.Namespace, Name: name}, true
}

// ServicePorts computes one service's NodePort service ports from its slices, before any
// conflict with other services is resolved.
func ServicePorts(n types.NamespacedName, svc *v1.Service, svcSlices []*discoveryv1.EndpointSlice, nodeName string, r PortRange) ([]*Service, []Problem) {
	if svc == nil || !wantService(svc) {
		return nil, nil
	}
	var out []*Service
	var problems []Problem
	obj := "Service " + n.String()
	for _, sp := range svc.Spec.Ports {
		if sp.NodePort == 0 {
			continue
		}
		proto, err := protoOf(sp.Protocol)
		if err != nil {
			problems = append(problems, Problem{obj, fmt.Errorf("port %q: %w", sp.Name, err)})
			continue
		}
		if sp.NodePort < 0 || sp.NodePort > 65535 || !r.Contains(uint16(sp.NodePort)) {
			problems = append(problems, Problem{obj, fmt.Errorf("port %q: nodePort %d outside the NodePort range %s", sp.Name, sp.NodePort, r)})
			continue
		}
		out = append(out, &Service{
			Key:      ServiceKey{NodePort: uint16(sp.NodePort), Proto: proto},
			Name:     fmt.Sprintf("%s:%s", n, sp.Name),
			Backends: backends(svcSlices, sp, proto, nodeName),
		})
	}
	return out, problems
}

// wantService reports whether sluice serves svc's NodePorts, as kube-proxy decides.
func wantService(svc *v1.Service) bool {
	if svc.Labels[LabelServiceProxyName] != "" {
		return false
	}
	switch svc.Spec.Type {
	case v1.ServiceTypeNodePort, v1.ServiceTypeLoadBalancer:
	default:
		return false
	}
	return svc.Spec.ClusterIP != v1.ClusterIPNone
}

func protoOf(p v1.Protocol) (maps.Proto, error) {
	switch p {
	case v1.ProtocolTCP, "":
		return maps.TCP, nil
	case v1.ProtocolUDP:
		return maps.UDP, nil
	}
	return 0, fmt.Errorf("protocol %q is not supported (TCP and UDP are)", p)
}

// backends are the endpoints of sp across all slices: the ready ones, or, when none is
// ready, the serving-but-terminating ones (kube-proxy's fallback, so that a rolling update
// does not refuse connections while old pods still serve).
func backends(svcSlices []*discoveryv1.EndpointSlice, sp v1.ServicePort, proto maps.Proto, nodeName string) []maps.Backend {
	var ready, terminating []maps.Backend
	for _, sl := range svcSlices {
		port, ok := slicePort(sl, sp.Name, proto)
		if !ok {
			continue
		}
		for _, ep := range sl.Endpoints {
			if len(ep.Addresses) == 0 {
				continue
			}
			addr, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil || !addr.Is4() {
				continue
			}
			b := maps.Backend{Addr: addr, Port: port, Local: nodeName != "" && ep.NodeName != nil && *ep.NodeName == nodeName}
			c := ep.Conditions
			isReady := c.Ready == nil || *c.Ready
			isServing := isReady
			if c.Serving != nil {
				isServing = *c.Serving
			}
			isTerminating := c.Terminating != nil && *c.Terminating
			switch {
			case isReady && !isTerminating:
				ready = append(ready, b)
			case isServing && isTerminating:
				b.Terminating = true
				terminating = append(terminating, b)
			}
		}
	}
	out := ready
	if len(out) == 0 {
		out = terminating
	}
	slices.SortFunc(out, compareBackends)
	return slices.CompactFunc(out, func(a, b maps.Backend) bool { return compareBackends(a, b) == 0 })
}

func compareBackends(a, b maps.Backend) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}

// slicePort finds the slice's port for the service port named name, as kube-proxy matches
// them: by name (both empty for a single unnamed port) and protocol.
func slicePort(sl *discoveryv1.EndpointSlice, name string, proto maps.Proto) (uint16, bool) {
	for _, p := range sl.Ports {
		pname := ""
		if p.Name != nil {
			pname = *p.Name
		}
		pproto := v1.ProtocolTCP
		if p.Protocol != nil {
			pproto = *p.Protocol
		}
		if pname != name || p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
			continue
		}
		if got, err := protoOf(pproto); err != nil || got != proto {
			continue
		}
		return uint16(*p.Port), true
	}
	return 0, false
}

// Equal reports whether two services program the datapath identically.
func (s *Service) Equal(o *Service) bool {
	return s.Key == o.Key && slices.Equal(s.Backends, o.Backends)
}

// Describe is a one-line summary for logs.
func (s *Service) Describe() string {
	b := make([]string, len(s.Backends))
	for i, be := range s.Backends {
		b[i] = be.String()
	}
	return fmt.Sprintf("%s (%s) -> [%s]", s.Name, s.Key, strings.Join(b, ", "))
}
