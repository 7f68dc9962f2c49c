package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// hostSysctls are the host-wide settings the kubelet writes at start (protectKernelDefaults
// off, as on kind): Up records them and Down puts them back.
var hostSysctls = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

func (c *Config) sysctlRecord() string { return filepath.Join(c.Dir, "host-sysctls.json") }

func (c *Config) recordSysctls() error {
	m := map[string]string{}
	for _, k := range hostSysctls {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil {
			m[k] = strings.TrimSpace(string(b))
		}
	}
	b, _ := json.Marshal(m)
	return os.WriteFile(c.sysctlRecord(), b, 0o644)
}

func (c *Config) restoreSysctls() error {
	b, err := os.ReadFile(c.sysctlRecord())
	if err != nil {
		return nil // never recorded: nothing was started
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("read %s: %w", c.sysctlRecord(), err)
	}
	var errs []error
	for k, v := range m {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore %s: %w", k, err))
		}
	}
	return errors.Join(errs...)
}

// Up brings the cluster up from nothing (removing a previous one first) and leaves it running:
// control plane, nodes Ready, CoreDNS, kube-proxy unless WithoutKubeProxy, and sluice from
// manifests/ unless NoSluice. On error, what it made stays for inspection: Down removes it.
func Up(c Config) (*Config, error) {
	if err := c.defaults(); err != nil {
		return nil, err
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl",
		"kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "runc", "pause", "agnhost", "coredns"} {
		if _, err := os.Stat(c.bin(b)); err != nil {
			return nil, fmt.Errorf("bring the cluster up: %s is not built (run tools/cluster/build.sh): %w", b, err)
		}
	}
	if err := Down(c); err != nil {
		return nil, fmt.Errorf("remove the previous cluster: %w", err)
	}
	if err := c.up(); err != nil {
		return &c, fmt.Errorf("bring the cluster up: %w (logs in %s)", err, filepath.Join(c.Dir, "logs"))
	}
	return &c, nil
}

func (c *Config) up() error {
	t0 := time.Now()
	for _, d := range []string{"logs", "run", "images"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o755); err != nil {
			return fmt.Errorf("create state: %w", err)
		}
	}
	if err := c.recordSysctls(); err != nil {
		return fmt.Errorf("record sysctls: %w", err)
	}
	// The test images are kept beside the binaries (Down removes Dir): unchanged, they are not
	// written again.
	archives, err := WriteImages(c.Bin, filepath.Join(filepath.Dir(c.Bin), "images"))
	if err != nil {
		return err
	}
	var sluiceImage string
	if !c.NoSluice {
		if sluiceImage, err = c.SluiceImage(); err != nil {
			return err
		}
		a, err := c.buildSluiceImage(sluiceImage)
		if err != nil {
			return err
		}
		archives = append(archives, a)
	}
	c.Logf("images written (%s)", time.Since(t0).Round(time.Second))
	if err := upNetwork(c.DualStack); err != nil {
		return err
	}
	if _, err := c.writeCredentials(); err != nil {
		return err
	}
	if len(c.RelayCmd) > 0 {
		if err := daemon(filepath.Join(c.Dir, "logs", "relay.log"), filepath.Join(c.Dir, "run", "relay.pid"), nil, c.RelayCmd...); err != nil {
			return err
		}
	}
	if err := c.startControlPlane(); err != nil {
		return err
	}
	c.Logf("control plane up (%s)", time.Since(t0).Round(time.Second))
	for _, n := range Nodes {
		if err := c.startNode(n); err != nil {
			return fmt.Errorf("start %s: %w", n.Name, err)
		}
		for _, a := range archives {
			if err := c.importImage(n, a); err != nil {
				return fmt.Errorf("start %s: %w", n.Name, err)
			}
		}
	}
	cs, err := c.Client()
	if err != nil {
		return err
	}
	if err := c.wireNodes(cs); err != nil {
		return err
	}
	c.Logf("nodes Ready (%s)", time.Since(t0).Round(time.Second))
	if c.KubeProxy == KubeProxyIPTables {
		for _, n := range Nodes {
			if err := c.startKubeProxy(n); err != nil {
				return err
			}
		}
	}
	if err := c.deployCoreDNS(); err != nil {
		return err
	}
	if !c.NoSluice {
		if err := c.deploySluice(cs, sluiceImage); err != nil {
			return err
		}
		c.Logf("sluice Ready on every node (%s)", time.Since(t0).Round(time.Second))
	}
	return c.waitDNS(cs)
}

// wireNodes waits for each node to register and get its podCIDR, then writes its CNI
// configuration and the routes to its pods (the part of a CNI such as kindnet), and waits
// for every node to be Ready.
func (c *Config) wireNodes(cs kubernetes.Interface) error {
	for _, n := range Nodes {
		var cidrs []string
		want := 1
		if c.DualStack {
			want = 2
		}
		if err := waitFor(n.Name+" registered with a podCIDR", 2*time.Minute, func() error {
			node, err := cs.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if cidrs = node.Spec.PodCIDRs; len(cidrs) < want {
				return fmt.Errorf("podCIDRs %v, want %d", cidrs, want)
			}
			return nil
		}); err != nil {
			return err
		}
		conf := filepath.Join(c.nodeDir(n), "cni", "10-sluice-pods.conflist")
		if err := os.WriteFile(conf, []byte(c.cniConfig(n, cidrs)), 0o644); err != nil {
			return fmt.Errorf("write CNI config: %w", err)
		}
		for _, cidr := range cidrs {
			if err := routePodCIDR(n, cidr); err != nil {
				return err
			}
		}
		if err := masqueradePods(n, c.DualStack); err != nil {
			return err
		}
	}
	return waitFor("every node Ready", 3*time.Minute, func() error {
		for _, n := range Nodes {
			node, err := cs.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !nodeReady(node) {
				return fmt.Errorf("%s not Ready", n.Name)
			}
		}
		return nil
	})
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitDNS waits for CoreDNS's pods to be Ready.
func (c *Config) waitDNS(cs kubernetes.Interface) error {
	return waitFor("CoreDNS Ready", 3*time.Minute, func() error {
		d, err := cs.AppsV1().Deployments("kube-system").Get(context.Background(), "coredns", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.ReadyReplicas != *d.Spec.Replicas {
			return fmt.Errorf("%d of %d ready", d.Status.ReadyReplicas, *d.Spec.Replicas)
		}
		return nil
	})
}

// Down removes everything Up made, whatever state a failed or interrupted run left: processes
// (by namespace and cgroup, not only by pidfile), mounts, cgroups, namespaces, host sysctls
// and Dir. It is idempotent.
func Down(c Config) error {
	if err := c.defaults(); err != nil {
		return err
	}
	var errs []error
	netInodes := map[uint64]bool{}
	for _, ns := range append([]string{gwNS, clientNS}, nodeNames()...) {
		if ino := nsInode("/run/netns/" + ns); ino != 0 {
			netInodes[ino] = true
		}
	}
	mntInodes := map[uint64]bool{}
	for _, n := range Nodes {
		if ino := nsInode(c.mntNS(n)); ino != 0 && isMountpoint(c.mntNS(n)) {
			mntInodes[ino] = true
		}
	}
	relay := readPid(filepath.Join(c.Dir, "run", "relay.pid"))
	ours := func(pid int) bool {
		if pid == relay {
			return true
		}
		if netInodes[nsInode(fmt.Sprintf("/proc/%d/ns/net", pid))] || mntInodes[nsInode(fmt.Sprintf("/proc/%d/ns/mnt", pid))] {
			return true
		}
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		for _, n := range Nodes {
			if strings.Contains(string(cg), ":"+cgroupRoot(n)+"/") || strings.Contains(string(cg), ":"+cgroupRoot(n)+"\n") {
				return true
			}
		}
		return false
	}
	// The kubelet first: it would restart what is stopped under it.
	for _, n := range Nodes {
		if pid := readPid(filepath.Join(c.Dir, "run", n.Name+"-kubelet.pid")); pid > 0 {
			_ = kill(func(p int) bool { return p == pid }, 5*time.Second)
		}
	}
	if err := kill(ours, 10*time.Second); err != nil {
		errs = append(errs, err)
	}
	for _, m := range mountsUnder(c.Dir) {
		if err := run("umount", "-l", m); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range Nodes {
		if err := removeCgroups(n); err != nil {
			errs = append(errs, err)
		}
	}
	if err := downNetwork(); err != nil {
		errs = append(errs, err)
	}
	if err := c.restoreSysctls(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", c.Dir, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bring the cluster down: %w", err)
	}
	return nil
}

func nodeNames() []string {
	var s []string
	for _, n := range Nodes {
		s = append(s, n.Name)
	}
	return s
}
