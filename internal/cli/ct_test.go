package cli

import (
	"fmt"
	"strings"
	"testing"
)

func TestCTList(t *testing.T) {
	f := newFixture(t)
	var flows []FlowJSON
	f.runJSON(t, &flows, "ct", "list")
	if len(flows) != 2 {
		t.Fatalf("%d flows: %+v", len(flows), flows)
	}
	var tcp FlowJSON
	for _, fl := range flows {
		if fl.Protocol == "TCP" {
			tcp = fl
		}
	}
	want := FlowJSON{Protocol: "TCP", Client: "10.0.0.9:41000", Frontend: "10.0.0.1:30081", Backend: "10.0.0.2:8080",
		SNAT: fmt.Sprintf("10.0.0.1:%d", f.snat), Service: "default/api:http", State: "syn"}
	tcp.ServiceID, tcp.BackendID, tcp.IdleSeconds = 0, 0, 0
	if tcp != want {
		t.Errorf("tcp flow\n got %+v\nwant %+v", tcp, want)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--count"}, "2"},
		{[]string{"--count", "--service", "default/api"}, "1"},
		{[]string{"--count", "--service", "30053"}, "1"},
		{[]string{"--count", "--service", "default/web"}, "0"},
		{[]string{"--count", "--client", "10.0.0.9"}, "2"},
		{[]string{"--count", "--client", "10.0.0.9:41001"}, "1"},
		{[]string{"--count", "--backend", "10.0.0.2:5353"}, "1"},
	} {
		if got := strings.TrimSpace(f.run(t, append([]string{"ct", "list"}, c.args...)...)); got != c.want {
			t.Errorf("ct list %v = %s, want %s", c.args, got, c.want)
		}
	}
	if table := f.run(t, "ct", "list", "--service", "default/dns"); !strings.Contains(table, "udp") || !strings.Contains(table, "10.0.0.9:41001") {
		t.Errorf("table:\n%s", table)
	}
	if _, errOut, code := f.runCode(t, "ct", "list", "--client", "nonsense"); code == 0 || !strings.Contains(errOut, "want IP or IP:PORT") {
		t.Errorf("bad filter: %d %s", code, errOut)
	}
}
