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

	"github.com/sluicelb/sluice/internal/lb"
)

const (
	// LabelServiceProxyName marks a service handled by another proxy (kube-proxy ignores it).
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// LabelHeadless marks the EndpointSlices of headless services.
	LabelHeadless = "service.kubernetes.io/headless"
	// AnnotationLBAlgorithm chooses a service's backend selection: "random" or "maglev"
	// (default: the agent's --lb-algorithm).
	AnnotationLBAlgorithm = "service.sluice.io/lb-algorithm"
	// DefaultAffinityTimeout is sessionAffinityConfig.clientIP.timeoutSeconds' default.
	DefaultAffinityTimeout = 10800
)

// Options are the agent settings that shape the desired state.
type Options struct {
	NodeName string
	// NodeZone is the node's topology.kubernetes.io/zone label, for endpoints' zone hints.
	NodeZone      string
	NodePortRange PortRange
	// Maglev makes Maglev the default backend selection (--lb-algorithm maglev).
	Maglev bool
	// ClusterIPs: serve every service's ClusterIPs too (the internal scope), as kube-proxy
	// does; sluice then replaces it.
	ClusterIPs bool
	// NodeClients: clients on the node are served (socket-level load balancing, or the pods'
	// devices): they get the Cluster endpoints of NodePorts with externalTrafficPolicy Local
	// (the node scope).
	NodeClients bool
	// LocalhostNodePorts: with NodeClients, NodePorts are served on 127.0.0.1 (the socket
	// programs take all of 127.0.0.0/8 to it) to the node's own processes, as kube-proxy's
	// iptables mode does.
	LocalhostNodePorts bool
	// IPv6: the IPv6 side of services is served too (the node has IPv6 and the IPv6 datapath is
	// loaded). Without it, as kube-proxy's IPv4-only proxier, IPv6 is another proxy's to serve.
	IPv6 bool
}

// ServiceKey identifies one service port on the datapath: NodePorts are unique per protocol
// in a cluster, so the key survives agent restarts (the service info records it). A port
// without a NodePort (served on external or load-balancer IPs only) is keyed by its name.
type ServiceKey struct {
	NodePort uint16
	Proto    lb.Proto
	Name     string // "namespace/name:port", only when NodePort is 0
	// Scope: which of the port's frontends and endpoints. The internal scope (ClusterIPs) is
	// keyed by name: two services never share one.
	Scope Scope
	// Family: a dual-stack service port is one key per family (IPv4 is the zero value, so
	// keys from before IPv6 are unchanged).
	Family lb.Family
}

func (k ServiceKey) String() string {
	s := fmt.Sprintf("%d/%s", k.NodePort, k.Proto)
	if k.NodePort == 0 {
		s = fmt.Sprintf("%s/%s", k.Name, k.Proto)
	}
	if k.Scope != ScopeExternal {
		s += "/" + k.Scope.String()
	}
	if k.Family != lb.IPv4 {
		s += "/" + k.Family.String()
	}
	return s
}

// Less orders keys: by NodePort, protocol, name, scope, then family.
func (k ServiceKey) Less(o ServiceKey) bool {
	if k.NodePort != o.NodePort {
		return k.NodePort < o.NodePort
	}
	if k.Proto != o.Proto {
		return k.Proto < o.Proto
	}
	if k.Name != o.Name {
		return k.Name < o.Name
	}
	if k.Scope != o.Scope {
		return k.Scope < o.Scope
	}
	return k.Family < o.Family
}

// Service is one NodePort service port and the backends it balances over.
type Service struct {
	Key ServiceKey
	// Name is "namespace/name:port" for logs, as kube-proxy's ServicePortName.
	Name     string
	Backends []lb.Backend // sorted by address and port, no duplicates
	// Serving are all the port's serving endpoints (ready, or terminating and still serving),
	// on any node, whether policy picks them or not: a UDP flow's entries are flushed when its
	// endpoint leaves this set, as kube-proxy clears conntrack only for endpoints that stop
	// serving (not for one that starts terminating, or one externalTrafficPolicy sets aside).
	Serving []netip.AddrPort // sorted

	// Port is the service port, which the load-balancer and external IPs are served on.
	Port uint16
	// LoadBalancerIPs are status.loadBalancer.ingress IPs (but those with ipMode Proxy: the
	// load balancer proxies to the NodePort itself); ExternalIPs are spec.externalIPs.
	LoadBalancerIPs []netip.Addr
	ExternalIPs     []netip.Addr
	// SourceRanges are loadBalancerSourceRanges: only these clients reach the
	// load-balancer IPs (none: everyone). NodePorts are not restricted, as in kube-proxy.
	SourceRanges []netip.Prefix
	// AffinityTimeout is sessionAffinity ClientIP's timeout in seconds; 0: no affinity.
	AffinityTimeout uint32
	// ExternalLocal is externalTrafficPolicy Local: Backends are this node's endpoints only.
	ExternalLocal bool
	// DropEmpty: no local endpoint while other nodes have some; traffic is dropped, not
	// rejected, so the load balancer's health check moves it elsewhere (kube-proxy).
	DropEmpty bool
	// Maglev picks backends by consistent hashing instead of at random.
	Maglev bool
	// ClusterIPs are the addresses the internal scope is served on (spec.clusterIPs of the
	// key's family).
	ClusterIPs []netip.Addr
	// InternalLocal is internalTrafficPolicy Local (the internal scope): Backends are this
	// node's endpoints only.
	InternalLocal bool
	// Localhost: the NodePort is served on 127.0.0.1 too, a socket entry (the scope clients
	// on the node get: external, or node where there is one).
	Localhost bool
}

// HealthCheck is a service with externalTrafficPolicy Local and a healthCheckNodePort: the
// load balancer asks that port whether this node has endpoints for it.
type HealthCheck struct {
	Port uint16
	// LocalEndpoints counts this node's ready endpoints of the service's first family (a
	// terminating pod is not ready, so the load balancer drains a node whose last pod is going
	// away).
	LocalEndpoints int
	// DualStack: the service has a second family, Second, whose endpoints SecondEndpoints
	// counts. kube-proxy answers a probe from the proxier of the family it arrives over, which
	// counts that family's EndpointSlices only.
	DualStack       bool
	Second          lb.Family
	SecondEndpoints int
}

// For is the count a probe arriving over family f is answered with.
func (hc HealthCheck) For(f lb.Family) int {
	if hc.DualStack && f == hc.Second {
		return hc.SecondEndpoints
	}
	return hc.LocalEndpoints
}

// HealthCheckOf is svc's health check, if it has one.
func HealthCheckOf(svc *v1.Service, svcSlices []*discoveryv1.EndpointSlice, nodeName string) (HealthCheck, bool) {
	if svc == nil || !wantService(svc, Options{}) || svc.Spec.ExternalTrafficPolicy != v1.ServiceExternalTrafficPolicyLocal ||
		svc.Spec.HealthCheckNodePort <= 0 || svc.Spec.HealthCheckNodePort > 65535 {
		return HealthCheck{}, false
	}
	fams := familiesOf(svc, Options{IPv6: true})
	if len(fams) == 0 {
		return HealthCheck{}, false
	}
	count := func(f lb.Family) int {
		local := map[string]bool{}
		for _, sl := range svcSlices {
			if sliceFamily(sl) != f {
				continue
			}
			for _, ep := range sl.Endpoints {
				c := ep.Conditions
				// Ready alone, as kube-proxy counts: terminating pods are not ready, except those of
				// a publishNotReadyAddresses service, which its owner wants counted.
				ready := c.Ready == nil || *c.Ready
				if ready && len(ep.Addresses) > 0 && nodeName != "" && ep.NodeName != nil && *ep.NodeName == nodeName {
					local[ep.Addresses[0]] = true
				}
			}
		}
		return len(local)
	}
	hc := HealthCheck{Port: uint16(svc.Spec.HealthCheckNodePort), LocalEndpoints: count(fams[0])}
	if len(fams) > 1 {
		hc.DualStack, hc.Second, hc.SecondEndpoints = true, fams[1], count(fams[1])
	}
	return hc, true
}

// State is everything the datapath should hold.
type State struct {
	// Addresses are the node addresses every NodePort is served on.
	Addresses []netip.Addr
	Services  map[ServiceKey]*Service
}

// Input is what Build works from.
type Input struct {
	Options
	Addresses []netip.Addr
	Services  map[types.NamespacedName]*v1.Service
	Slices    map[types.NamespacedName]*discoveryv1.EndpointSlice
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
	x := NewIndex(in.Options)
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
// (no service label, a headless service's, FQDN addresses).
func SliceService(sl *discoveryv1.EndpointSlice) (types.NamespacedName, bool) {
	name := sl.Labels[discoveryv1.LabelServiceName]
	if name == "" || sl.Labels[LabelHeadless] != "" || sliceFamily(sl) > lb.IPv6 {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: sl.Namespace, Name: name}, true
}

// noFamily is the family of a slice that has none (addressType FQDN).
const noFamily lb.Family = 0xff

// sliceFamily is the family of a slice's addresses (the EndpointSlice controller writes one
// slice per family).
func sliceFamily(sl *discoveryv1.EndpointSlice) lb.Family {
	switch sl.AddressType {
	case discoveryv1.AddressTypeIPv4:
		return lb.IPv4
	case discoveryv1.AddressTypeIPv6:
		return lb.IPv6
	}
	return noFamily
}

// familiesOf are the families of svc sluice serves, its primary first: those it has a
// ClusterIP of, as kube-proxy's proxier of each family decides (GetClusterIPByFamily). A
// manifest may say neither ipFamilies nor clusterIPs: that service is IPv4. IPv6 only with
// o.IPv6.
func familiesOf(svc *v1.Service, o Options) []lb.Family {
	var out []lb.Family
	add := func(f lb.Family) {
		if (f == lb.IPv4 || o.IPv6) && !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	if len(svc.Spec.IPFamilies) == 0 {
		ip := svc.Spec.ClusterIP
		if len(svc.Spec.ClusterIPs) > 0 {
			ip = svc.Spec.ClusterIPs[0]
		}
		if a, err := netip.ParseAddr(ip); err == nil {
			add(lb.FamilyOf(a))
		} else {
			add(lb.IPv4)
		}
		return out
	}
	for i, f := range svc.Spec.IPFamilies {
		// The API server gives a ClusterIP per family; a manifest may leave them out.
		if i >= len(svc.Spec.ClusterIPs) && len(svc.Spec.ClusterIPs) > 0 {
			continue
		}
		switch f {
		case v1.IPv4Protocol:
			add(lb.IPv4)
		case v1.IPv6Protocol:
			add(lb.IPv6)
		}
	}
	return out
}

// ServicePorts computes one service's NodePort service ports from its slices, before any
// conflict with other services is resolved.
func ServicePorts(n types.NamespacedName, svc *v1.Service, svcSlices []*discoveryv1.EndpointSlice, o Options) ([]*Service, []Problem) {
	if svc == nil || !wantService(svc, o) {
		return nil, nil
	}
	var out []*Service
	var problems []Problem
	obj := "Service " + n.String()
	fams := familiesOf(svc, o)
	pols := make([]Service, len(fams))
	for i, f := range fams {
		var err error
		if pols[i], err = policyOf(svc, o, f); err != nil {
			// A policy we cannot honour is not silently replaced by another.
			return nil, []Problem{{obj, err}}
		}
	}
	// An address that is no IP (only a manifest can say one: the API server validates them)
	// is skipped; say which.
	for _, sl := range svcSlices {
		for _, ep := range sl.Endpoints {
			if len(ep.Addresses) > 0 {
				if _, err := netip.ParseAddr(ep.Addresses[0]); err != nil {
					problems = append(problems, Problem{"EndpointSlice " + sl.Namespace + "/" + sl.Name,
						fmt.Errorf("skip endpoint %q: not an IP address", ep.Addresses[0])})
				}
			}
		}
	}
	r := o.NodePortRange
	for _, sp := range svc.Spec.Ports {
		proto, err := protoOf(sp.Protocol)
		if err != nil {
			problems = append(problems, Problem{obj, fmt.Errorf("port %q: %w", sp.Name, err)})
			continue
		}
		badNodePort := sp.NodePort != 0 && (sp.NodePort < 0 || sp.NodePort > 65535 || !r.Contains(uint16(sp.NodePort)))
		if badNodePort {
			problems = append(problems, Problem{obj, fmt.Errorf("port %q: nodePort %d outside the NodePort range %s", sp.Name, sp.NodePort, r)})
		}
		name := fmt.Sprintf("%s:%s", n, sp.Name)
		if len(name) > lb.ServiceNameMax {
			// Only a manifest can say it (the API server keeps names within its limits).
			problems = append(problems, Problem{obj, fmt.Errorf("port %q: name %s is longer than Kubernetes allows (%d bytes)", sp.Name, name, lb.ServiceNameMax)})
			continue
		}
		for i, f := range fams {
			out = append(out, familyPorts(sp, proto, name, badNodePort, pols[i], f, svcSlices, o)...)
		}
	}
	return out, problems
}

// familyPorts are one service port's entries in family f: the external scope (and the node
// scope beside it), and the internal one.
func familyPorts(sp v1.ServicePort, proto lb.Proto, name string, badNodePort bool, pol Service, f lb.Family,
	svcSlices []*discoveryv1.EndpointSlice, o Options) []*Service {
	// Without a NodePort (a ClusterIP service with externalIPs, a LoadBalancer without node
	// ports) a port is served externally only on its external and load-balancer IPs.
	external := (sp.NodePort != 0 || len(pol.ExternalIPs)+len(pol.LoadBalancerIPs) > 0) && !badNodePort
	internal := o.ClusterIPs && len(pol.ClusterIPs) > 0
	if !external && !internal {
		return nil
	}
	var out []*Service
	{
		cluster, local, serving := backends(svcSlices, sp, proto, f, o)
		pick := func(s *Service, isLocal bool) {
			s.Backends = cluster
			if isLocal {
				// kube-proxy drops (not rejects) when only other nodes have endpoints.
				s.Backends, s.DropEmpty = local, len(local) == 0 && len(cluster) > 0
			}
		}
		if external {
			s := pol
			s.Name, s.Port, s.Serving = name, uint16(sp.Port), serving
			s.ClusterIPs, s.InternalLocal = nil, false
			s.Key = ServiceKey{NodePort: uint16(sp.NodePort), Proto: proto, Family: f}
			if sp.NodePort == 0 {
				s.Key.Name = s.Name
			}
			pick(&s, s.ExternalLocal)
			nodeScope := s.ExternalLocal && o.NodeClients
			// 127.0.0.1 only: kube-proxy serves no NodePort on ::1 (route_localnet is IPv4's).
			localhost := o.LocalhostNodePorts && sp.NodePort != 0 && f == lb.IPv4
			s.Localhost = localhost && o.NodeClients && !nodeScope
			out = append(out, &s)
			if nodeScope {
				// Traffic that starts on the node (its processes, its pods) gets every
				// endpoint, as kube-proxy sends it to the Cluster chain.
				nc := s
				nc.Key.Scope, nc.ExternalLocal = ScopeNode, false
				nc.Localhost = localhost
				pick(&nc, false)
				nc.DropEmpty = false
				out = append(out, &nc)
			}
		}
		if internal {
			s := pol
			s.Name, s.Port, s.Serving = name, uint16(sp.Port), serving
			s.ExternalIPs, s.LoadBalancerIPs, s.SourceRanges, s.ExternalLocal = nil, nil, nil, false
			s.Key = ServiceKey{Proto: proto, Name: name, Scope: ScopeInternal, Family: f}
			pick(&s, s.InternalLocal)
			out = append(out, &s)
		}
	}
	return out
}

// wantService reports whether sluice serves svc, as kube-proxy decides: its NodePorts and
// external IPs, and with o.ClusterIPs its ClusterIPs too.
func wantService(svc *v1.Service, o Options) bool {
	if svc.Labels[LabelServiceProxyName] != "" {
		return false
	}
	switch svc.Spec.Type {
	case v1.ServiceTypeNodePort, v1.ServiceTypeLoadBalancer:
	case v1.ServiceTypeClusterIP, "":
		// kube-proxy serves a ClusterIP service's externalIPs on every node.
		if len(svc.Spec.ExternalIPs) == 0 && !o.ClusterIPs {
			return false
		}
	default:
		return false
	}
	return svc.Spec.ClusterIP != v1.ClusterIPNone
}

func protoOf(p v1.Protocol) (lb.Proto, error) {
	switch p {
	case v1.ProtocolTCP, "":
		return lb.TCP, nil
	case v1.ProtocolUDP:
		return lb.UDP, nil
	case v1.ProtocolSCTP:
		return lb.SCTP, nil
	}
	return 0, fmt.Errorf("protocol %q is not supported (TCP, UDP and SCTP are)", p)
}

// policyOf reads a service's policy fields in family f, shared by all its ports: addresses and
// source ranges of the other family are the other family's entries' (kube-proxy's proxier of
// each family filters them alike, so IPv4-only loadBalancerSourceRanges leave IPv6 open).
func policyOf(svc *v1.Service, o Options, f lb.Family) (Service, error) {
	var s Service
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		s.AffinityTimeout = DefaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			t := *c.ClientIP.TimeoutSeconds
			if t <= 0 || t > 86400 {
				return s, fmt.Errorf("sessionAffinityConfig.clientIP.timeoutSeconds %d: want 1 to 86400", t)
			}
			s.AffinityTimeout = uint32(t)
		}
	}
	s.ExternalLocal = svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	s.InternalLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP} // a manifest may say only the old field
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip); err == nil && lb.FamilyOf(a) == f {
			s.ClusterIPs = append(s.ClusterIPs, a)
		}
	}
	switch alg := svc.Annotations[AnnotationLBAlgorithm]; alg {
	case "":
		s.Maglev = o.Maglev
	case "random":
	case "maglev":
		s.Maglev = true
	default:
		return s, fmt.Errorf("annotation %s: %q is not an algorithm (random, maglev)", AnnotationLBAlgorithm, alg)
	}
	for _, ip := range svc.Spec.ExternalIPs {
		if a, err := netip.ParseAddr(ip); err == nil && lb.FamilyOf(a) == f {
			s.ExternalIPs = append(s.ExternalIPs, a)
		}
	}
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if in.IPMode != nil && *in.IPMode == v1.LoadBalancerIPModeProxy {
				continue
			}
			if a, err := netip.ParseAddr(in.IP); err == nil && lb.FamilyOf(a) == f {
				s.LoadBalancerIPs = append(s.LoadBalancerIPs, a)
			}
		}
		for _, r := range svc.Spec.LoadBalancerSourceRanges {
			p, err := netip.ParsePrefix(strings.TrimSpace(r))
			if err != nil {
				// kube-proxy skips what does not parse; an empty allow-list would open the
				// service to everyone, so say so.
				return s, fmt.Errorf("loadBalancerSourceRanges %q: %w", r, err)
			}
			if lb.FamilyOf(p.Addr()) == f {
				s.SourceRanges = append(s.SourceRanges, p.Masked())
			}
		}
	}
	sortAddrs := func(a []netip.Addr) []netip.Addr {
		slices.SortFunc(a, netip.Addr.Compare)
		return slices.Compact(a)
	}
	s.ExternalIPs, s.LoadBalancerIPs, s.ClusterIPs = sortAddrs(s.ExternalIPs), sortAddrs(s.LoadBalancerIPs), sortAddrs(s.ClusterIPs)
	slices.SortFunc(s.SourceRanges, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	s.SourceRanges = slices.Compact(s.SourceRanges)
	return s, nil
}

// Equal reports whether two services program the datapath identically.
func (s *Service) Equal(o *Service) bool {
	return s.Key == o.Key && slices.Equal(s.Backends, o.Backends) && slices.Equal(s.Serving, o.Serving) && s.Port == o.Port &&
		slices.Equal(s.LoadBalancerIPs, o.LoadBalancerIPs) && slices.Equal(s.ExternalIPs, o.ExternalIPs) &&
		slices.Equal(s.SourceRanges, o.SourceRanges) && s.AffinityTimeout == o.AffinityTimeout &&
		s.ExternalLocal == o.ExternalLocal && s.DropEmpty == o.DropEmpty && s.Maglev == o.Maglev &&
		slices.Equal(s.ClusterIPs, o.ClusterIPs) && s.InternalLocal == o.InternalLocal && s.Localhost == o.Localhost
}

// Describe is a one-line summary for logs.
func (s *Service) Describe() string {
	b := make([]string, len(s.Backends))
	for i, be := range s.Backends {
		b[i] = be.String()
	}
	var pol []string
	if len(s.LoadBalancerIPs) > 0 {
		pol = append(pol, fmt.Sprintf("lb=%v", s.LoadBalancerIPs))
	}
	if len(s.ExternalIPs) > 0 {
		pol = append(pol, fmt.Sprintf("external=%v", s.ExternalIPs))
	}
	if len(s.ClusterIPs) > 0 {
		pol = append(pol, fmt.Sprintf("cluster=%v", s.ClusterIPs))
	}
	if len(s.SourceRanges) > 0 {
		pol = append(pol, fmt.Sprintf("sourceRanges=%v", s.SourceRanges))
	}
	if s.AffinityTimeout > 0 {
		pol = append(pol, fmt.Sprintf("affinity=%ds", s.AffinityTimeout))
	}
	if s.ExternalLocal || s.InternalLocal {
		pol = append(pol, "local")
	}
	if s.DropEmpty {
		pol = append(pol, "drop")
	}
	if s.Maglev {
		pol = append(pol, "maglev")
	}
	if s.Localhost {
		pol = append(pol, "localhost")
	}
	extra := ""
	if len(pol) > 0 {
		extra = " {" + strings.Join(pol, " ") + "}"
	}
	return fmt.Sprintf("%s (%s)%s -> [%s]", s.Name, s.Key, extra, strings.Join(b, ", "))
}
