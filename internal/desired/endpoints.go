package desired

import (
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/sluicelb/sluice/internal/lb"
)

// Endpoints: which of a service port's endpoints each traffic policy gets.

// backends are the endpoints of sp in family f across all slices, as kube-proxy's CategorizeEndpoints
// picks them: for the cluster, the ready ones, or, when none is ready anywhere, the
// serving-but-terminating ones (so that a rolling update does not refuse connections while old
// pods still serve); for externalTrafficPolicy Local, this node's ready ones, or, when none is
// ready here, this node's serving-but-terminating ones.
func backends(svcSlices []*discoveryv1.EndpointSlice, sp v1.ServicePort, proto lb.Proto, f lb.Family, o Options) (cluster, local []lb.Backend, serving []netip.AddrPort) {
	var eps []endpoint
	for _, sl := range svcSlices {
		if sliceFamily(sl) != f {
			continue // the other family's entries' endpoints
		}
		port, ok := slicePort(sl, sp.Name, proto)
		if !ok {
			continue
		}
		for _, ep := range sl.Endpoints {
			if len(ep.Addresses) == 0 {
				continue
			}
			addr, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil || lb.FamilyOf(addr) != f {
				continue
			}
			e := endpoint{b: lb.Backend{Addr: addr, Port: port, Local: o.NodeName != "" && ep.NodeName != nil && *ep.NodeName == o.NodeName}}
			c := ep.Conditions
			// As kube-proxy reads them (the API's defaults): ready and serving when missing are
			// true, terminating false; ready alone makes an endpoint ready (the EndpointSlice
			// controller sets it for terminating pods only with publishNotReadyAddresses).
			e.ready = c.Ready == nil || *c.Ready
			isServing := c.Serving == nil || *c.Serving
			isTerminating := c.Terminating != nil && *c.Terminating
			if isServing {
				serving = append(serving, netip.AddrPortFrom(addr, port))
			}
			e.fallback = !e.ready && isServing && isTerminating
			e.b.Terminating = e.fallback
			if h := ep.Hints; h != nil {
				for _, z := range h.ForZones {
					e.zones = append(e.zones, z.Name)
				}
				for _, n := range h.ForNodes {
					e.nodes = append(e.nodes, n.Name)
				}
			}
			eps = append(eps, e)
		}
	}
	// Cluster traffic: ready endpoints the topology hints allow, else serving terminating
	// ones; Local traffic: this node's, hints aside (kube-proxy's CategorizeEndpoints).
	mode := topologyMode(eps, o.NodeName, o.NodeZone)
	var ready, terminating []lb.Backend
	for _, e := range eps {
		switch {
		case e.ready && e.available(mode, o.NodeName, o.NodeZone):
			cluster = append(cluster, e.b)
		case e.fallback && e.available(mode, o.NodeName, o.NodeZone):
			terminating = append(terminating, e.b)
		}
		if e.ready {
			ready = append(ready, e.b)
		}
	}
	if len(cluster) == 0 {
		cluster = terminating
	}
	local = onlyLocal(ready)
	if len(local) == 0 {
		local = nil
		for _, e := range eps {
			if e.fallback && e.b.Local {
				local = append(local, e.b)
			}
		}
	}
	slices.SortFunc(serving, netip.AddrPort.Compare)
	return sortBackends(cluster), sortBackends(local), slices.Compact(serving)
}

func onlyLocal(bs []lb.Backend) []lb.Backend {
	var out []lb.Backend
	for _, b := range bs {
		if b.Local {
			out = append(out, b)
		}
	}
	return out
}

func sortBackends(bs []lb.Backend) []lb.Backend {
	slices.SortFunc(bs, compareBackends)
	return slices.CompactFunc(bs, func(a, b lb.Backend) bool { return compareBackends(a, b) == 0 })
}

func compareBackends(a, b lb.Backend) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}

// slicePort finds the slice's port for the service port named name, as kube-proxy matches
// them: by name (both empty for a single unnamed port) and protocol.
func slicePort(sl *discoveryv1.EndpointSlice, name string, proto lb.Proto) (uint16, bool) {
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
