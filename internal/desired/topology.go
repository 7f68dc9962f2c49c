package desired

import (
	"slices"

	"github.com/sluicelb/sluice/internal/lb"
)

// endpoint is one endpoint of a service port as backends reads it from the slices.
type endpoint struct {
	b        lb.Backend
	ready    bool
	fallback bool     // not ready, but serving and terminating: used when nothing is ready
	zones    []string // hints.forZones
	nodes    []string // hints.forNodes
}

// Topology modes, as kube-proxy names them (the traffic distributions that produce the hints).
const (
	topologyNone     = ""
	topologySameZone = "PreferSameZone"
	topologySameNode = "PreferSameNode"
)

// topologyMode is kube-proxy's topologyModeFromHints: node hints when every ready endpoint has
// one and one names this node; else zone hints when every ready endpoint has one and one
// names this node's zone; else none. Hints are all or nothing, so an endpoint the
// EndpointSlice controller has not hinted yet never leaves some clients without endpoints.
func topologyMode(eps []endpoint, node, zone string) string {
	anyReady, allNodes, forNode, allZones, forZone := false, true, false, true, false
	for _, e := range eps {
		if !e.ready {
			continue
		}
		anyReady = true
		if len(e.nodes) == 0 {
			allNodes = false
		} else if slices.Contains(e.nodes, node) {
			forNode = true
		}
		if len(e.zones) == 0 {
			allZones = false
		} else if zone != "" && slices.Contains(e.zones, zone) {
			forZone = true
		}
	}
	switch {
	case !anyReady:
		return topologyNone
	case allNodes && forNode:
		return topologySameNode
	case allZones && forZone:
		return topologySameZone
	}
	return topologyNone
}

// available says whether e may take Cluster traffic under mode.
func (e endpoint) available(mode, node, zone string) bool {
	switch mode {
	case topologySameNode:
		return slices.Contains(e.nodes, node)
	case topologySameZone:
		return slices.Contains(e.zones, zone)
	}
	return true
}
