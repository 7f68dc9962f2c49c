package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/lab"
)

// The in-cluster path: a pod (pod1, on node1) reaching a ClusterIP and its own node's NodePort.
// Its packets cross no NIC: sluice balances them at the socket (--socket-lb-cgroup on pod1's
// cgroup, --kube-proxy-replacement) or, without socket LB for pods, at pod1's veth (the pod
// device programs), kube-proxy with its rules for traffic from every interface. New connections per second and their latency, each
// proxy on node1 alone, the same objects, the same backend (pod2, on node2).

var (
	dpSluSock = dpKind{"sluice-socket", "sluice-agent --socket-lb-cgroup (pod1's) --kube-proxy-replacement: a connect() to the service is pointed at the backend once, at the socket"}
	dpSluPod  = dpKind{"sluice-pod-device", "sluice-agent --kube-proxy-replacement without socket LB (as pods get it with --socket-lb-hostns-only): pod1's packets translated at its veth, at tc"}
	// inClusterPaths: plain is pod1 to pod2's address, no proxy (the baseline).
	inClusterPaths = []dpKind{dpPlain, dpSluSock, dpSluPod, dpKPIPT, dpKPNFT}
)

// InCluster is one proxy's in-cluster figures: wrk with a new connection per request.
type InCluster struct {
	Datapath    string `json:"datapath"`
	Description string `json:"description"`
	ClusterIP   *Wrk   `json:"clusterIP,omitempty"`
	NodePort    *Wrk   `json:"nodePort,omitempty"` // pod1 to node1's own address
	Error       string `json:"error,omitempty"`
}

// runInCluster measures every in-cluster path in turn.
func (e *env) runInCluster(ctx context.Context, res *Results) error {
	cg, err := newCgroup()
	if err != nil {
		return err
	}
	defer os.Remove(cg)
	e.podCgroup = cg
	svc, err := e.client.CoreV1().Services(benchNS).Get(ctx, svcHTTP.name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read the ClusterIP: %w", err)
	}
	clusterIP, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		return fmt.Errorf("read the ClusterIP of %s: %w", svcHTTP.name, err)
	}
	for _, k := range inClusterPaths {
		row, err := e.inClusterPath(ctx, k, netip.AddrPortFrom(clusterIP, uint16(svcHTTP.port)))
		res.InCluster = append(res.InCluster, row)
		if err != nil {
			if ctx.Err() != nil || k != dpKPNFT {
				return fmt.Errorf("in-cluster %s: %w", k.name, err)
			}
			row.Error = err.Error() // as in the datapath section: nft may not run everywhere
			logf("in-cluster %s FAILED (reported, not fatal): %v", k.name, err)
		}
	}
	return nil
}

func (e *env) inClusterPath(ctx context.Context, k dpKind, clusterIP netip.AddrPort) (row *InCluster, err error) {
	row = &InCluster{Datapath: k.name, Description: k.desc}
	logf("== in-cluster %s: %s", k.name, k.desc)
	r, err := e.startDatapath(k)
	if err != nil {
		return row, err
	}
	defer func() {
		if serr := r.stop(); serr != nil {
			err = errors.Join(err, serr)
		}
	}()
	targets := map[string]netip.AddrPort{"clusterIP": clusterIP, "nodePort": netip.AddrPortFrom(e.l.Node1IP, svcHTTP.nodePort)}
	if k == dpPlain {
		pod2 := netip.AddrPortFrom(e.l.Pod2IP, svcHTTP.targetPort)
		targets = map[string]netip.AddrPort{"clusterIP": pod2, "nodePort": pod2}
	}
	for _, name := range []string{"clusterIP", "nodePort"} {
		url := "http://" + targets[name].String() + "/"
		if err := e.waitPodServed(ctx, r, url); err != nil {
			return row, err
		}
		w, err := runWrkIn(ctx, e.l.Pod1, e.podCgroup, url, e.cfg.connSeconds, e.cfg.wrkConns, false)
		if err != nil {
			return row, err
		}
		if name == "clusterIP" {
			row.ClusterIP = w
		} else {
			row.NodePort = w
		}
		logf("in-cluster %s: pod1 to %s (%s): %s", k.name, name, targets[name], w)
	}
	return row, nil
}

// waitPodServed polls until pod1 (in its cgroup) gets pod2's answer at url.
func (e *env) waitPodServed(ctx context.Context, r *running, url string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := runLocked(commandIn(ctx, e.l.Pod1, e.podCgroup, "curl", "-s", "-m", "1", url), false)
		if err == nil {
			var who string
			if who, _, err = lab.ParseReply(string(out)); err == nil && who != "pod2" {
				err = fmt.Errorf("answered by %q", who)
			}
		}
		if err == nil {
			return nil
		}
		if r.agent != nil && r.agent.Exited() {
			return fmt.Errorf("%s exited: %s", r.kind.name, tail(r.agent.Logs(), 2000))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pod1 to %s through %s: %w", url, r.kind.name, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// newCgroup makes a cgroup v2 for pod1's processes (what a pod's cgroup is to socket LB).
func newCgroup() (string, error) {
	root := testutil.Cgroup2Root()
	if root == "" {
		return "", errors.New("in-cluster: no cgroup v2 hierarchy mounted")
	}
	cg := filepath.Join(root, testutil.UniqueName("sluice-bench-pod1-"))
	if err := os.Mkdir(cg, 0o755); err != nil {
		return "", fmt.Errorf("in-cluster: %w", err)
	}
	return cg, nil
}

// runWrkIn is runWrk from a process in cgroup (none: "").
func runWrkIn(ctx context.Context, ns *testutil.Netns, cgroup, url string, secs, conns int, keepAlive bool) (*Wrk, error) {
	return runWrkCmd(ctx, func(ctx context.Context, args ...string) *exec.Cmd { return commandIn(ctx, ns, cgroup, args...) }, url, secs, conns, keepAlive)
}

// commandIn is command with the process in cgroup first (a shell moves itself there, then
// becomes the command): cgroup membership is per process.
func commandIn(ctx context.Context, ns *testutil.Netns, cgroup string, args ...string) *exec.Cmd {
	if cgroup == "" {
		return command(ctx, ns, args...)
	}
	sh := []string{"sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cgroup}
	return command(ctx, ns, append(sh, args...)...)
}

// inCluster is the named proxy's in-cluster figures, if measured.
func (r *Results) inCluster(name string) *InCluster {
	for _, c := range r.InCluster {
		if c.Datapath == name && c.Error == "" {
			return c
		}
	}
	return nil
}

// inClusterTable is the report's in-cluster section.
func inClusterTable(res *Results) string {
	if len(res.InCluster) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("## In-cluster: a pod to a ClusterIP and to its own node's NodePort\n\n")
	b.WriteString("pod1 (on node1) runs wrk with a new connection per request to the `http` service (its backend pod2, on node2): at its ClusterIP, and at node1's own address and NodePort. No packet crosses a NIC sluice's packet path is attached to: sluice balances at the socket, or (pod device) translates pod1's packets at its veth; kube-proxy with its rules for every interface. One proxy on node1 at a time; the same objects.\n\n")
	b.WriteString("| Proxy | ClusterIP: new connections/s (p50 / p99 ms) | Own node's NodePort: new connections/s (p50 / p99 ms) | ClusterIP vs kube-proxy iptables |\n|---|---|---|---|\n")
	ipt := res.inCluster(dpKPIPT.name)
	for _, c := range res.InCluster {
		if c.Error != "" {
			fmt.Fprintf(&b, "| %s | failed: %s | | |\n", c.Datapath, oneLine(c.Error, 300))
			continue
		}
		vs := "-"
		if ipt != nil && ipt.ClusterIP != nil && c.ClusterIP != nil && ipt.ClusterIP.RPS > 0 {
			vs = ratioX(c.ClusterIP.RPS / ipt.ClusterIP.RPS)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", c.Datapath, wrkCell(c.ClusterIP), wrkCell(c.NodePort), vs)
	}
	b.WriteString("\n")
	for _, c := range res.InCluster {
		fmt.Fprintf(&b, "- **%s**: %s.\n", c.Datapath, c.Description)
	}
	b.WriteString("\n")
	return b.String()
}

// inClusterRatios adds sluice's (socket, pod device) new connections per second over each kube-proxy's, to
// the ClusterIP and to the own node's NodePort, and kube-proxy's p99 latency over sluice's.
func inClusterRatios(r *Results, add func(name, of string, num, den float64) float64) {
	for _, s := range []dpKind{dpSluSock, dpSluPod} {
		if slu := r.inCluster(s.name); slu != nil {
			inClusterRatiosOf(r, slu, add)
		}
	}
}

func inClusterRatiosOf(r *Results, slu *InCluster, add func(name, of string, num, den float64) float64) {
	for _, kp := range []string{dpKPIPT.name, dpKPNFT.name} {
		k := r.inCluster(kp)
		if k == nil {
			continue
		}
		for _, t := range []struct {
			name string
			a, b *Wrk
		}{{"ClusterIP", slu.ClusterIP, k.ClusterIP}, {"own node's NodePort", slu.NodePort, k.NodePort}} {
			if t.a == nil || t.b == nil {
				continue
			}
			add(fmt.Sprintf("%s / %s, in-cluster new connections/s, pod to %s", slu.Datapath, kp, t.name), "in-cluster", t.a.RPS, t.b.RPS)
			add(fmt.Sprintf("%s / %s, in-cluster p99 latency (lower is better for sluice), pod to %s", kp, slu.Datapath, t.name), "in-cluster", t.b.P99ms, t.a.P99ms)
		}
	}
}
