package pktgen

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// PortRange is an inclusive range of ports.
type PortRange struct{ Min, Max uint16 }

// AddrRange is an inclusive range of addresses of the template's family; an IPv6 range's
// addresses differ only in their last 32 bits.
type AddrRange struct{ First, Last netip.Addr }

// Generator sends copies of Template, one flow after another, from every worker.
type Generator struct {
	// Netns is the path of the namespace the devices are in (/var/run/netns/NAME); empty means
	// the calling thread's.
	Netns string
	// Ifindex is the device frames arrive on in the test run; with XDP_TX they leave by it.
	Ifindex int
	// Redirect, when not zero, sends frames to this device with bpf_redirect instead.
	Redirect int
	// Template is the frame to send (see Frame): untagged Ethernet, IPv4 without options or
	// IPv6 without extension headers, TCP or UDP. Shorter than MinSize (MinSizeIPv6TCP for
	// IPv6 TCP), it is sent padded to that.
	Template []byte
	// SrcPorts and SrcAddrs are the source ports and addresses flows are made of; zero values
	// mean the template's.
	SrcPorts PortRange
	SrcAddrs AddrRange
	// Flows is how many (address, port) pairs are cycled through, ports first; 0 means all.
	Flows int
	// Workers is how many goroutines send, each pinned to its own CPU (the first ones the
	// process may use); 0 means 1.
	Workers int
}

// Result is what a run sent.
type Result struct {
	// Sent is how many frames the program handed to XDP_TX or bpf_redirect, counted by the
	// program itself (exact, even when the kernel restarts an interrupted call).
	Sent     uint64        `json:"sent"`
	Duration time.Duration `json:"durationNs"`
	PPS      float64       `json:"pps"`
	Workers  int           `json:"workers"`
	// TxDropped is what the egress device counted as dropped on transmit during the run
	// (a veth whose peer's ring was full, for one); -1 if it could not be read.
	TxDropped int64    `json:"txDropped"`
	PerWorker []uint64 `json:"perWorker"`
	Flows     uint32   `json:"flows"`
}

// xdpMD mirrors struct xdp_md for the test run's context: DataEnd must be the frame's length.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// How long one BPF_PROG_TEST_RUN call should last: short, to stop near a deadline and see
// ctx soon; long enough to amortise a call's cost, tens of microseconds with the program
// held in the XDP dispatcher (shortCall), tens of milliseconds without (longCall).
const (
	shortCall = 50 * time.Millisecond
	longCall  = time.Second
)

// flowPlan is the flows as the BPF program steps through them.
type flowPlan struct {
	portMin   uint16
	portCount uint32
	addrMin   uint32
	addrCount uint32
	flows     uint32
}

func (g Generator) plan(t template) (flowPlan, error) {
	ports := g.SrcPorts
	if ports == (PortRange{}) {
		ports = PortRange{t.src.Port(), t.src.Port()}
	}
	if ports.Min > ports.Max {
		return flowPlan{}, fmt.Errorf("plan flows: source ports %d-%d are empty", ports.Min, ports.Max)
	}
	addrs := g.SrcAddrs
	if addrs == (AddrRange{}) {
		addrs = AddrRange{t.src.Addr(), t.src.Addr()}
	}
	if addrs.First.Is4() != t.src.Addr().Is4() || addrs.Last.Is4() != t.src.Addr().Is4() {
		return flowPlan{}, fmt.Errorf("plan flows: source addresses %v-%v are not of the template's family", addrs.First, addrs.Last)
	}
	if addrs.Last.Less(addrs.First) {
		return flowPlan{}, fmt.Errorf("plan flows: source addresses %v-%v are empty", addrs.First, addrs.Last)
	}
	first, last := addrs.First.As16(), addrs.Last.As16()
	if [12]byte(first[:12]) != [12]byte(last[:12]) {
		return flowPlan{}, fmt.Errorf("plan flows: source addresses %v-%v differ before their last 32 bits", addrs.First, addrs.Last)
	}
	p := flowPlan{
		portMin:   ports.Min,
		portCount: uint32(ports.Max-ports.Min) + 1,
		addrMin:   binary.BigEndian.Uint32(first[12:]),
		addrCount: binary.BigEndian.Uint32(last[12:]) - binary.BigEndian.Uint32(first[12:]) + 1,
	}
	if t.ipv6 {
		// The generator writes the last 32 bits over the template's: its prefix must be theirs.
		tmpl := t.src.Addr().As16()
		if [12]byte(tmpl[:12]) != [12]byte(first[:12]) {
			return flowPlan{}, fmt.Errorf("plan flows: source addresses %v-%v do not share the template's first 96 bits (%v)", addrs.First, addrs.Last, t.src.Addr())
		}
	}
	if p.addrCount == 0 {
		return flowPlan{}, errors.New("plan flows: 2^32 source addresses are too many")
	}
	all := min(uint64(p.portCount)*uint64(p.addrCount), math.MaxUint32)
	switch {
	case g.Flows < 0 || uint64(g.Flows) > all:
		return flowPlan{}, fmt.Errorf("plan flows: %d flows: the ranges make %d", g.Flows, all)
	case g.Flows == 0:
		p.flows = uint32(all)
	default:
		p.flows = uint32(g.Flows)
	}
	return p, nil
}

func (g Generator) load(t template, p flowPlan) (*pktgenObjects, error) {
	spec, err := loadPktgen()
	if err != nil {
		return nil, fmt.Errorf("load generator spec: %w", err)
	}
	var tmpl [MinSizeIPv6TCP / 8]uint64
	for i := range min(len(tmpl), len(t.data)/8) {
		// Native order: the program stores these words into the frame as they lie in memory.
		tmpl[i] = binary.NativeEndian.Uint64(t.data[i*8:])
	}
	vars := map[string]any{
		pktgenVarCfgTmpl:            tmpl,
		pktgenVarCfgProto:           uint8(t.proto),
		pktgenVarCfgIpv6:            boolByte(t.ipv6),
		pktgenVarCfgTmplLong:        boolByte(minSizeOf(t.ipv6, t.proto) > MinSize),
		pktgenVarCfgFlows:           p.flows,
		pktgenVarCfgPortMin:         p.portMin,
		pktgenVarCfgPortCount:       p.portCount,
		pktgenVarCfgAddrMin:         p.addrMin,
		pktgenVarCfgAddrCount:       p.addrCount,
		pktgenVarCfgRedirectIfindex: uint32(g.Redirect),
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	var objs pktgenObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load generator: %+v", ve)
		}
		return nil, fmt.Errorf("load generator: %w", err)
	}
	return &objs, nil
}

// Run sends until count frames are sent or d has passed, whichever comes first (a zero
// count or d means no such limit; one is needed), or ctx ends. A run stopped by ctx returns
// what it sent and ctx's error.
func (g Generator) Run(ctx context.Context, count uint64, d time.Duration) (Result, error) {
	if count == 0 && d <= 0 {
		return Result{}, errors.New("run generator: give a count or a duration")
	}
	if g.Ifindex <= 0 {
		return Result{}, errors.New("run generator: no ingress device (Ifindex)")
	}
	t, err := parseTemplate(g.Template)
	if err != nil {
		return Result{}, err
	}
	p, err := g.plan(t)
	if err != nil {
		return Result{}, err
	}
	workers := max(g.Workers, 1)
	cpus, err := usableCPUs(workers)
	if err != nil {
		return Result{}, err
	}
	objs, err := g.load(t, p)
	if err != nil {
		return Result{}, err
	}
	defer objs.Close()
	// Best effort: without it every call costs ~25 ms, which longer calls dilute.
	callTarget := shortCall
	if release, err := HoldInDispatcher(objs.PktgenXdp); err == nil {
		defer release()
	} else {
		callTarget = longCall
	}
	ns, err := openNetns(g.Netns)
	if err != nil {
		return Result{}, err
	}
	defer ns.Close()

	// Each worker's CPU gets its share of count and a start spread over the flows, so
	// workers send different flows at any moment; CPUs without a worker may send nothing.
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return Result{}, fmt.Errorf("count CPUs: %w", err)
	}
	states := make([]pktgenState, ncpu)
	for i, cpu := range cpus {
		limit := uint64(math.MaxUint64)
		if count > 0 {
			limit = count / uint64(workers)
			if uint64(i) < count%uint64(workers) {
				limit++
			}
		}
		f := uint32(uint64(i) * uint64(p.flows) / uint64(workers))
		states[cpu] = pktgenState{Limit: limit, Flow: f, PortIdx: f % p.portCount, AddrIdx: f / p.portCount}
	}
	if err := objs.PktgenState.Put(uint32(0), states); err != nil {
		return Result{}, fmt.Errorf("write generator state: %w", err)
	}

	egress := g.Ifindex
	if g.Redirect != 0 {
		egress = g.Redirect
	}
	dropped0, dropErr := txDropped(ns, egress)

	var deadline time.Time
	start := time.Now()
	if d > 0 {
		deadline = start.Add(d)
	}
	w := worker{callTarget: callTarget, prog: objs.PktgenXdp, state: objs.PktgenState, ns: ns, ifindex: g.Ifindex, data: t.data, deadline: deadline}
	errs := make([]error, len(cpus))
	var wg sync.WaitGroup
	for i, cpu := range cpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.run(ctx, cpu, states[cpu].Limit)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	res := Result{Duration: elapsed, Workers: workers, Flows: p.flows, TxDropped: -1}
	if dropped1, err := txDropped(ns, egress); err == nil && dropErr == nil {
		res.TxDropped = int64(dropped1 - dropped0)
	}
	if err := objs.PktgenState.Lookup(uint32(0), &states); err != nil {
		return res, fmt.Errorf("read generator state: %w", err)
	}
	for _, cpu := range cpus {
		res.PerWorker = append(res.PerWorker, states[cpu].Sent)
		res.Sent += states[cpu].Sent
	}
	if elapsed > 0 {
		res.PPS = float64(res.Sent) / elapsed.Seconds()
	}
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	return res, ctx.Err()
}

type worker struct {
	callTarget time.Duration
	prog       *ebpf.Program
	state      *ebpf.Map
	ns         netns.NsHandle
	ifindex    int
	data       []byte
	deadline   time.Time
}

// run sends from one CPU until its state says limit frames went out, the deadline passes or
// ctx ends.
func (w worker) run(ctx context.Context, cpu int, limit uint64) error {
	if err := lockInto(w.ns); err != nil {
		return err
	}
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin worker to CPU %d: %w", cpu, err)
	}
	opts := ebpf.RunOptions{
		Data:    w.data,
		Flags:   unix.BPF_F_TEST_XDP_LIVE_FRAMES,
		Context: xdpMD{DataEnd: uint32(len(w.data)), IngressIfindex: uint32(w.ifindex)},
	}
	var states []pktgenState
	rate := 1e6 // frames per second, until measured
	for ctx.Err() == nil {
		if err := w.state.Lookup(uint32(0), &states); err != nil {
			return fmt.Errorf("read generator state: %w", err)
		}
		left := limit - states[cpu].Sent
		if left == 0 {
			return nil
		}
		budget := w.callTarget
		if !w.deadline.IsZero() {
			until := time.Until(w.deadline)
			if until <= 0 {
				return nil
			}
			budget = min(budget, until)
		}
		n := uint64(max(rate*budget.Seconds(), 64))
		opts.Repeat = uint32(min(n, left, math.MaxUint32))
		t0 := time.Now()
		if _, err := w.prog.Run(&opts); err != nil {
			return fmt.Errorf("test-run generator on CPU %d: %w", cpu, err)
		}
		if el := time.Since(t0); el > 0 {
			rate = float64(opts.Repeat) / el.Seconds()
		}
	}
	return nil
}

// usableCPUs returns the first n CPUs the process may run on.
func usableCPUs(n int) ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("get CPU affinity: %w", err)
	}
	var cpus []int
	for c := 0; c < len(set)*64 && len(cpus) < n; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) < n {
		return nil, fmt.Errorf("pin %d workers: only %d CPUs are usable", n, len(cpus))
	}
	return cpus, nil
}

// txDropped reads a device's transmit drop counter.
func txDropped(ns netns.NsHandle, ifindex int) (uint64, error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return 0, fmt.Errorf("open netlink in netns: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByIndex(ifindex)
	if err != nil {
		return 0, fmt.Errorf("find device %d: %w", ifindex, err)
	}
	if l.Attrs().Statistics == nil {
		return 0, fmt.Errorf("read device %d statistics: none", ifindex)
	}
	return l.Attrs().Statistics.TxDropped, nil
}
