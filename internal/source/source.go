// Package source delivers Service, EndpointSlice and Node objects to the agent, from a folder
// of manifests (the lab default) or, later, the Kubernetes API, behind one interface shaped
// like client-go's informer event handlers.
package source

import (
	"context"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Handler receives object events, as kube-proxy's config handlers do. Calls are serialized:
// a source never calls a Handler from two goroutines at once.
type Handler interface {
	OnServiceAdd(svc *v1.Service)
	OnServiceUpdate(old, svc *v1.Service)
	OnServiceDelete(svc *v1.Service)
	OnEndpointSliceAdd(slice *discoveryv1.EndpointSlice)
	OnEndpointSliceUpdate(old, slice *discoveryv1.EndpointSlice)
	OnEndpointSliceDelete(slice *discoveryv1.EndpointSlice)
	OnNodeAdd(node *v1.Node)
	OnNodeUpdate(old, node *v1.Node)
	OnNodeDelete(node *v1.Node)
	// OnSynced is called once, after the first complete set of objects was delivered.
	OnSynced()
}

// Source runs until ctx is done, delivering events to h.
type Source interface {
	Run(ctx context.Context, h Handler) error
}
