package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/testutil"
)

// smokeTest is the upstream test the smoke runs: NodePort traffic from pods and from the
// node, through sluice on the NICs and kube-proxy beside it.
const smokeTest = "[sig-network] Services should be able to create a functioning NodePort service [Conformance]"

// TestClusterSmoke brings the real cluster up (sluice's DaemonSet Ready on both nodes: Up
// waits for it), runs one upstream NodePort test against it, and brings it down, leaving
// nothing: no namespace, mount, cgroup, process or state. make test runs it on its own after
// the rest (it takes the machine's two cores for a minute).
func TestClusterSmoke(t *testing.T) {
	testutil.RequirePrivileges(t)
	if _, err := os.Stat(filepath.Join(BinDir(), "e2e.test")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the cluster is not built (make cluster-build): %v", err)
		}
		t.Skipf("the cluster is not built (make cluster-build): %v", err)
	}
	// One cluster per machine: its namespaces and cgroups have fixed names.
	if _, err := os.Stat("/run/netns/" + gwNS); err == nil {
		t.Fatal("a cluster is running (make cluster-down first): the smoke would take its names")
	}
	dir := t.TempDir()
	cfg := Config{Dir: filepath.Join(dir, "cluster"), Src: "../..", Version: "smoke", Logf: t.Logf}
	t.Cleanup(func() {
		if err := Down(cfg); err != nil {
			t.Error(err)
		}
		checkNothingLeft(t, cfg)
	})
	c, err := Up(cfg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.RunE2E(context.Background(), E2E{Focus: []string{smokeTest}, Procs: 1, Out: filepath.Join(dir, "e2e"), Timeout: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].State != "passed" {
		log, _ := os.ReadFile(filepath.Join(dir, "e2e", "e2e.log"))
		t.Fatalf("%+v\n%s", res, tail(string(log), 6000))
	}
	t.Logf("%s: %s in %s", res[0].Name, res[0].State, res[0].Duration.Round(time.Second))
	checkCleanupOfEitherSide(t, c)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func checkNothingLeft(t *testing.T, c Config) {
	t.Helper()
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Errorf("%s is still there (%v)", c.Dir, err)
	}
	for _, ns := range append([]string{gwNS, clientNS}, nodeNames()...) {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			t.Errorf("network namespace %s is still there", ns)
		}
	}
	for _, n := range Nodes {
		for _, h := range cgroupHierarchies() {
			if _, err := os.Stat(filepath.Join(h, cgroupRoot(n))); err == nil {
				t.Errorf("cgroup %s%s is still there", h, cgroupRoot(n))
			}
		}
	}
	if m := mountsUnder(c.Dir); len(m) > 0 {
		t.Errorf("still mounted: %v", m)
	}
	mine := pidsWhere(func(pid int) bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		return strings.Contains(string(b), c.Dir) || strings.Contains(string(b), BinDir())
	})
	if len(mine) > 0 {
		t.Errorf("processes still running: %v", mine)
	}
}
