package proxy

import (
	"context"
	"time"

	"k8s.io/utils/clock"
)

// Runner calls a sync function when triggered, at most once per MinInterval, at least once
// per MaxInterval (a periodic full resync that repairs anything changed behind our back), and
// again after a failure with exponential backoff up to MaxInterval. As kube-proxy's
// BoundedFrequencyRunner, bursts of changes collapse into one sync.
type Runner struct {
	MinInterval time.Duration
	MaxInterval time.Duration
	Sync        func() error
	// OnError is told of each failed sync (logging); optional.
	OnError func(err error, retryIn time.Duration)
	// Clock is where time comes from (nil: the real one); tests step a fake one.
	Clock clock.Clock

	idle func() // tests: called each time the loop has handled an event
}

// Run loops until ctx is done. trigger asks for a sync.
func (r *Runner) Run(ctx context.Context, trigger <-chan struct{}) {
	clk := r.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	var last time.Time
	backoff := time.Duration(0)
	timer := clk.NewTimer(0) // first sync at once
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-trigger:
			// A change is synced at the minimum interval even while a failure backs off:
			// the backoff only spaces out retries when nothing new arrives.
			wait := r.MinInterval - clk.Since(last)
			if wait < 0 {
				wait = 0
			}
			resetTimer(timer, wait)
		case <-timer.C():
			last = clk.Now()
			if err := r.Sync(); err != nil {
				backoff = nextBackoff(backoff, r.MinInterval, r.MaxInterval)
				if r.OnError != nil {
					r.OnError(err, backoff)
				}
				resetTimer(timer, backoff)
			} else {
				backoff = 0
				resetTimer(timer, r.MaxInterval)
			}
		}
		if r.idle != nil {
			r.idle()
		}
	}
}

func nextBackoff(cur, min, max time.Duration) time.Duration {
	if cur == 0 {
		cur = min
		if cur <= 0 {
			cur = 100 * time.Millisecond
		}
		return cur
	}
	cur *= 2
	if cur > max {
		cur = max
	}
	return cur
}

func resetTimer(t clock.Timer, d time.Duration) {
	t.Stop()
	select {
	case <-t.C():
	default:
	}
	t.Reset(d)
}
