package cluster

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The focus regexp selects exactly the listed names, as ginkgo matches them ("<suite> <name>").
func TestFocusSelectsExactlyTheList(t *testing.T) {
	names, err := ReadFocus("e2e/nodeport.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(names) < 27 {
		t.Fatalf("%d tests in the focus list, want the issue's 27 at least", len(names))
	}
	cip, err := ReadFocus("e2e/clusterip.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(cip) < 12 {
		t.Fatalf("%d tests in the ClusterIP list, want the 12 the kube-proxy-free issue names at least", len(cip))
	}
	re := regexp.MustCompile(focusRegexp(names))
	for _, n := range cip {
		if re.MatchString("Kubernetes e2e suite " + n) {
			t.Errorf("a ClusterIP test selected by the NodePort list: %s", n)
		}
	}
	for _, n := range names {
		if !re.MatchString("Kubernetes e2e suite " + n) {
			t.Errorf("not selected: %s", n)
		}
	}
	for _, other := range []string{
		"[sig-network] Services should be able to create a functioning NodePort service [Conformance] extra",
		"[sig-network] Networking Granular Checks: Services should function for node-Service: sctp [Feature:SCTPConnectivity]",
		"[sig-network] Services should have session affinity work for service with type clusterIP [LinuxOnly] [Conformance]",
	} {
		if re.MatchString("Kubernetes e2e suite " + other) {
			t.Errorf("selected, but not in the list: %s", other)
		}
	}
}

// JUnit names carry the labels after the name; tests the run never reached fail as "not run".
func TestReadJUnit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "junit.xml")
	os.WriteFile(p, []byte(`<?xml version="1.0"?>
<testsuites><testsuite name="Kubernetes e2e suite">
<testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="0.05"></testcase>
<testcase name="[It] [sig-network] A should work [Conformance] [sig-network, Conformance]" status="passed" time="12.5"></testcase>
<testcase name="[It] [sig-network] B should work [sig-network]" status="failed" time="3"><failure message="timed out" type="failed">...</failure></testcase>
<testcase name="[It] [sig-network] C should work [sig-network]" status="skipped" time="0"><skipped message="skipped - needs 3 nodes"></skipped></testcase>
<testcase name="[It] [sig-node] unrelated [sig-node]" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
</testsuite></testsuites>`), 0o644)
	focus := []string{"[sig-network] A should work [Conformance]", "[sig-network] B should work", "[sig-network] C should work", "[sig-network] D should work"}
	res, err := readJUnit(p, focus)
	if err != nil {
		t.Fatal(err)
	}
	want := []Result{
		{focus[0], "passed", 12500 * time.Millisecond, ""},
		{focus[1], "failed", 3 * time.Second, "timed out"},
		{focus[2], "skipped", 0, "skipped - needs 3 nodes"},
		{focus[3], "failed", 0, "not run"},
	}
	if len(res) != len(want) {
		t.Fatalf("%d results, want %d: %+v", len(res), len(want), res)
	}
	for i := range want {
		if res[i] != want[i] {
			t.Errorf("result %d = %+v, want %+v", i, res[i], want[i])
		}
	}
	if s := Summary(res); s != "1 passed, 2 failed, 1 skipped" {
		t.Errorf("Summary = %q", s)
	}
}

// The report replaces its configuration's section only.
func TestWriteReportReplacesItsSection(t *testing.T) {
	p := filepath.Join(t.TempDir(), "conformance.md")
	os.WriteFile(p, []byte("# Conformance\n\nintro\n"), 0o644)
	res := []Result{{Name: "[sig-network] A | B", State: "failed", Duration: time.Second, Message: "boom"}}
	r := Run{KubeProxy: KubeProxyIPTables, Version: "v1", When: time.Unix(0, 0), Took: time.Minute, Command: "make e2e-k8s",
		Known: map[string]string{}}
	for i := 0; i < 2; i++ {
		if err := WriteReport(p, r, res); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(p)
	doc := string(b)
	if strings.Count(doc, "<!-- e2e-k8s iptables -->") != 1 || !strings.HasPrefix(doc, "# Conformance\n\nintro\n") {
		t.Errorf("section written twice or intro lost:\n%s", doc)
	}
	for _, s := range []string{`A \| B | failed | 1s`, "- [sig-network] A | B: boom", "0 passed, 1 failed, 0 skipped"} {
		if !strings.Contains(doc, s) {
			t.Errorf("report lacks %q:\n%s", s, doc)
		}
	}
	r.Known = map[string]string{res[0].Name: "needs SSH"}
	if err := WriteReport(p, r, res); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(p)
	if !strings.Contains(string(b), "failed (known: needs SSH)") || strings.Contains(string(b), ": boom") {
		t.Errorf("a known failure is listed as unexplained:\n%s", b)
	}
}
