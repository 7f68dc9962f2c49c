package datapath_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/testutil"
)

// lastHelper510 is the highest BPF helper ID Linux 5.10 has (BPF_FUNC_redirect_peer); later
// kernels add helpers after it, so a higher ID would not load on 5.10.
const lastHelper510 = asm.BuiltinFunc(155)

// gatedHelpers are newer helpers a program calls only behind a frozen constant the agent sets
// after probing the kernel: the verifier prunes the call unseen where the constant is 0
// (TestSocketLB and TestSocketLBIPv6 load them so under make test-kernel's 5.10).
var gatedHelpers = map[asm.BuiltinFunc]string{
	asm.FnSetRetval: "cfg_set_retval",
}

// Every program uses only helpers that 5.10 has, but gated ones, and no kfuncs (which 5.10
// lacks for these program types): the kernel floor users run, checked on the object we ship.
func TestHelpersExistOnLinux510(t *testing.T) {
	spec, err := datapath.LoadSluice()
	if err != nil {
		t.Fatal(err)
	}
	sock, err := datapath.LoadSluiceSock()
	if err != nil {
		t.Fatal(err)
	}
	v6, err := datapath.LoadSluice6()
	if err != nil {
		t.Fatal(err)
	}
	sock6, err := datapath.LoadSluiceSock6()
	if err != nil {
		t.Fatal(err)
	}
	progs := map[string]*ebpf.ProgramSpec{}
	for _, s := range []*ebpf.CollectionSpec{spec, sock, v6, sock6} {
		for name, p := range s.Programs {
			progs[name] = p
		}
	}
	for name, p := range progs {
		used := map[asm.BuiltinFunc]bool{}
		for _, ins := range p.Instructions {
			switch {
			case ins.IsKfuncCall():
				t.Errorf("%s calls a kfunc (%v): not on 5.10", name, ins)
			case ins.IsBuiltinCall():
				fn := asm.BuiltinFunc(ins.Constant)
				used[fn] = true
				if _, gated := gatedHelpers[fn]; fn > lastHelper510 && !gated {
					t.Errorf("%s calls %v (helper %d), newer than 5.10 (last: %d)", name, fn, fn, lastHelper510)
				}
			}
		}
		var list []string
		for fn := range used {
			list = append(list, fn.String())
		}
		t.Logf("%s: %d instructions, helpers %v", name, len(p.Instructions), list)
	}
}

// loadWithStats loads the objects of both families unpinned with the verifier's statistics in
// each program's log, once per test binary (see loadShared for why), and returns their
// programs together; the collections are never closed.
func loadWithStats(t *testing.T) (*ebpf.CollectionSpec, *ebpf.Collection) {
	t.Helper()
	testutil.RequirePrivileges(t)
	withStats.Do(func() {
		withStats.spec = &ebpf.CollectionSpec{Programs: map[string]*ebpf.ProgramSpec{}}
		withStats.coll = &ebpf.Collection{Programs: map[string]*ebpf.Program{}}
		cfg := datapath.Config{PodPrograms: true}
		for _, load := range []func(datapath.Config) (*ebpf.CollectionSpec, error){datapath.Spec, datapath.SpecIPv6} {
			spec, err := load(cfg)
			if err != nil {
				withStats.err = err
				return
			}
			coll, err := ebpf.NewCollectionWithOptions(spec,
				ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
			if err != nil {
				withStats.err = err
				return
			}
			for name, p := range coll.Programs {
				withStats.spec.Programs[name], withStats.coll.Programs[name] = spec.Programs[name], p
			}
		}
	})
	if withStats.err != nil {
		t.Fatal(withStats.err)
	}
	return withStats.spec, withStats.coll
}

var withStats struct {
	sync.Once
	spec *ebpf.CollectionSpec
	coll *ebpf.Collection
	err  error
}

// Every program leaves the verifier room: at most 60% of its 1M-instruction budget, so a
// change that multiplies the paths it walks (as inlining the backend choice once did, 5x) fails
// here, not on a user's kernel. Reports each program's figure.
func TestVerifierHeadroom(t *testing.T) {
	_, coll := loadWithStats(t)
	for name, p := range coll.Programs {
		var n int
		log := p.VerifierLog
		i := strings.Index(log, "processed ")
		if i < 0 {
			t.Fatalf("%s: no statistics in the verifier log", name)
		}
		if _, err := fmt.Sscanf(log[i:], "processed %d insns", &n); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s: the verifier walked %d instructions", name, n)
		if n > 600000 {
			t.Errorf("%s: the verifier walked %d instructions, over 60%% of its 1,000,000 budget", name, n)
		}
	}
}

// The verifier gives a tc program that writes packet data directly a prologue that makes the
// head writable before every run, which copies the head of every cloned sk_buff: each TCP
// segment the node sends passes tc egress as one. The egress programs (a NIC's, a pod
// device's) write only through helpers, so the node's own traffic pays no copy.
func TestTCEgressHasNoWritableHeadPrologue(t *testing.T) {
	testutil.RequirePrivileges(t)
	dp := loadShared(t, datapath.Config{PodPrograms: true})
	for name, p := range map[string]*ebpf.Program{"sluice_tc_egress": dp.Objs.SluiceTcEgress, "sluice_tc_to_pod": dp.Objs.SluiceTcToPod,
		"sluice_tc_ingress": dp.Objs.SluiceTcIngress} {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		insns, err := info.Instructions()
		if err != nil {
			t.Fatal(err)
		}
		// The prologue (bpf_unclone_prologue): r6 = *(u8 *)(r1 + cloned); w6 &= mask;
		// if r6 == 0 goto start; r6 = r1; r2 ^= r2; call bpf_skb_pull_data; ...
		prologue := len(insns) > 6 && insns[0].OpCode.Class() == asm.LdXClass && insns[0].Dst == asm.R6 &&
			insns[0].Src == asm.R1 && insns[0].OpCode.Size() == asm.Byte && insns[5].OpCode.JumpOp() == asm.Call
		if name != "sluice_tc_ingress" && prologue {
			t.Errorf("%s starts with the unclone prologue:\n%v", name, insns[:7])
		}
		// Ingress rewrites MACs and builds rejects in place: it has one (a check that the test
		// recognises the prologue at all).
		if name == "sluice_tc_ingress" && !prologue {
			t.Errorf("%s: no unclone prologue recognised; the test cannot tell:\n%v", name, insns[:7])
		}
	}
}

// Every call chain of every program fits the 512 bytes of stack the verifier allows all its
// frames together, counted as Linux 5.10 and 6.1 count them: each frame rounded up to 32 bytes
// (an empty one as 32). Newer kernels count closer and accept more, so a chain too deep for the
// older ones would load on this machine and fail on users' kernels; this test fails here. The
// frames' depths are the verifier's own ("stack depth a+b+..."), the calls those in the object.
func TestStackFitsOlderVerifiers(t *testing.T) {
	spec, coll := loadWithStats(t)
	for name, p := range coll.Programs {
		// Functions in the order the verifier numbers them (by offset), and who calls whom.
		var order []string
		calls := map[string][]string{}
		for _, ins := range spec.Programs[name].Instructions {
			if sym := ins.Symbol(); sym != "" {
				order = append(order, sym)
			}
			if ins.IsFunctionCall() && len(order) > 0 {
				calls[order[len(order)-1]] = append(calls[order[len(order)-1]], ins.Reference())
			}
		}
		log := p.VerifierLog
		i := strings.Index(log, "stack depth ")
		if i < 0 {
			t.Fatalf("%s: no stack depths in the verifier log", name)
		}
		fields := strings.Split(strings.Fields(log[i+len("stack depth "):])[0], "+")
		if len(fields) != len(order) {
			t.Fatalf("%s: %d stack depths for %d functions %v", name, len(fields), len(order), order)
		}
		frame := map[string]int{}
		for j, f := range fields {
			var d int
			if _, err := fmt.Sscanf(f, "%d", &d); err != nil {
				t.Fatalf("%s: stack depth %q: %v", name, f, err)
			}
			frame[order[j]] = (max(d, 1) + 31) / 32 * 32
		}
		var deepest func(fn string) (int, []string)
		deepest = func(fn string) (int, []string) {
			best, chain := 0, []string(nil)
			for _, c := range calls[fn] {
				if d, ch := deepest(c); d > best {
					best, chain = d, ch
				}
			}
			return frame[fn] + best, append([]string{fmt.Sprintf("%s (%d)", fn, frame[fn])}, chain...)
		}
		total, chain := deepest(order[0])
		t.Logf("%s: deepest call chain %d bytes: %s", name, total, strings.Join(chain, " -> "))
		if total > 512 {
			t.Errorf("%s: the call chain %s needs %d bytes of stack as Linux 5.10 and 6.1 count it, over 512", name, strings.Join(chain, " -> "), total)
		}
	}
}
