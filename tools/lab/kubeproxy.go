package lab

import (
	"fmt"
	"os/exec"
	"path/filepath"
)

// KubeProxyOptions start the real kube-proxy on node1, for side-by-side runs.
type KubeProxyOptions struct {
	Binary     string // path to kube-proxy (controlplane.Bin())
	Kubeconfig string
	Mode       string // iptables or nftables
	Extra      []string
}

// StartKubeProxy starts kube-proxy in node1's network namespace as node1, serving NodePorts on
// the lab's node addresses. Its /healthz answers on 127.0.0.1:10256 once it has synced.
func (l *Lab) StartKubeProxy(o KubeProxyOptions) (*Agent, error) {
	bin, err := filepath.Abs(o.Binary)
	if err != nil {
		return nil, fmt.Errorf("start kube-proxy: %w", err)
	}
	args := []string{"--net=" + l.Node1.Path(), bin,
		"--kubeconfig", o.Kubeconfig, "--hostname-override", "node1", "--proxy-mode", o.Mode,
		"--nodeport-addresses", "10.89.0.0/24", "--cluster-cidr", "10.244.0.0/16",
		"--healthz-bind-address", "127.0.0.1:10256", "--metrics-bind-address", "127.0.0.1:10259",
		// nf_conntrack_max is global, not per namespace: leave the host's alone.
		"--conntrack-max-per-core", "0", "--conntrack-tcp-timeout-established", "0", "--conntrack-tcp-timeout-close-wait", "0",
		"--v", "2"}
	args = append(args, o.Extra...)
	// kube-proxy has no SIGTERM handler: being killed by it is its normal stop.
	a := &Agent{logs: &syncBuffer{}, done: make(chan struct{}), termIsExit: true}
	a.cmd = exec.Command("nsenter", args...)
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start kube-proxy: %w", err)
	}
	go func() {
		a.err = a.cmd.Wait()
		close(a.done)
	}()
	return a, nil
}
