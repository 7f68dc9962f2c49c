package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/sluicelb/sluice/internal/testutil"
)

// Down finds what an interrupted Up left without its records: processes by network
// namespace, mount namespace and cgroup (no pidfiles), the node mount namespaces and their
// bpffs, the cgroups, the namespaces; and it is idempotent.
func TestDownAfterAnInterruptedUp(t *testing.T) {
	testutil.RequirePrivileges(t)
	if _, err := os.Stat("/run/netns/" + gwNS); err == nil {
		t.Fatal("a cluster is running (make cluster-down first): this test would take its names")
	}
	c := Config{Dir: filepath.Join(t.TempDir(), "cluster")}
	if err := c.defaults(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Down(c) })
	if err := upNetwork(false); err != nil {
		t.Fatal(err)
	}
	n := Nodes[0]
	if err := makeCgroups(n); err != nil {
		t.Fatal(err)
	}
	if err := c.makeMountNS(n); err != nil {
		t.Fatal(err)
	}
	// What a crashed run leaves running: a daemon in a node's namespaces, a "container" in
	// the node's cgroup only, and something in the gateway's network namespace.
	var pids []int
	start := func(argv ...string) *exec.Cmd {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { _ = cmd.Wait() }()
		pids = append(pids, cmd.Process.Pid)
		return cmd
	}
	start(c.inNode(n, "sleep", "1000")...)
	start(inNS(gwNS, "", "sleep", "1000")...)
	contained := start("sleep", "1000")
	for _, h := range cgroupHierarchies() {
		if filepath.Base(h) == "pids" {
			p := filepath.Join(h, cgroupRoot(n), "cgroup.procs")
			if err := os.WriteFile(p, []byte(fmt.Sprint(contained.Process.Pid)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := Down(c); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d still runs", pid)
		}
	}
	checkNothingLeft(t, c)
	if err := Down(c); err != nil {
		t.Errorf("a second Down: %v", err)
	}
}
