// Command sluice-cluster brings the real cluster on this machine up and down and runs the
// upstream e2e suite against it (package cluster; make cluster-up, cluster-down, e2e-k8s).
//
//	sluice-cluster up [--kube-proxy iptables|none] [--no-sluice]
//	sluice-cluster down
//	sluice-cluster e2e [--focus-file F] [--report docs/conformance.md]
//	sluice-cluster relay [--listen ADDR]   (up starts it: the API server on the host's loopback)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sluicelb/sluice/tools/cluster"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: sluice-cluster up|down|e2e|relay [flags]")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-cluster:", err)
		os.Exit(1)
	}
}

func run(cmd string, args []string) error {
	var c cluster.Config
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.StringVar(&c.Dir, "dir", envOr("SLUICE_CLUSTER_DIR", cluster.DefaultDir), "the cluster's state")
	fs.StringVar(&c.Bin, "bin", cluster.BinDir(), "what tools/cluster/build.sh built")
	fs.StringVar(&c.Src, "src", ".", "sluice's source tree (manifests/, Dockerfile)")
	fs.StringVar(&c.Version, "version", "dev", "sluice's version: its image's tag")
	fs.StringVar(&c.KubeProxy, "kube-proxy", envOr("KUBE_PROXY", cluster.KubeProxyIPTables), "kube-proxy beside sluice: iptables, or none (none-hostns: none, and socket LB for the nodes' own processes only)")
	fs.BoolVar(&c.NoSluice, "no-sluice", false, "do not deploy sluice")
	fs.BoolVar(&c.DualStack, "dual-stack", os.Getenv("DUAL_STACK") == "1", "up: a dual-stack cluster (IPv4 and IPv6, IPv4 first); e2e: it is one (the IPv6DualStack tests)")
	focus := fs.String("focus-file", "", "e2e: comma-separated files of the tests to run, one exact name per line (default: tools/cluster/e2e/nodeport.txt, and clusterip.txt with --kube-proxy none)")
	out := fs.String("out", "bin/e2e", "e2e: where the log, JUnit report and results.json go")
	procs := fs.Int("procs", 4, "e2e: ginkgo processes")
	report := fs.String("report", "", "e2e: the document whose section for this configuration gets the results (docs/conformance.md)")
	known := fs.String("known", "tools/cluster/e2e/known.txt", "e2e: tests known to fail here for reasons outside sluice, name<TAB>reason")
	listen := fs.String("listen", cluster.HostRelay, "relay: where to serve the API server on the host (the kubeconfig up writes says this one)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c.Logf = func(f string, a ...any) {
		fmt.Fprintf(os.Stderr, "%s sluice-cluster: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(f, a...))
	}
	switch cmd {
	case "up":
		self, err := os.Executable()
		if err != nil {
			return err
		}
		c.RelayCmd = []string{self, "relay", "--listen", cluster.HostRelay}
		up, err := cluster.Up(c)
		if err != nil {
			return err
		}
		fmt.Printf("KUBECONFIG=%s\nkubectl:  %s\ne2e.test: %s\n", up.Kubeconfig(), up.Bin+"/kubectl", up.Bin+"/e2e.test")
		return nil
	case "e2e":
		files := strings.Split(*focus, ",")
		if *focus == "" {
			files = []string{"tools/cluster/e2e/nodeport.txt"}
			if cluster.WithoutKubeProxy(c.KubeProxy) {
				// Without kube-proxy, sluice is judged on ClusterIPs too.
				files = append(files, "tools/cluster/e2e/clusterip.txt")
			}
			if c.DualStack {
				files = []string{"tools/cluster/e2e/dualstack.txt"}
			}
		}
		var names []string
		for _, f := range files {
			n, err := cluster.ReadFocus(f)
			if err != nil {
				return err
			}
			names = append(names, n...)
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		kn, err := cluster.ReadKnown(*known)
		if err != nil {
			return err
		}
		start := time.Now()
		var served cluster.Served
		res, err := c.RunE2E(ctx, cluster.E2E{Focus: names, Procs: *procs, Out: *out, Log: os.Stderr, Served: &served})
		if err != nil {
			return err
		}
		if *report != "" {
			r := cluster.Run{KubeProxy: c.KubeProxy, DualStack: c.DualStack, Version: c.Version, When: start, Took: time.Since(start),
				Command: "make e2e-k8s KUBE_PROXY=" + c.KubeProxy, Known: kn, Served: served.String()}
			if c.DualStack {
				r.Command += " DUAL_STACK=1"
			}
			if err := cluster.WriteReport(*report, r, res); err != nil {
				return err
			}
		}
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(filepath.Join(*out, "results.json"), b, 0o644); err != nil {
			return err
		}
		for _, r := range res {
			fmt.Printf("%-8s %6s  %s\n", r.State, r.Duration.Round(time.Second), r.Name)
		}
		fmt.Println(cluster.Summary(res))
		fmt.Println("sluice translated:", served.String())
		for _, r := range res {
			if _, ok := kn[r.Name]; r.State != "passed" && !ok {
				return fmt.Errorf("e2e: %s", cluster.Summary(res))
			}
		}
		return nil
	case "down":
		return cluster.Down(c)
	case "relay":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		return cluster.Relay(ctx, *listen)
	}
	return fmt.Errorf("unknown command %q", cmd)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
