// Command demo runs sluice on a lab of network namespaces shaped like a small cluster and
// shows it working: requests to <nodeIP>:<nodePort> answered by a local and a remote pod, the
// addresses each pod sees, and a service without endpoints refusing at once. It removes
// everything it made when it ends, fails, or is interrupted. Run it as root: `make demo`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/tools/lab"
)

func main() {
	agent := flag.String("agent", "bin/sluice-agent", "sluice-agent binary")
	ctl := flag.String("sluicectl", "bin/sluicectl", "sluicectl binary (empty: skip the inspection step)")
	manifests := flag.String("manifests", "examples", "manifests the agent serves")
	mode := flag.String("xdp-mode", "auto", "XDP mode for the agent: auto (its default), native, generic or off; native and generic get a lab of NIC-like veths")
	n := flag.Int("requests", 10, "requests per protocol")
	keep := flag.Bool("logs", false, "print the agent's log at the end")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root (network namespaces, BPF)")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *agent, *ctl, *manifests, *mode, *n, *keep); errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "demo: interrupted; the lab is removed")
		os.Exit(130)
	} else if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, agentBin, ctlBin, manifests, mode string, n int, printLogs bool) (err error) {
	abs, err := filepath.Abs(manifests)
	if err != nil {
		return err
	}
	// Forced XDP is only right on a NIC-like device; the default picks tc on plain veths.
	variant := lab.Plain
	if mode == "native" || mode == "generic" {
		variant = lab.NICLike
	}
	step(fmt.Sprintf("Building the lab (%s veths): a client and two nodes on one L2 segment, a pod behind each node", variant))
	l, err := lab.UpVariant(variant)
	if err != nil {
		return err
	}
	defer func() {
		step("Removing the lab")
		if derr := l.Down(); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	fmt.Printf("   client %s   node1 %s (runs sluice)   node2 %s\n", l.ClientIP, l.Node1IP, l.Node2IP)
	fmt.Printf("   pod1 %s on node1 (local backend)   pod2 %s on node2 (remote backend)\n", l.Pod1IP, l.Pod2IP)

	pod1, err := lab.StartBackend(l.Pod1, "pod1", []uint16{80}, []uint16{5353})
	if err != nil {
		return err
	}
	defer pod1.Close()
	pod2, err := lab.StartBackend(l.Pod2, "pod2", []uint16{80}, []uint16{5353})
	if err != nil {
		return err
	}
	defer pod2.Close()

	step(fmt.Sprintf("Starting sluice-agent on node1 (--xdp-mode %s) with the services in %s", mode, manifests))
	a, err := l.StartAgent(lab.AgentOptions{Binary: agentBin, Manifests: abs, XDPMode: mode})
	if err != nil {
		return err
	}
	defer func() {
		if serr := a.Stop(); serr != nil {
			err = errors.Join(err, serr)
		}
		if printLogs || (err != nil && !errors.Is(err, context.Canceled)) {
			fmt.Printf("\n--- agent log ---\n%s--- end of agent log ---\n", a.Logs())
		}
	}()
	node := func(p uint16) netip.AddrPort { return netip.AddrPortFrom(l.Node1IP, p) }
	if err := waitReady(ctx, a, func() error { _, err := lab.HTTPGet(l.Client, node(30080)); return err }); err != nil {
		return err
	}

	snat := datapath.Defaults()
	for _, proto := range []string{"TCP", "UDP"} {
		port := uint16(30080)
		if proto == "UDP" {
			port = 30053
		}
		step(fmt.Sprintf("%d %s requests from the client to %s", n, proto, node(port)))
		count := map[string]int{}
		for i := 1; i <= n; i++ {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var body string
			var err error
			if proto == "TCP" {
				body, err = lab.HTTPGet(l.Client, node(port))
			} else {
				body, err = lab.UDPRequest(l.Client, node(port), "hello")
			}
			if err != nil {
				return fmt.Errorf("%s request %d: %w", proto, i, err)
			}
			who, seen, err := lab.ParseReply(body)
			if err != nil {
				return err
			}
			count[who]++
			how := "client address kept (DNAT only)"
			if seen.Addr() == l.Node1IP {
				how = fmt.Sprintf("SNAT to node1, port from %d-%d", snat.SNATPortMin, snat.SNATPortMax)
			}
			fmt.Printf("   %2d  %-5s answered; it saw the client as %-21s %s\n", i, who, seen, how)
		}
		fmt.Printf("   summary: %s\n", summary(count))
	}

	step("A service with no endpoints (default/empty) refuses at once instead of timing out")
	start := time.Now()
	terr := lab.TCPConnect(l.Client, node(30090), 2*time.Second)
	fmt.Printf("   TCP %s: %v after %v (a TCP RST built by the datapath)\n", node(30090), describe(terr), time.Since(start).Round(time.Microsecond))
	start = time.Now()
	_, uerr := lab.UDPRequest(l.Client, node(30091), "anyone?")
	fmt.Printf("   UDP %s: %v after %v (an ICMP port unreachable built by the datapath)\n", node(30091), describe(uerr), time.Since(start).Round(time.Microsecond))
	if !errors.Is(terr, syscall.ECONNREFUSED) || !errors.Is(uerr, syscall.ECONNREFUSED) {
		return errors.New("the service without endpoints was not refused")
	}

	step("Traffic that is not for a NodePort is the node's own: the kernel refuses an unused port")
	err = lab.TCPConnect(l.Client, node(22), time.Second)
	fmt.Printf("   TCP %s: %v\n", node(22), describe(err))

	if ctlBin != "" {
		// A flow left open, so that ct list and nat list have something to show.
		conn, cerr := lab.OpenTCP(l.Client, node(30080))
		if cerr == nil {
			defer conn.Close()
		}
		for _, args := range [][]string{
			{"service", "list"}, {"backend", "list"}, {"ct", "list"}, {"nat", "list"}, {"stats"}, {"prog", "show"},
			{"trace", "--src", l.ClientIP.String() + ":40000", "--dst", node(30080).String()},
			{"trace", "--src", l.ClientIP.String() + ":40001", "--dst", node(30090).String()},
		} {
			step("sluicectl " + strings.Join(args, " "))
			// nsenter --net, not ip netns exec: that remounts /sys and would hide the pins.
			cmd := exec.Command("nsenter", append([]string{"--net=" + l.Node1.Path(), ctlBin, "--bpffs", l.PinDir()}, args...)...)
			out, cerr := cmd.CombinedOutput()
			fmt.Print(indent(string(out)))
			if cerr != nil {
				return fmt.Errorf("sluicectl %s: %w", strings.Join(args, " "), cerr)
			}
		}
	}
	fmt.Println()
	fmt.Println("Done: sluice served both backend kinds over TCP and UDP, and refused what had no endpoint.")
	return nil
}

func waitReady(ctx context.Context, a *lab.Agent, probe func() error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := probe()
		if err == nil {
			return nil
		}
		if a.Exited() {
			return fmt.Errorf("the agent exited:\n%s", a.Logs())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the service did not answer within 10 s: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func describe(err error) string {
	switch {
	case err == nil:
		return "connected (unexpected)"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	}
	return err.Error()
}

func summary(count map[string]int) string {
	var parts []string
	for who, c := range count {
		parts = append(parts, fmt.Sprintf("%s %d", who, c))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = "   " + l
	}
	return strings.Join(lines, "\n") + "\n"
}

func step(s string) { fmt.Printf("\n==> %s\n", s) }
