package lab_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/tools/lab"
)

// Two agents never program one --bpffs: a second one started beside the first (a rolling
// update that starts the new pod first) waits for it to exit, then takes over.
func TestE2ESecondAgentWaitsForTheFirst(t *testing.T) {
	c := startCluster(t, "")
	second, err := c.StartAgent(lab.AgentOptions{Binary: agentBinary(t), Manifests: c.manifests})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := second.Stop(); err != nil {
			t.Errorf("second agent: %v", err)
		}
		if t.Failed() {
			t.Logf("second agent's logs:\n%s", second.Logs())
		}
	}()
	c.waitFor(t, "the second agent to wait", func() error {
		if !strings.Contains(second.Logs(), "Another sluice-agent holds --bpffs") {
			return fmt.Errorf("not waiting yet")
		}
		return nil
	})
	if strings.Contains(second.Logs(), "Restored state") {
		t.Fatal("the second agent went on while the first held --bpffs")
	}
	if err := c.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	c.agent = second
	c.waitReady(t)
	if _, err := lab.HTTPGet(c.Client, c.nodePort(30080)); err != nil {
		t.Fatal(err)
	}
}
