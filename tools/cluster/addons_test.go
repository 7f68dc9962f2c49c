package cluster

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/yaml"

	"github.com/sluicelb/sluice/internal/agent"
)

// What the cluster applies in each configuration, rendered from manifests/ and
// manifests-kube-proxy-free/ by kubectl kustomize, is a DaemonSet whose arguments the agent
// accepts, and, without kube-proxy, one that serves ClusterIPs, reaches the API server by its
// address and balances the node's own cgroup, which it mounts (for the node's own processes
// only in none-hostns, whose pods' traffic the pod devices' programs translate).
func TestRenderedDaemonSets(t *testing.T) {
	c := Config{Src: "../..", Bin: BinDir()}
	if _, err := os.Stat(c.bin("kubectl")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the cluster is not built (make cluster-build): %v", err)
		}
		t.Skipf("the cluster is not built (make cluster-build): %v", err)
	}
	for _, mode := range []string{KubeProxyIPTables, KubeProxyNone, KubeProxyNoneHostNS} {
		c.KubeProxy = mode
		out, err := c.renderSluice("sluice:test")
		if err != nil {
			t.Fatal(err)
		}
		ds := daemonSetIn(t, out)
		ctr := ds.Spec.Template.Spec.Containers[0]
		if ctr.Image != "sluice:test" {
			t.Errorf("%s: image %q", mode, ctr.Image)
		}
		args := make([]string, len(ctr.Args))
		for i, a := range ctr.Args {
			args[i] = strings.ReplaceAll(a, "$(NODE_NAME)", Nodes[0].Name) // as the kubelet expands it
		}
		o, err := agent.ParseArgs(args)
		if err != nil {
			t.Fatalf("%s: the agent refuses the DaemonSet's arguments %q: %v", mode, args, err)
		}
		if mode == KubeProxyIPTables {
			if o.KubeProxyReplacement || o.SocketLBCgroup != "" {
				t.Errorf("beside kube-proxy: %q", args)
			}
			continue
		}
		want := filepath.Join("/host", cgroupMounts(true)[0], cgroupRoot(Nodes[0]))
		if !o.KubeProxyReplacement || o.APIServer != "https://10.90.0.1:6443" || o.SocketLBCgroup != want || o.HealthzBindAddress == "" {
			t.Errorf("without kube-proxy: %q; want ClusterIPs served, the API server by address, socket LB at %s, node health", args, want)
		}
		if o.SocketLBHostOnly != (mode == KubeProxyNoneHostNS) || !o.PodDevices {
			t.Errorf("%s: socket LB host only %v, pod devices %v", mode, o.SocketLBHostOnly, o.PodDevices)
		}
		if !slices.ContainsFunc(ctr.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/host/sys/fs/cgroup" }) {
			t.Errorf("without kube-proxy: the node's cgroups are not mounted: %+v", ctr.VolumeMounts)
		}
	}
}

func daemonSetIn(t *testing.T, docs []byte) *appsv1.DaemonSet {
	t.Helper()
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(docs), 4096)
	for {
		var ds appsv1.DaemonSet
		if err := dec.Decode(&ds); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatal(err)
		}
		if ds.Kind == "DaemonSet" {
			return &ds
		}
	}
	t.Fatal("no DaemonSet rendered")
	return nil
}
