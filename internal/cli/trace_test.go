package cli

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/internal/maps"
)

func TestTrace(t *testing.T) {
	f := newFixture(t)
	k := maps.NewKernel(&f.dp.Objs.SluiceMaps)
	ctBefore := f.ctCount(t)
	statsBefore, _ := k.ServiceStats(2)
	reasonsBefore, _ := k.Reasons()

	for _, c := range []struct {
		name string
		args []string
		want TraceJSON
	}{
		{"new flow to a remote backend", []string{"--src", "10.0.0.9:42000", "--dst", "10.0.0.1:30081"},
			TraceJSON{Verdict: "XDP_TX", Stage: "new-flow", Service: "default/api:http", Backend: "10.0.0.2:8080"}},
		{"established flow", []string{"--src", "10.0.0.9:41000", "--dst", "10.0.0.1:30081", "--flags", "A"},
			TraceJSON{Verdict: "XDP_TX", Stage: "established", Service: "default/api:http", Backend: "10.0.0.2:8080",
				Output: fmt.Sprintf("tcp 10.0.0.1:%d -> 10.0.0.2:8080 [A] ttl 63", f.snat)}},
		{"backend's reply", []string{"--src", "10.0.0.2:8080", "--dst", fmt.Sprintf("10.0.0.1:%d", f.snat), "--flags", "SA"},
			TraceJSON{Verdict: "XDP_TX", Stage: "reply", Service: "default/api:http",
				Output: "tcp 10.0.0.1:30081 -> 10.0.0.9:41000 [SA] ttl 63"}},
		{"no endpoints", []string{"--src", "10.0.0.9:42001", "--dst", "10.0.0.1:30090"},
			TraceJSON{Verdict: "XDP_TX", Stage: "reject", Reason: "reject_tcp_rst", Service: "default/empty:http",
				Output: "tcp 10.0.0.1:30090 -> 10.0.0.9:42001 [AR] ttl 64"}},
		{"UDP new flow", []string{"--proto", "udp", "--src", "10.0.0.9:42002", "--dst", "10.0.0.1:30053"},
			TraceJSON{Verdict: "XDP_TX", Stage: "new-flow", Service: "default/dns:dns", Backend: "10.0.0.2:5353"}},
		{"no frontend on the port", []string{"--src", "10.0.0.9:42003", "--dst", "10.0.0.1:22"},
			TraceJSON{Verdict: "XDP_PASS", Stage: "not-ours"}},
		{"NodePort on another address", []string{"--src", "10.0.0.9:42004", "--dst", "10.0.0.50:30081"},
			TraceJSON{Verdict: "XDP_PASS", Stage: "no-frontend"}},
		{"mid-flow segment without a flow", []string{"--src", "10.0.0.9:42005", "--dst", "10.0.0.1:30081", "--flags", "A"},
			TraceJSON{Verdict: "XDP_PASS", Stage: "no-flow", Reason: "pass_no_flow", Service: "default/api:http"}},
		{"the tc program", []string{"--hook", "tc", "--src", "10.0.0.9:42006", "--dst", "10.0.0.1:30081"},
			TraceJSON{Verdict: "TC_ACT_REDIRECT", Stage: "new-flow", Service: "default/api:http", Backend: "10.0.0.2:8080"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var got TraceJSON
			f.runJSON(t, &got, append([]string{"trace"}, c.args...)...)
			if got.Verdict != c.want.Verdict || got.Stage != c.want.Stage || got.Service != c.want.Service ||
				got.Backend != c.want.Backend || got.Reason != c.want.Reason || (c.want.Output != "" && got.Output != c.want.Output) {
				t.Errorf("\n got %+v\nwant %+v", got, c.want)
			}
		})
	}

	// Nothing left behind: no conntrack entry, no counter moved.
	if n := f.ctCount(t); n != ctBefore {
		t.Errorf("conntrack entries %d -> %d", ctBefore, n)
	}
	if s, _ := k.ServiceStats(2); s != statsBefore {
		t.Errorf("service counters moved: %+v -> %+v", statsBefore, s)
	}
	if r, _ := k.Reasons(); fmt.Sprint(r) != fmt.Sprint(reasonsBefore) {
		t.Errorf("reason counters moved: %v -> %v", reasonsBefore, r)
	}

	table := f.run(t, "trace", "--src", "10.0.0.9:42000", "--dst", "10.0.0.1:30081")
	for _, want := range []string{"verdict", "XDP_TX", "new-flow", "default/api:http", "remote (DNAT + SNAT)", "rewritten", "tcp 10.0.0.1:"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if !strings.Contains(strings.Join(strings.Fields(table), " "), "nothing written") {
		t.Errorf("table:\n%s", table)
	}
}
