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
func randomState(rng *rand.Rand, shareIPs bool) desired.State {
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
			s.LoadBalancerIPs = []netip.Addr{lbAddr(i, rng, shareIPs)}
			if rng.Intn(2) == 0 {
				s.SourceRanges = []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("198.51.%d.0/24", rng.Intn(3)))}
			}
		}
		s.ExternalLocal = rng.Intn(4) == 0
		st.Services[k] = s
	}
	return st
}

func lbAddr(i int, rng *rand.Rand, shared bool) netip.Addr {
	if shared {
		return netip.MustParseAddr(fmt.Sprintf("203.0.113.%d", 1+rng.Intn(2)))
	}
	return netip.MustParseAddr(fmt.Sprintf("203.0.113.%d", 10*i+rng.Intn(3)))
}

// writeBehind changes the maps as a tool or an older agent might, without leaving anything
// dangling (that would be the outsider's doing): a frontend deleted, a frontend written on a
// key with some ID and a count that ID's slots cover, a backend's value changed.
func writeBehind(f *maps.Fake, rng *rand.Rand) string {
	switch rng.Intn(3) {
	case 0:
		for k := range f.FrontendMap {
			delete(f.FrontendMap, k)
			return "outside: frontend deleted"
		}
	case 1:
		id := uint32(1 + rng.Intn(8))
		n := uint16(0)
		for {
			b, ok := f.SlotMap[maps.SlotKey{ServiceID: id, Slot: uint32(n) + 1}]
			if _, exists := f.BackendMap[b]; !ok || !exists {
				break
			}
			n++
		}
		k := lb.FrontendKey{Addr: node1, Port: uint16(30001 + rng.Intn(6)), Proto: lb.TCP}
		if rng.Intn(2) == 0 {
			k.Proto = lb.UDP
		}
		f.FrontendMap[k] = lb.Frontend{ServiceID: id, Count: uint16(rng.Intn(int(n) + 1))}
		return "outside: frontend written"
	default:
		for id, b := range f.BackendMap {
			b.Port++
			f.BackendMap[id] = b
			return "outside: backend changed"
		}
	}
	return "outside: nothing"
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
// and change, the agent crashes mid-write and restarts, entries change behind it and drift is
// repaired: after every single write, nothing the datapath can read names an entry that does
// not exist; and once writes succeed again, a repair and one Apply leave the maps equal to a
// fresh agent's (where services share load-balancer IPs, which one holds a shared key depends
// on history, so those seeds check the invariant only).
func TestRandomWriteFaultsNeverLeaveDanglingEntries(t *testing.T) {
	for seed := int64(1); seed <= 1000; seed++ {
		rng := rand.New(rand.NewSource(seed))
		faults := rand.New(rand.NewSource(-seed)) // apart, so a seed's states do not depend on its faults
		shareIPs := seed%3 == 0
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
				if faults.Float64() < rate {
					return errInjected
				}
				return nil
			}
			switch rng.Intn(8) {
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
				st = randomState(rng, shareIPs)
				_ = r.ApplyKeys(st, keysOf(st, rng))
				trace = append(trace, "apply keys")
			case 3:
				// A crash: the writes after the first few fail, and a new agent restores.
				left := rng.Intn(20)
				f.Fault = func(string) error {
					if left--; left < 0 {
						return errInjected
					}
					return nil
				}
				_ = r.Apply(randomState(rng, shareIPs))
				f.Fault = nil
				r = newR()
				if _, err := r.Restore(); err != nil {
					t.Fatalf("seed %d: restore: %v", seed, err)
				}
				trace = append(trace, "crash and restart")
			case 4:
				// Written behind the agent, found by the next full sync's Repair (until then the
				// agent cannot know what an outside frontend reads).
				trace = append(trace, writeBehind(f, rng), "repair")
				if d := f.Dangling(); len(d) > 0 {
					t.Fatalf("seed %d: the test's outside write left %v", seed, d)
				}
				_, _ = r.Repair()
			default:
				// A full sync, as the Syncer runs it: Repair, then Apply.
				st = randomState(rng, shareIPs)
				_, _ = r.Repair()
				_ = r.Apply(st)
				trace = append(trace, "repair and apply")
			}
			if len(f.Violations) > 0 {
				t.Fatalf("seed %d (batched %v), steps %s: %d violations, first:\n%s\nwrites of the last step:\n%s", seed, batched,
					strings.Join(trace, ", "), len(f.Violations), strings.Join(f.Violations[:min(5, len(f.Violations))], "\n"),
					strings.Join(f.Writes[stepStart:], "\n"))
			}
		}
		f.Fault = nil
		if _, err := r.Repair(); err != nil {
			t.Fatalf("seed %d: repair without faults: %v", seed, err)
		}
		if err := r.Apply(st); err != nil {
			t.Fatalf("seed %d: apply without faults: %v", seed, err)
		}
		if len(f.Violations) > 0 {
			t.Fatalf("seed %d: the last apply: %v", seed, f.Violations[:min(5, len(f.Violations))])
		}
		want := maps.NewFake()
		fresh := New(want, 64, 256, zap.NewNop())
		fresh.MaglevSize = 251
		if err := fresh.Apply(st); err != nil {
			t.Fatal(err)
		}
		if got, exp := withoutPorts(f.Dump()), withoutPorts(want.Dump()); got != exp && !shareIPs {
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

// A slot a crash left naming a backend that is not there keeps that ID from being handed to a
// new backend: else, while the slot is not yet rewritten, the service's traffic would go to
// another service's backend.
func TestRestoredSlotReservesItsMissingBackendID(t *testing.T) {
	f := maps.NewFake()
	f.FrontendMap[lb.FrontendKey{Addr: node1, Port: 30001, Proto: lb.TCP}] = lb.Frontend{ServiceID: 1, Count: 2}
	f.Info[1] = maps.ServiceInfo{Name: "default/a:p", NodePort: 30001, Proto: lb.TCP}
	f.BackendMap[1] = be("10.244.1.10", 80)
	f.SlotMap[maps.SlotKey{ServiceID: 1, Slot: 1}] = 1
	f.SlotMap[maps.SlotKey{ServiceID: 1, Slot: 2}] = 2 // backend 2 was never written
	r := New(f, 64, 256, zap.NewNop())
	if _, err := r.Restore(); err != nil {
		t.Fatal(err)
	}
	f.Fault = func(op string) error {
		if op == "update slot" {
			return errInjected
		}
		return nil
	}
	a := svc(30001, lb.TCP, be("10.244.1.10", 80), be("10.244.1.11", 80))
	b := svc(30000, lb.TCP, be("10.244.9.9", 80)) // applied first
	_ = r.Apply(state([]netip.Addr{node1}, a, b))
	for _, w := range f.Writes {
		if strings.HasPrefix(w, "backend 2 = ") {
			t.Errorf("backend ID 2, which slot 1/2 names, was handed out: %q", w)
		}
	}
}

// A batch that fails and is recovered from still flushes the UDP flows of the endpoints the
// service dropped (they are not in the maps, so relearning them from the maps would lose them).
func TestRecoveredBatchKeepsUDPFlushes(t *testing.T) {
	fb := maps.NewFakeBatcher()
	r := New(fb, 64, 256, zap.NewNop())
	r.batchAt = 1
	x := be("10.244.0.10", 53)
	apply(t, r, state([]netip.Addr{node1}, svc(30053, lb.UDP, x)))
	fail := true
	fb.Fault = func(op string) error {
		if op == "update frontend" && fail {
			fail = false
			return errInjected
		}
		return nil
	}
	_ = r.Apply(state([]netip.Addr{node1}, svc(30053, lb.UDP, be("10.244.0.11", 53), be("10.244.0.12", 53))))
	if !slices.ContainsFunc(fb.Writes, func(w string) bool { return strings.HasPrefix(w, "flush UDP flows of 1/10.244.0.10:53") }) {
		t.Errorf("no flush of the dropped endpoint's flows; writes %q", fb.Writes)
	}
}
