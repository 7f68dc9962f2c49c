package desired

import (
	"net/netip"
	"slices"

	"github.com/sluicelb/sluice/internal/lb"
)

// Scope is which of a service port's addresses an entry serves, and so which of its endpoints
// (kube-proxy applies externalTrafficPolicy to some clients, internalTrafficPolicy to others).
type Scope uint8

const (
	// ScopeExternal: NodePorts, external and load-balancer IPs, with externalTrafficPolicy's
	// endpoints. Clients on the node get it too, unless the port has a node scope.
	ScopeExternal Scope = iota
	// ScopeInternal: the ClusterIPs, for every client, with internalTrafficPolicy's endpoints.
	ScopeInternal
	// ScopeNode: the external scope's addresses for clients on the node (socket-level load
	// balancing) where externalTrafficPolicy is Local: kube-proxy gives traffic that starts on
	// the node all of the Cluster endpoints.
	ScopeNode
)

func (s Scope) String() string {
	switch s {
	case ScopeExternal:
		return "external"
	case ScopeInternal:
		return "internal"
	case ScopeNode:
		return "node"
	}
	return "scope-?"
}

// localhost is where NodePorts are served on loopback (Service.Localhost).
var localhost = netip.MustParseAddr("127.0.0.1")

// Local says whether the scope's traffic policy is Local: externalTrafficPolicy for the
// external scope, internalTrafficPolicy for the internal one.
func (s *Service) Local() bool { return s.ExternalLocal || s.InternalLocal }

// Frontends are the addresses the service port is served on, given the node's NodePort
// addresses (sorted), with each one's policy; the reconciler adds the service ID and count.
func (s *Service) Frontends(nodeAddrs []netip.Addr) map[lb.FrontendKey]lb.Frontend {
	nodeAddrs = s.family(nodeAddrs)
	var flags lb.FrontendFlags
	if s.AffinityTimeout > 0 {
		flags |= lb.FrontendAffinity
	}
	if s.DropEmpty {
		flags |= lb.FrontendDropEmpty
	}
	if s.Maglev {
		flags |= lb.FrontendMaglev
	}
	fe := lb.Frontend{Flags: flags, AffinityTimeout: s.AffinityTimeout}
	// Load-balancer, external and cluster IPs need not route back to this node: remote
	// backends see its first NodePort address, as kube-proxy's masquerade shows them the
	// egress address.
	var first netip.Addr
	if len(nodeAddrs) > 0 {
		first = nodeAddrs[0]
	}
	if s.Key.Scope == ScopeInternal {
		fe.SNATAddr = first
		out := make(map[lb.FrontendKey]lb.Frontend, len(s.ClusterIPs))
		for _, a := range s.ClusterIPs {
			out[lb.FrontendKey{Addr: a, Port: s.Port, Proto: s.Key.Proto}] = fe
		}
		return out
	}
	socket := s.Key.Scope == ScopeNode
	out := make(map[lb.FrontendKey]lb.Frontend, len(nodeAddrs)+len(s.ExternalIPs)+len(s.LoadBalancerIPs))
	for _, a := range nodeAddrs {
		if s.Key.NodePort == 0 {
			break // served on its external and load-balancer IPs only
		}
		fe.SNATAddr = a // remote backends answer the address the client used
		out[lb.FrontendKey{Addr: a, Port: s.Key.NodePort, Proto: s.Key.Proto, Socket: socket}] = fe
	}
	if s.Localhost {
		// The node's own processes only: the socket programs check the namespace.
		fe.SNATAddr = first
		out[lb.FrontendKey{Addr: localhost, Port: s.Key.NodePort, Proto: s.Key.Proto, Socket: true}] = fe
	}
	fe.SNATAddr = first
	for _, a := range s.ExternalIPs {
		out[lb.FrontendKey{Addr: a, Port: s.Port, Proto: s.Key.Proto, Socket: socket}] = fe
	}
	if len(s.SourceRanges) > 0 {
		fe.Flags |= lb.FrontendSourceRanges
	}
	for _, a := range s.LoadBalancerIPs {
		out[lb.FrontendKey{Addr: a, Port: s.Port, Proto: s.Key.Proto, Socket: socket}] = fe
	}
	return out
}

// Serves says whether k is one of the service port's frontends on nodeAddrs.
func (s *Service) Serves(k lb.FrontendKey, nodeAddrs []netip.Addr) bool {
	if k.Proto != s.Key.Proto || lb.FamilyOf(k.Addr) != s.Key.Family {
		return false
	}
	if s.Localhost && k.Socket && k.Addr == localhost && k.Port == s.Key.NodePort {
		return true
	}
	if k.Socket != (s.Key.Scope == ScopeNode) {
		return false
	}
	if s.Key.Scope == ScopeInternal {
		return k.Port == s.Port && slices.Contains(s.ClusterIPs, k.Addr)
	}
	if s.Key.NodePort != 0 && k.Port == s.Key.NodePort && slices.Contains(nodeAddrs, k.Addr) {
		return true
	}
	return k.Port == s.Port && (slices.Contains(s.ExternalIPs, k.Addr) || slices.Contains(s.LoadBalancerIPs, k.Addr))
}

// family are the addresses of addrs in the service's family (in order): an entry of one family
// is served on the node's addresses of that family.
func (s *Service) family(addrs []netip.Addr) []netip.Addr {
	for _, a := range addrs {
		if lb.FamilyOf(a) != s.Key.Family {
			out := make([]netip.Addr, 0, len(addrs))
			for _, a := range addrs {
				if lb.FamilyOf(a) == s.Key.Family {
					out = append(out, a)
				}
			}
			return out
		}
	}
	return addrs
}
