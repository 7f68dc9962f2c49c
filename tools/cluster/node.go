package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// cgroupRoot is a node's cgroup parent (the kubelet's cgroupRoot): every pod of the node and
// nothing else lives under it, in every hierarchy.
func cgroupRoot(n Node) string { return "/" + n.Name }

// cgroupHierarchies are the mounted cgroup hierarchies (v1 controllers, the named systemd one
// and the unified v2 one of a hybrid setup, or just the v2 root).
func cgroupHierarchies() []string { return cgroupMounts(false) }

// cgroupMounts are the mount points of the cgroup hierarchies, or of the v2 one only.
func cgroupMounts(v2Only bool) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var hs []string
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 1 || (g[0] != "cgroup" && g[0] != "cgroup2") || (v2Only && g[0] != "cgroup2") {
			continue
		}
		hs = append(hs, f[4])
	}
	return hs
}

// makeCgroups creates the node's cgroup parent in every hierarchy; the kubelet refuses a
// cgroupRoot missing from any. A new cpuset starts with no CPUs or memory nodes: copy them.
func makeCgroups(n Node) error {
	for _, h := range cgroupHierarchies() {
		d := filepath.Join(h, cgroupRoot(n))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", d, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			v, err := os.ReadFile(filepath.Join(h, f))
			if err != nil {
				continue // not the cpuset hierarchy
			}
			if err := os.WriteFile(filepath.Join(d, f), v, 0o644); err != nil {
				return fmt.Errorf("write %s/%s: %w", d, f, err)
			}
		}
	}
	return nil
}

// removeCgroups removes the node's cgroups, deepest first (a cgroup with children or
// processes cannot go).
func removeCgroups(n Node) error {
	var errs []string
	for _, h := range cgroupHierarchies() {
		root := filepath.Join(h, cgroupRoot(n))
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !os.IsNotExist(err) {
				errs = append(errs, err.Error())
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove cgroups of %s: %s", n.Name, strings.Join(errs, "; "))
	}
	return nil
}

func (c *Config) nsDir() string       { return filepath.Join(c.Dir, "ns") }
func (c *Config) mntNS(n Node) string { return filepath.Join(c.nsDir(), n.Name) }
func (c *Config) inNode(n Node, argv ...string) []string {
	return inNS(n.Name, c.mntNS(n), argv...)
}

// makeMountNS gives the node a mount namespace of its own, kept by a bind mount of it under
// Dir/ns (which must itself be a private mount, or the bind would propagate into the new
// namespace and pin it forever). Inside: / is shared again (the kubelet and runc need mount
// propagation), /run is the node's own (containerd's sockets and state, pods' netns, the
// xtables lock), and /sys/fs/bpf is a bpffs of its own, so each node's sluice pins its maps
// where the other's cannot see them.
func (c *Config) makeMountNS(n Node) error {
	if err := os.MkdirAll(c.nsDir(), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", c.nsDir(), err)
	}
	if !isMountpoint(c.nsDir()) {
		if err := run("mount", "--bind", c.nsDir(), c.nsDir()); err != nil {
			return err
		}
		if err := run("mount", "--make-private", c.nsDir()); err != nil {
			return err
		}
	}
	if err := os.WriteFile(c.mntNS(n), nil, 0o644); err != nil {
		return fmt.Errorf("create %s: %w", c.mntNS(n), err)
	}
	return run("unshare", "--mount="+c.mntNS(n), "--propagation", "private", "--",
		"sh", "-ec", "mount --make-rshared /; mount -t tmpfs -o mode=755 tmpfs /run; mount -t bpf -o mode=700 bpf /sys/fs/bpf")
}

// isMountpoint says whether p is a mount point in our mount namespace.
func isMountpoint(p string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == p {
			return true
		}
	}
	return false
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var ms []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			ms = append(ms, f[4])
		}
	}
	for i, j := 0, len(ms)-1; i < j; i, j = i+1, j-1 {
		ms[i], ms[j] = ms[j], ms[i]
	}
	return ms
}

// containerdConfig is the node's containerd: its own root (images, snapshots) under Dir, the
// default /run/containerd in the node's own /run, runc with cgroupfs (PID 1 is no systemd
// here), and the CNI configuration the cluster tool writes once the node has a podCIDR.
func (c *Config) containerdConfig(n Node) string {
	d := c.nodeDir(n)
	return fmt.Sprintf(`version = 3
root = %q
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %q

[plugins."io.containerd.cri.v1.runtime"]
  # This machine withholds CAP_SYS_RESOURCE even from root: no process may lower its
  # oom_score_adj below its parent's, which the kubelet asks for critical pods (as in rootless
  # kind, containerd keeps each at least its own instead).
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = %q
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = %q
`, filepath.Join(d, "containerd"), PauseImage, c.bin("runc"), filepath.Join(d, "cni"))
}

// kubeletConfig is the node's KubeletConfiguration.
func (c *Config) kubeletConfig(n Node) string {
	d, pk := c.nodeDir(n), c.pkiDir()
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 (with v2 only as the unified hierarchy of a hybrid setup).
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %s
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
podLogsDir: %s
address: %s
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %s}
authorization: {mode: Webhook}
tlsCertFile: %s
tlsPrivateKeyFile: %s
clusterDNS: [%s]
clusterDomain: cluster.local
resolvConf: %s
failSwapOn: false
# Two nodes share one disk, filled by other things too: never evict or collect images for it
# (they cannot be pulled again: there is no registry).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "0%%", nodefs.available: "0%%", nodefs.inodesFree: "0%%", imagefs.available: "0%%"}
serializeImagePulls: false
`, cgroupRoot(n), filepath.Join(d, "pod-logs"), n.IP, filepath.Join(pk, "ca.crt"),
		filepath.Join(pk, "kubelet-"+n.Name+".crt"), filepath.Join(pk, "kubelet-"+n.Name+".key"),
		dnsIP, filepath.Join(d, "resolv.conf"))
}

// cniConfig is the node's pod network: a bridge with host-local addresses from its podCIDR,
// hairpin on (a pod reaching itself through a service), and no masquerade of the plugin's (it
// would hide pods from pods on other nodes: masqueradePods does it as kindnet does; the routes
// to the other nodes' podCIDRs are routePodCIDR's).
func (c *Config) cniConfig(n Node, cidrs []string) string {
	// A range and a default route per family (dual-stack: both).
	var ranges, routes []string
	for _, cidr := range cidrs {
		ranges = append(ranges, fmt.Sprintf(`[{"subnet": %q}]`, cidr))
		dst := "0.0.0.0/0"
		if strings.Contains(cidr, ":") {
			dst = "::/0"
		}
		routes = append(routes, fmt.Sprintf(`{"dst": %q}`, dst))
	}
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "sluice-pods",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "hairpinMode": true, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [%s], "routes": [%s]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, filepath.Join(c.nodeDir(n), "ipam"), strings.Join(ranges, ", "), strings.Join(routes, ", "))
}

// nodeIPs is the kubelet's --node-ip: the node's IPv4 address, and its IPv6 one when dual-stack.
func (c *Config) nodeIPs(n Node) string {
	if c.DualStack {
		return n.IP.String() + "," + n.IP6.String()
	}
	return n.IP.String()
}

// startNode prepares and starts the node's containerd and kubelet.
func (c *Config) startNode(n Node) error {
	d := c.nodeDir(n)
	for _, sub := range []string{"containerd", "cni", "ipam", "pod-logs", "kubelet"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", sub, err)
		}
	}
	files := map[string]string{
		"containerd.toml": c.containerdConfig(n),
		"kubelet.yaml":    c.kubeletConfig(n),
		// No upstream resolver: pods resolve cluster names only (dnsPolicy Default gets none).
		"resolv.conf": "",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(d, name), []byte(body), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	if err := makeCgroups(n); err != nil {
		return err
	}
	if err := c.makeMountNS(n); err != nil {
		return err
	}
	env := []string{"PATH=" + c.Bin + ":/usr/sbin:/usr/bin:/sbin:/bin"}
	logs, pids := filepath.Join(c.Dir, "logs"), filepath.Join(c.Dir, "run")
	if err := daemon(filepath.Join(logs, n.Name+"-containerd.log"), filepath.Join(pids, n.Name+"-containerd.pid"), env,
		c.inNode(n, c.bin("containerd"), "--config", filepath.Join(d, "containerd.toml"))...); err != nil {
		return err
	}
	if err := waitFor(n.Name+"'s containerd", time.Minute, func() error {
		return runArgv(c.inNode(n, c.bin("ctr"), "--address", "/run/containerd/containerd.sock", "version"))
	}); err != nil {
		return err
	}
	return daemon(filepath.Join(logs, n.Name+"-kubelet.log"), filepath.Join(pids, n.Name+"-kubelet.pid"), env,
		c.inNode(n, c.bin("kubelet"), "--config", filepath.Join(d, "kubelet.yaml"),
			"--kubeconfig", filepath.Join(c.pkiDir(), n.Name+".kubeconfig"), "--root-dir", filepath.Join(d, "kubelet"),
			"--hostname-override", n.Name, "--node-ip", c.nodeIPs(n), "--v", "2")...)
}

// importImage loads an OCI archive into the node's containerd, where the kubelet finds it.
func (c *Config) importImage(n Node, archive string) error {
	return runArgv(c.inNode(n, c.bin("ctr"), "--address", "/run/containerd/containerd.sock", "-n", "k8s.io",
		"images", "import", archive))
}

// startKubeProxy starts the real kube-proxy on the node (iptables mode): beside sluice, it
// keeps ClusterIPs and the in-cluster paths, as when a user migrates.
func (c *Config) startKubeProxy(n Node) error {
	cfg := filepath.Join(c.nodeDir(n), "kube-proxy.yaml")
	body := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: %s
hostnameOverride: %s
clientConnection: {kubeconfig: %s}
# nf_conntrack_max and the hash size are global, not per namespace: leave the host's alone.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
`, c.podCIDRs(), n.Name, filepath.Join(c.pkiDir(), "kube-proxy.kubeconfig"))
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		return fmt.Errorf("write kube-proxy config: %w", err)
	}
	return daemon(filepath.Join(c.Dir, "logs", n.Name+"-kube-proxy.log"), filepath.Join(c.Dir, "run", n.Name+"-kube-proxy.pid"), nil,
		c.inNode(n, c.bin("kube-proxy"), "--config", cfg, "--v", "2")...)
}
