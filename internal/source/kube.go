package source

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/sluicelb/sluice/internal/desired"
)

// Label selectors kube-proxy watches with: services another proxy handles and the
// EndpointSlices of headless services are never even received.
const (
	serviceSelector = "!service.kubernetes.io/service-proxy-name"
	sliceSelector   = "!service.kubernetes.io/headless"
)

// Kube follows Services, EndpointSlices and this node's Node object through the API server
// with client-go shared informers, as kube-proxy does.
type Kube struct {
	client   kubernetes.Interface
	nodeName string
	log      *zap.Logger
	// Resync re-delivers every object periodically (0: never); the sync loop's own periodic
	// full sync already repairs drift, so the default is off.
	Resync time.Duration
}

// NewKube returns a source on client for the node nodeName.
func NewKube(client kubernetes.Interface, nodeName string, log *zap.Logger) *Kube {
	if log == nil {
		log = zap.NewNop()
	}
	return &Kube{client: client, nodeName: nodeName, log: log}
}

var _ Source = (*Kube)(nil)

// Run starts the informers, delivers their events to h (serialized) and calls OnSynced once all
// three caches have their first complete list. It returns when ctx is done.
func (k *Kube) Run(ctx context.Context, h Handler) error {
	svcFactory := informers.NewSharedInformerFactoryWithOptions(k.client, k.Resync, informers.WithTransform(strip),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = serviceSelector }))
	sliceFactory := informers.NewSharedInformerFactoryWithOptions(k.client, k.Resync, informers.WithTransform(strip),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sliceSelector }))
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(k.client, k.Resync, informers.WithTransform(strip),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", k.nodeName).String()
		}))

	s := &serialized{h: h}
	svcInf := svcFactory.Core().V1().Services().Informer()
	sliceInf := sliceFactory.Discovery().V1().EndpointSlices().Informer()
	nodeInf := nodeFactory.Core().V1().Nodes().Informer()
	var regs []cache.ResourceEventHandlerRegistration
	for _, reg := range []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandlerFuncs
	}{
		{svcInf, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { s.do(func() { h.OnServiceAdd(o.(*v1.Service)) }) },
			UpdateFunc: func(o, n any) { s.do(func() { h.OnServiceUpdate(o.(*v1.Service), n.(*v1.Service)) }) },
			DeleteFunc: func(o any) {
				if svc, ok := unwrap[*v1.Service](o); ok {
					s.do(func() { h.OnServiceDelete(svc) })
				}
			},
		}},
		{sliceInf, cache.ResourceEventHandlerFuncs{
			AddFunc: func(o any) { s.do(func() { h.OnEndpointSliceAdd(o.(*discoveryv1.EndpointSlice)) }) },
			UpdateFunc: func(o, n any) {
				s.do(func() { h.OnEndpointSliceUpdate(o.(*discoveryv1.EndpointSlice), n.(*discoveryv1.EndpointSlice)) })
			},
			DeleteFunc: func(o any) {
				if sl, ok := unwrap[*discoveryv1.EndpointSlice](o); ok {
					s.do(func() { h.OnEndpointSliceDelete(sl) })
				}
			},
		}},
		{nodeInf, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { s.do(func() { h.OnNodeAdd(o.(*v1.Node)) }) },
			UpdateFunc: func(o, n any) { s.do(func() { h.OnNodeUpdate(o.(*v1.Node), n.(*v1.Node)) }) },
			DeleteFunc: func(o any) {
				if n, ok := unwrap[*v1.Node](o); ok {
					s.do(func() { h.OnNodeDelete(n) })
				}
			},
		}},
	} {
		r, err := reg.inf.AddEventHandler(reg.h)
		if err != nil {
			return fmt.Errorf("add event handler: %w", err)
		}
		regs = append(regs, r)
	}
	defer func() {
		svcFactory.Shutdown()
		sliceFactory.Shutdown()
		nodeFactory.Shutdown()
	}()
	svcFactory.Start(ctx.Done())
	sliceFactory.Start(ctx.Done())
	nodeFactory.Start(ctx.Done())
	// The registrations' HasSynced, not the informers': only they say the handlers have been
	// given the whole initial list (a sync before that would prune what is still coming).
	if !cache.WaitForCacheSync(ctx.Done(), regs[0].HasSynced, regs[1].HasSynced, regs[2].HasSynced) {
		return nil // ctx done before the first list
	}
	k.log.Info("Informer caches synced")
	s.do(h.OnSynced)
	<-ctx.Done()
	return nil
}

// strip drops what the agent never reads from cached objects (managed fields are often the
// largest part of an object; a 10k-service cluster's caches shrink by half), keeping only the
// annotations the agent reads: the programming-latency metric's and the algorithm choice.
func strip(o any) (any, error) {
	m, ok := o.(metav1.Object)
	if !ok {
		return o, nil
	}
	m.SetManagedFields(nil)
	if a := m.GetAnnotations(); len(a) > 0 {
		keep := map[string]string{}
		for _, k := range []string{triggerTimeAnnotation, desired.AnnotationLBAlgorithm} {
			if v, ok := a[k]; ok {
				keep[k] = v
			}
		}
		m.SetAnnotations(keep)
	}
	if n, ok := o.(*v1.Node); ok {
		n.Status.Images = nil
	}
	return o, nil
}

const triggerTimeAnnotation = "endpoints.kubernetes.io/last-change-trigger-time"

// unwrap takes an object out of a delete event, which may carry a tombstone when the watch
// missed the deletion.
func unwrap[T any](o any) (T, bool) {
	if t, ok := o.(T); ok {
		return t, true
	}
	if ts, ok := o.(cache.DeletedFinalStateUnknown); ok {
		t, ok := ts.Obj.(T)
		return t, ok
	}
	var zero T
	return zero, false
}

// serialized makes calls to a Handler one at a time: informers call from their own goroutines.
type serialized struct {
	mu sync.Mutex
	h  Handler
}

func (s *serialized) do(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn()
}
