package cluster

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"time"
)

// Run describes one e2e run for the report.
type Run struct {
	KubeProxy string    // the configuration: kube-proxy beside sluice, or none
	DualStack bool      // and the cluster dual-stack
	Version   string    // sluice's
	When      time.Time // start
	Took      time.Duration
	Command   string // how to reproduce it
	Known     map[string]string
	Served    string // what sluice translated itself (Served.String)
}

// ReadKnown reads the tests known to fail here for reasons outside sluice: lines of
// "name<TAB>reason", # comments.
func ReadKnown(p string) (map[string]string, error) {
	b, err := os.ReadFile(p)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read known failures: %w", err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		name, reason, ok := strings.Cut(l, "\t")
		if !ok {
			return nil, fmt.Errorf("read known failures: no tab between name and reason in %q", l)
		}
		m[strings.TrimSpace(name)] = strings.TrimSpace(reason)
	}
	return m, nil
}

func section(r Run) (begin, end string) {
	key := r.KubeProxy
	if r.DualStack {
		key += " dual-stack"
	}
	return "<!-- e2e-k8s " + key + " -->", "<!-- /e2e-k8s " + key + " -->"
}

// Markdown is the report of one run: what ran, a table of every test with its result and
// duration, and the reasons of the failures known to come from outside sluice.
func Markdown(r Run, res []Result) string {
	var b strings.Builder
	begin, end := section(r)
	b.WriteString(begin + "\n")
	cfg := "sluice beside kube-proxy (iptables mode): sluice takes NodePort traffic arriving on the nodes' NICs, kube-proxy keeps ClusterIPs and in-cluster paths"
	switch r.KubeProxy {
	case KubeProxyNone:
		cfg = "sluice alone: no kube-proxy on any node"
	case KubeProxyNoneHostNS:
		cfg = "sluice alone, socket LB for the nodes' own processes only (--socket-lb-hostns-only): the pods' service traffic translated at their devices"
	}
	if r.DualStack {
		cfg += "; the cluster dual-stack (nodes, pods and services IPv4 and IPv6, IPv4 first)"
	}
	fmt.Fprintf(&b, "### %s\n\n", cfg)
	fmt.Fprintf(&b, "Last run: %s, sluice %s, %s in %s (`%s`).\n\n", r.When.UTC().Format("2006-01-02 15:04 UTC"),
		r.Version, Summary(res), r.Took.Round(time.Second), r.Command)
	if r.Served != "" {
		rest := "kube-proxy served what started on the node."
		switch r.KubeProxy {
		case KubeProxyNone:
			rest = "what started on a node or in its pods sluice balanced at the socket, which translates no packet."
		case KubeProxyNoneHostNS:
			rest = "what started on a node sluice balanced at the socket, which translates no packet."
		}
		where := "that reached the nodes' NICs"
		if r.KubeProxy == KubeProxyNoneHostNS {
			where = "that reached the nodes' NICs or left their pods"
		}
		fmt.Fprintf(&b, "sluice itself translated the packets %s (%s; sampled from its metrics); %s\n\n", where, r.Served, rest)
	}
	b.WriteString("| Test | Result | Duration |\n|---|---|---|\n")
	for _, x := range res {
		state := x.State
		if reason, ok := r.Known[x.Name]; ok && x.State != "passed" {
			state += " (known: " + reason + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", strings.ReplaceAll(x.Name, "|", `\|`), state, x.Duration.Round(time.Second))
	}
	var failed []Result
	for _, x := range res {
		if x.State == "failed" {
			if _, ok := r.Known[x.Name]; !ok {
				failed = append(failed, x)
			}
		}
	}
	if len(failed) > 0 {
		b.WriteString("\nFailures:\n\n")
		for _, x := range failed {
			msg := strings.Join(strings.Fields(x.Message), " ")
			if len(msg) > 300 {
				msg = msg[:300] + "…"
			}
			fmt.Fprintf(&b, "- %s: %s\n", x.Name, msg)
		}
	}
	b.WriteString(end + "\n")
	return b.String()
}

// WriteReport replaces the run's configuration's section of the document at p (appending it
// if the document has none), leaving the rest as it is.
func WriteReport(p string, r Run, res []Result) error {
	doc, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	sec := []byte(Markdown(r, res))
	begin, end := section(r)
	i, j := bytes.Index(doc, []byte(begin)), bytes.Index(doc, []byte(end))
	if i >= 0 && j > i {
		doc = append(append(append([]byte{}, doc[:i]...), sec...), bytes.TrimPrefix(doc[j+len(end):], []byte("\n"))...)
	} else {
		doc = append(append(doc, '\n'), sec...)
	}
	if err := os.WriteFile(p, doc, 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}
