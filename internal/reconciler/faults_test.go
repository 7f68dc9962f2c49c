package reconciler

import (
	"errors"
	"fmt"
	"math/rand"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
)

var errInjected = errors.New("injected fault")

// randomState draws services over a small universe, so that backends, IDs and policy entries
// are shared, moved and dropped between steps. Services do not share load-balancer IPs: which
// one holds a shared key depends on history (the first keeps it), so it is not compared here.
func randomState(rng *rand.Rand) desired.State {
	addrs := []netip.Addr{node1, node2, netip.MustParseAddr("10.89.0.12")}
	st := desired.State{Services: map[desired.ServiceKey]*desired.Service{}}
	for _, a := range addrs {
		if rng.Intn(3) > 0 {
			st.Addresses = append(st.Addresses, a)
		}
	}
	for i := 0; i < 6; i++ {
		if rng.Intn(4) == 0 {
			continue
		}
		proto := lb.TCP
		if i%2 == 1 {
			proto = lb.UDP
		}
		k := desired.ServiceKey{NodePort: uint16(30001 + i), Proto: proto}
		s := &desired.Service{Key: k, Name: fmt.Sprintf("default/s%d:p", i), Port: 80}
		for j := 0; j < 8; j++ {
			if rng.Intn(2) == 0 {
				b := be(fmt.Sprintf("10.244.%d.%d", j%2, 10+j), 8080)
				b.Local = j%2 == 0
				s.Backends = append(s.Backends, b)
				s.Serving = append(s.Serving, netip.AddrPortFrom(b.Addr, b.Port))
			}
		}
		if rng.Intn(3) == 0 {
			s.AffinityTimeout = 10800
		}
		s.Maglev = rng.Intn(3) == 0
		if rng.Intn(3) == 0 {
			s.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr(fmt.Sprintf("203.0.113.%d", 10*i+rng.Intn(3)))}
			if rng.Intn(2) == 0 {
				s.SourceRanges = []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("198.51.%d.0/24", rng.Intn(3)))}
			}
		}
		s.ExternalLocal = rng.Intn(4) == 0
		st.Services[k] = s
	}
	return st
}

func keysOf(st desired.State, rng *rand.Rand) []desired.ServiceKey {
	var ks []desired.ServiceKey
	for i := 0; i < 6; i++ {
		for _, p := range []lb.Proto{lb.TCP, lb.UDP} {
			if rng.Intn(3) == 0 {
				ks = append(ks, desired.ServiceKey{NodePort: uint16(30001 + i), Proto: p})
			}
		}
	}
	return ks
}

// Map writes fail at random (as a full map or a kernel error would) while services come, go
// and change, the agent restarts, and drift is repaired: after every single write, nothing the
// datapath can read names an entry that does not exist; and once writes succeed again, one
// Apply leaves the maps equal to a fresh agent's.
func TestRandomWriteFaultsNeverLeaveDanglingEntries(t *testing.T) {
	for seed := int64(1); seed <= 1000; seed++ {
		rng := rand.New(rand.NewSource(seed))
		var f *maps.Fake
		var m maps.Maps
		batched := seed%2 == 0
		if batched {
			fb := maps.NewFakeBatcher()
			f, m = fb.Fake, fb
		} else {
			f = maps.NewFake()
			m = f
		}
		f.CheckOrder = true
		rate := 0.05 + rng.Float64()*0.25
		newR := func() *Reconciler {
			r := New(m, 64, 256, zap.NewNop())
			r.MaglevSize = 251
			if batched {
				r.batchAt = 1
			}
			return r
		}
		r := newR()
		var st desired.State
		var trace []string
		for step := 0; step < 12; step++ {
			stepStart := len(f.Writes)
			f.Fault = func(op string) error {
				if rng.Float64() < rate {
					return errInjected
				}
				return nil
			}
			switch rng.Intn(6) {
			case 0:
				f.Fault = nil // a restart reads the maps; reads do not fail here
				r = newR()
				if _, err := r.Restore(); err != nil {
					t.Fatalf("seed %d: restore: %v", seed, err)
				}
				trace = append(trace, "restart")
			case 1:
				_, _ = r.Repair()
				trace = append(trace, "repair")
			case 2:
				st = randomState(rng)
				_ = r.ApplyKeys(st, keysOf(st, rng))
				trace = append(trace, "apply keys")
			default:
				st = randomState(rng)
				_ = r.Apply(st)
				trace = append(trace, "apply")
			}
			if len(f.Violations) > 0 {
				t.Fatalf("seed %d (batched %v), steps %s: %d violations, first:\n%s\nwrites of the last step:\n%s", seed, batched,
					strings.Join(trace, ", "), len(f.Violations), strings.Join(f.Violations[:min(5, len(f.Violations))], "\n"),
					strings.Join(f.Writes[stepStart:], "\n"))
			}
		}
		f.Fault = nil
		if err := r.Apply(st); err != nil {
			t.Fatalf("seed %d: apply without faults: %v", seed, err)
		}
		want := maps.NewFake()
		fresh := New(want, 64, 256, zap.NewNop())
		fresh.MaglevSize = 251
		if err := fresh.Apply(st); err != nil {
			t.Fatal(err)
		}
		if got, exp := withoutPorts(f.Dump()), withoutPorts(want.Dump()); got != exp {
			t.Fatalf("seed %d (batched %v), steps %s: maps after recovery differ from a fresh agent's:\n%s",
				seed, batched, strings.Join(trace, ", "), lineDiff(got, exp))
		}
		n := len(f.Writes)
		if err := r.Apply(st); err != nil || len(f.Writes) != n {
			t.Fatalf("seed %d: a second apply wrote %q (%v)", seed, f.Writes[n:], err)
		}
	}
}

// withoutPorts drops the prefilter bitmaps, which only grow while an agent runs.
func withoutPorts(dump string) string {
	var out []string
	for _, l := range strings.Split(dump, "\n") {
		if !strings.HasPrefix(l, "prefilter ") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// lineDiff lists the lines only got has (+) and only want has (-).
func lineDiff(got, want string) string {
	count := map[string]int{}
	for _, l := range strings.Split(want, "\n") {
		count[l]--
	}
	for _, l := range strings.Split(got, "\n") {
		count[l]++
	}
	var out []string
	for l, n := range count {
		for ; n > 0; n-- {
			out = append(out, "+ "+l)
		}
		for ; n < 0; n++ {
			out = append(out, "- "+l)
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}
