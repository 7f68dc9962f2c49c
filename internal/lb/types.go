// Package lb holds the value types of load balancing that the desired state, the reconciler
// and the maps share: protocols, frontends (an address, port and protocol, and the service
// behind it) and backends. It imports nothing of sluice, so the pure packages (desired) need
// not import the one that talks to the kernel (maps).
package lb

import (
	"fmt"
	"net/netip"
	"strings"
)

// ServiceNameMax is the longest service port name Kubernetes allows, "namespace/name:port":
// 63 + 1 + 63 + 1 + 15 bytes. The datapath's svc_info holds that much (checked by a test in
// internal/maps).
const ServiceNameMax = 143

// Proto is an IP protocol number.
type Proto uint8

const (
	TCP  Proto = 6
	UDP  Proto = 17
	SCTP Proto = 132
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// FrontendKey is an address (a node's, a ClusterIP, an external or load-balancer IP), port
// and protocol: what a client connects to.
type FrontendKey struct {
	Addr  netip.Addr
	Port  uint16
	Proto Proto
	// Socket marks the entry the socket hooks prefer for this address (FE_SCOPE_SOCK): which
	// service clients on the node get where it differs from what packets arriving on a
	// device get (kube-proxy treats traffic that starts on the node as Cluster).
	Socket bool
}

func (k FrontendKey) String() string {
	s := fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.Addr, k.Port), k.Proto)
	if k.Socket {
		s += " (socket)"
	}
	return s
}

// Frontend is a frontend's service: its ID, how many backend slots it has, and its policy.
type Frontend struct {
	ServiceID uint32
	Count     uint16
	Flags     FrontendFlags
	// AffinityTimeout is the session affinity timeout in seconds (FrontendAffinity).
	AffinityTimeout uint32
	// SNATAddr is the node address remote backends see; invalid: the frontend's own.
	SNATAddr netip.Addr
}

// FrontendFlags mirror FE_F_* in bpf/lib/maps.h.
type FrontendFlags uint16

const (
	// FrontendAffinity: sessionAffinity ClientIP.
	FrontendAffinity FrontendFlags = 0x01
	// FrontendDropEmpty: no backend drops instead of rejecting (externalTrafficPolicy Local
	// with endpoints only elsewhere).
	FrontendDropEmpty FrontendFlags = 0x02
	// FrontendSourceRanges: new flows only from the service's loadBalancerSourceRanges.
	FrontendSourceRanges FrontendFlags = 0x04
	// FrontendMaglev: backends picked with the service's Maglev table.
	FrontendMaglev FrontendFlags = 0x08
)

func (f FrontendFlags) String() string {
	var out []string
	for _, n := range []struct {
		f    FrontendFlags
		name string
	}{{FrontendAffinity, "affinity"}, {FrontendDropEmpty, "drop-empty"}, {FrontendSourceRanges, "source-ranges"}, {FrontendMaglev, "maglev"}} {
		if f&n.f != 0 {
			out = append(out, n.name)
		}
	}
	return strings.Join(out, ",")
}

// Backend is an endpoint address; Local marks a pod on this node, Terminating one that is
// used only because no endpoint is ready (kube-proxy's fallback).
type Backend struct {
	Addr        netip.Addr
	Port        uint16
	Local       bool
	Terminating bool
}

func (b Backend) String() string {
	s := netip.AddrPortFrom(b.Addr, b.Port).String()
	if b.Local {
		s += " (local)"
	}
	if b.Terminating {
		s += " (terminating)"
	}
	return s
}

// Family is an IP family. A dual-stack service port is two service ports on the datapath, one
// per family, each with its own service ID (the maps of the two families are apart).
type Family uint8

const (
	// IPv4 is the zero Family: keys and records from before IPv6 are IPv4's.
	IPv4 Family = iota
	IPv6
)

// FamilyOf is a's family (an IPv4-mapped IPv6 address is IPv4).
func FamilyOf(a netip.Addr) Family {
	if a.Is6() && !a.Is4In6() {
		return IPv6
	}
	return IPv4
}

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}
