package main

import (
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const wrkOutput = `Running 5s test @ http://10.89.0.11:30100/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.11us    1.02ms  21.63ms   94.79%
    Req/Sec    16.91k     1.22k   18.64k    74.00%
  Latency Distribution
     50%  602.00us
     75%  778.00us
     90%    1.08ms
     99%    4.37ms
  84123 requests in 5.00s, 9.71MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 1
Requests/sec:  16820.53
Transfer/sec:      1.94MB
`

func TestParseWrk(t *testing.T) {
	w, err := parseWrk(wrkOutput)
	if err != nil {
		t.Fatal(err)
	}
	want := Wrk{Requests: 84123, Seconds: 5, RPS: 16820.53, P50ms: 0.602, P99ms: 4.37, Errors: 6, ErrorDetail: "read 3, timeout 2, non-2xx 1"}
	if *w != want {
		t.Fatalf("parsed %+v\nwant   %+v", *w, want)
	}
	if _, err := parseWrk("unable to connect"); err == nil {
		t.Fatal("parsed garbage")
	}
}

func TestNiceMax(t *testing.T) {
	for _, c := range []struct{ v, top, step float64 }{
		{0.9, 1, 0.2}, {4.92 * 1.05, 6, 1}, {13.8, 20, 5}, {17373, 20000, 5000}, {83, 100, 20},
	} {
		top, step := niceMax(c.v)
		if abs(top-c.top) > 1e-9 || abs(step-c.step) > 1e-9 {
			t.Errorf("niceMax(%v) = %v, %v; want %v, %v", c.v, top, step, c.top, c.step)
		}
	}
}

func abs(v float64) float64 {
	if v < 0 {
		return -v
	}
	return v
}

// A results file renders into a report whose goals and ratios follow from its figures, and
// into charts that are well-formed SVG.
func TestReport(t *testing.T) {
	pps := func(fwd float64) *PPS {
		return &PPS{Path: "remote", GenMpps: fwd, FwdMpps: fwd, NsPerPkt: 1e3 / fwd, NodeNsPerPkt: 1e3/fwd - 50}
	}
	wrk := func(rps float64) *Wrk { return &Wrk{RPS: rps, P50ms: 0.5, P99ms: 2, Seconds: 5} }
	res := &Results{Mode: "full", Started: time.Date(2026, 11, 23, 4, 0, 0, 0, time.UTC), Seconds: 600,
		Machine:  Machine{Hostname: "vm", CPUs: 2, Kernel: "6.18"},
		Settings: Settings{Flows: 16384, PPSRuns: 3, PPSSeconds: 3, PerPktServices: []int{1, 100000}, PerPktBackends: []int{1}, SweepBudgetSecs: 120},
		Floor:    pps(20),
		PerPacket: &PerPacket{TrivialNs: 5, BareNs: 7, TrivialSingleNs: 30, Points: []*PerPktPoint{
			{Services: 1, Backends: 1, NewFlowNs: 500, NewFlowOneNs: 450, EstablishedNs: 100, ReplyNs: 100, MissNs: 9, TrivialNs: 5, TrivialOneNs: 30},
			{Services: 100000, Backends: 1, NewFlowNs: 2400, NewFlowOneNs: 470, EstablishedNs: 102, ReplyNs: 101, MissNs: 9, TrivialNs: 5, TrivialOneNs: 30},
		}},
		Sweep: []*SweepPoint{
			{Datapath: "sluice-xdp", Services: 4, ProgramSecs: 0.6, PPS: pps(4.7), WrkClose: wrk(17000)},
			{Datapath: "sluice-xdp", Services: 10000, ProgramSecs: 1, PPS: pps(4.9), WrkClose: wrk(17300)},
			{Datapath: "kube-proxy-iptables", Services: 4, ProgramSecs: 0.6, PPS: pps(0.9), WrkClose: wrk(11500)},
			{Datapath: "kube-proxy-iptables", Services: 10000, ProgramSecs: 130, OverBudget: true, Error: "over budget"},
		},
	}
	for _, d := range []struct {
		name string
		mpps float64
	}{{"plain", 3}, {"bare-xdp", 13.8}, {"sluice-xdp", 4.7}, {"sluice-tc", 2.2}, {"kube-proxy-iptables", 0.85}} {
		dp := &Datapath{Name: d.name, PPS: pps(d.mpps), PPSLocal: pps(d.mpps),
			Iperf: &Iperf{Gbps: 4}, WrkKeep: wrk(70000), WrkClose: wrk(15000)}
		if d.name != "bare-xdp" {
			dp.PPS6, dp.PPSLocal6 = pps(d.mpps*0.8), pps(d.mpps*0.8)
		}
		if d.name == "sluice-tc" {
			dp.PPS6, dp.PPSLocal6, dp.Error6 = nil, nil, "IPv6 services not served"
		}
		res.Datapaths = append(res.Datapaths, dp)
	}
	res.Floor6 = pps(18)
	res.Datapaths = append(res.Datapaths, &Datapath{Name: "kube-proxy-nftables", Error: "nft: not found"})
	computeRatios(res)

	goals := map[string]Goal{}
	for _, g := range res.Goals {
		goals[strings.Fields(g.Goal)[0]+" "+g.Cmp+" "+trimFloat(g.Target)] = g
	}
	check := func(key string, measured float64, met bool) {
		t.Helper()
		g, ok := goals[key]
		if !ok || !g.Known || abs(g.Measured-measured) > 1e-6 || g.Met != met {
			t.Errorf("goal %q: %+v, want measured %v met %v", key, g, measured, met)
		}
	}
	check("forwarded >= 5", 4.7/0.85, true)
	check("forwarded >= 0.85", 4.7/13.8, false)
	check("per-packet <= 1.1", 470.0/450, true)
	check("established <= 1.5", 100.0/5, false)
	if v := res.ratio("sluice-xdp / kube-proxy-iptables, forwarded Mpps, IPv6, remote backend"); abs(v-4.7/0.85) > 1e-6 {
		t.Errorf("IPv6 ratio against kube-proxy iptables: %v, want %v", v, 4.7/0.85)
	}

	dir := t.TempDir()
	jsonPath := filepath.Join(dir, "results.json")
	if err := os.WriteFile(jsonPath, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	md, err := renderReport(res, filepath.Join(dir, "docs"), "benchmarks.md", "bench-", jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Goals", "## Where we stand, and why", "## Datapaths side by side", "## Per-packet cost",
		"## Scale sweep", "kube-proxy-nftables | failed: nft: not found", "over the 120 s budget at 10,000 services",
		"(../results.json)", "bench-mpps.svg",
		"### Packet rate in IPv6", "**IPv6: 5.5× kube-proxy.**", "| bare-xdp | not measured (IPv4 only) |", "| sluice-tc | failed: IPv6 services not served |",
		"| sluice-xdp | **3.76** (gen 3.76, 0.0% lost) | 0.80× |", "bench-perpacket.svg", "bench-scale-mpps.svg"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	svgs, _ := filepath.Glob(filepath.Join(dir, "docs", "bench-*.svg"))
	if len(svgs) < 4 {
		t.Fatalf("charts: %v", svgs)
	}
	for _, f := range svgs {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := xml.NewDecoder(strings.NewReader(string(data)))
		for {
			if _, err := dec.Token(); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
		}
	}
}
