package reconciler

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
)

// slowFlush is a Fake whose flushes wait until released, as a walk of a large table does.
type slowFlush struct {
	*maps.Fake
	release chan struct{}
}

func (s slowFlush) FlushFlows(p lb.Proto, gone map[maps.FlowTarget]bool) (int, error) {
	<-s.release
	return s.Fake.FlushFlows(p, gone)
}

// With FlushInBackground, Apply does not wait for a flush; the flush still happens, after the
// frontends stopped picking the endpoint.
func TestFlushOffTheSyncLoop(t *testing.T) {
	f := maps.NewFake()
	sf := slowFlush{Fake: f, release: make(chan struct{})}
	r := New(sf, 100, 100, zap.NewNop())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.FlushInBackground(ctx)
	apply(t, r, state([]netip.Addr{node1}, svc(30053, lb.UDP, be("10.244.1.10", 53), be("10.244.2.10", 53))))
	done := make(chan struct{})
	go func() {
		apply(t, r, state([]netip.Addr{node1}, svc(30053, lb.UDP, be("10.244.1.10", 53))))
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Apply waited for the flush")
	}
	close(sf.release)
	deadline := time.Now().Add(2 * time.Second)
	for {
		var flushed bool
		for _, w := range f.WritesSoFar() {
			flushed = flushed || strings.HasPrefix(w, "flush UDP flows of 1/10.244.2.10:53")
		}
		if flushed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the flush never happened")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
