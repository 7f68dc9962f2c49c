package cluster

import (
	"bufio"
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// E2E says which upstream tests to run and how.
type E2E struct {
	Focus   []string      // exact test names (ReadFocus)
	Procs   int           // ginkgo processes (default 4: the tests mostly wait)
	Out     string        // folder for the log, the JUnit report and e2e's own output
	Timeout time.Duration // for the whole suite (default 90m)
	Log     io.Writer     // the suite's output as it runs (besides Out/e2e.log)
	Served  *Served       // if set, filled with what sluice translated during the run
}

// Result is one test's outcome.
type Result struct {
	Name     string
	State    string // passed, failed, skipped
	Duration time.Duration
	Message  string // why it failed or was skipped
}

// ReadFocus reads a focus list: one exact test name per line, # starts a comment.
func ReadFocus(p string) ([]string, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("read focus list: %w", err)
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			names = append(names, l)
		}
	}
	return names, sc.Err()
}

// focusRegexp matches exactly the named tests: ginkgo matches "<suite> <name>", so each name
// is anchored at its end only.
func focusRegexp(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = regexp.QuoteMeta(n) + "$"
	}
	return strings.Join(q, "|")
}

// RunE2E runs the upstream e2e.test (under ginkgo, in parallel) against the running cluster
// from the client's namespace: outside the cluster, reaching the API server and the nodes as a
// user's machine does. It returns every focused test's result, including those the run never
// reached (failed, "not run").
func (c *Config) RunE2E(ctx context.Context, e E2E) ([]Result, error) {
	if err := c.defaults(); err != nil {
		return nil, err
	}
	if e.Procs == 0 {
		e.Procs = 4
	}
	if e.Timeout == 0 {
		e.Timeout = 90 * time.Minute
	}
	out, err := filepath.Abs(e.Out)
	if err != nil {
		return nil, fmt.Errorf("run e2e: %w", err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("run e2e: %w", err)
	}
	junit := filepath.Join(out, "junit.xml")
	_ = os.Remove(junit)
	// Paths are absolute: ginkgo runs e2e.test from the binary's folder.
	argv := inNS(clientNS, "", c.bin("ginkgo"), "--procs="+strconv.Itoa(e.Procs), "--timeout="+e.Timeout.String(),
		"--no-color", "-v", "--silence-skips", "--output-dir="+out, "--junit-report=junit.xml",
		"--focus="+focusRegexp(e.Focus), c.bin("e2e.test"), "--",
		"--provider=local", "--kubeconfig="+c.InnerKubeconfig(), "--kubectl-path="+c.bin("kubectl"),
		// Only the first process counts the nodes; the others would skip every multi-node test.
		"--num-nodes="+strconv.Itoa(len(Nodes)),
		"--report-dir="+out, "--e2e-output-dir="+out,
		// The log dump at the end uses SSH; images are imported, not pulled.
		"--disable-log-dump", "--prepull-images=false")
	logf, err := os.Create(filepath.Join(out, "e2e.log"))
	if err != nil {
		return nil, fmt.Errorf("run e2e: %w", err)
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var w io.Writer = logf
	if e.Log != nil {
		w = io.MultiWriter(logf, e.Log)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if e.Served != nil {
		sctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { e.Served.sample(sctx, 2*time.Second); close(done) }()
		defer func() { stop(); <-done }()
	}
	runErr := cmd.Run() // failed tests make it fail: the report says which
	res, err := readJUnit(junit, e.Focus)
	if err != nil {
		return nil, fmt.Errorf("run e2e: %w (ginkgo: %v; log in %s)", err, runErr, logf.Name())
	}
	return res, nil
}

type junitSuites struct {
	Suites []struct {
		Cases []struct {
			Name    string  `xml:"name,attr"`
			Status  string  `xml:"status,attr"`
			Time    float64 `xml:"time,attr"`
			Failure *struct {
				Message string `xml:"message,attr"`
			} `xml:"failure"`
			Skipped *struct {
				Message string `xml:"message,attr"`
			} `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// readJUnit reads ginkgo's JUnit report and returns a result per focused name, in its order.
func readJUnit(p string, focus []string) ([]Result, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read JUnit report: %w", err)
	}
	var s junitSuites
	if err := xml.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parse JUnit report %s: %w", p, err)
	}
	got := map[string]Result{}
	for _, suite := range s.Suites {
		for _, tc := range suite.Cases {
			full, ok := strings.CutPrefix(tc.Name, "[It] ")
			if !ok {
				continue // suite setup and teardown nodes
			}
			// The report appends the labels ("... [Conformance] [sig-network, Conformance]").
			name := ""
			for _, n := range focus {
				if full == n || strings.HasPrefix(full, n+" [") {
					name = n
					break
				}
			}
			if name == "" {
				continue
			}
			r := Result{Name: name, State: tc.Status, Duration: time.Duration(tc.Time * float64(time.Second))}
			switch {
			case tc.Failure != nil:
				r.State, r.Message = "failed", tc.Failure.Message
			case tc.Skipped != nil:
				r.State, r.Message = "skipped", tc.Skipped.Message
			case r.State == "":
				r.State = "passed"
			}
			got[name] = r
		}
	}
	var res []Result
	for _, n := range focus {
		r, ok := got[n]
		if !ok {
			r = Result{Name: n, State: "failed", Message: "not run"}
		}
		res = append(res, r)
	}
	return res, nil
}

// Summary counts results by state ("27 passed, 0 failed, 0 skipped").
func Summary(res []Result) string {
	n := map[string]int{}
	for _, r := range res {
		n[r.State]++
	}
	keys := []string{"passed", "failed", "skipped"}
	for k := range n {
		if k != "passed" && k != "failed" && k != "skipped" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys[3:])
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", n[k], k))
	}
	return strings.Join(parts, ", ")
}
