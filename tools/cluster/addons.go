package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sluicelb/sluice/tools/image"
)

// kubectl runs kubectl as admin from the client's namespace, with stdin.
func (c *Config) kubectl(stdin []byte, args ...string) ([]byte, error) {
	argv := inNS(clientNS, "", append([]string{c.bin("kubectl"), "--kubeconfig", c.InnerKubeconfig()}, args...)...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("run kubectl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// coreDNS is the cluster DNS as kubeadm deploys it (its RBAC, Corefile, Deployment and the
// kube-dns Service), without an upstream to forward to: nothing outside the cluster resolves.
func coreDNS() string {
	return strings.ReplaceAll(`apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health {
            lameduck 5s
        }
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        cache 30
        loop
        reload
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 2
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      tolerations: [{key: CriticalAddonsOnly, operator: Exists}]
      containers:
      - name: coredns
        image: IMAGE
        args: [-conf, /etc/coredns/Corefile]
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
        ports:
        - {containerPort: 53, name: dns, protocol: UDP}
        - {containerPort: 53, name: dns-tcp, protocol: TCP}
        - {containerPort: 9153, name: metrics, protocol: TCP}
        securityContext:
          capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
        livenessProbe:
          httpGet: {path: /health, port: 8080}
          initialDelaySeconds: 10
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
      volumes:
      - name: config
        configMap: {name: coredns, items: [{key: Corefile, path: Corefile}]}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  selector: {k8s-app: kube-dns}
  clusterIP: DNSIP
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
  - {name: metrics, port: 9153, protocol: TCP}
`, "IMAGE", CoreDNSImage)
}

func (c *Config) deployCoreDNS() error {
	_, err := c.kubectl([]byte(strings.ReplaceAll(coreDNS(), "DNSIP", dnsIP)), "apply", "-f", "-")
	return err
}

// SluiceImage is the name the cluster runs sluice's image under: manifests/' name with a tag
// of this build (not "latest", whose pull policy is Always: there is no registry to pull from).
func (c *Config) SluiceImage() (string, error) {
	name, err := manifestImage(filepath.Join(c.Src, "manifests", "daemonset.yaml"))
	if err != nil {
		return "", err
	}
	repo, _, _ := strings.Cut(name, ":")
	return repo + ":" + c.Version, nil
}

var (
	imageLine    = regexp.MustCompile(`(?m)^(\s*(?:-\s*)?image:\s*)(\S+)\s*$`)
	apiServerArg = regexp.MustCompile(`(--k8s-api-server=https://)\S+`)
	socketLBArg  = regexp.MustCompile(`(--socket-lb-cgroup=)\S+`)
	socketLBLine = regexp.MustCompile(`(?m)^(\s*)- --socket-lb-cgroup=\S+$`)
)

// manifestImage is the first image of a manifest.
func manifestImage(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("read the image name: %w", err)
	}
	m := imageLine.FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("read the image name: no image in %s", p)
	}
	return string(m[2]), nil
}

// buildSluiceImage writes sluice's image as the Dockerfile describes it.
func (c *Config) buildSluiceImage(name string) (string, error) {
	d, err := image.ParseDockerfile(filepath.Join(c.Src, "Dockerfile"))
	if err != nil {
		return "", err
	}
	img, err := d.Build(c.Src, name, map[string]string{"VERSION": c.Version})
	if err != nil {
		return "", err
	}
	out := filepath.Join(c.Dir, "images", "sluice-agent.tar")
	return out, image.WriteFile(out, img)
}

// deploySluice applies manifests/ (beside kube-proxy) or manifests-kube-proxy-free/ as
// kubectl kustomize renders them, with only what a user edits replaced: the image name, and
// without kube-proxy the API server's address and the cgroup socket LB attaches to. A real
// node's is its hierarchy's root; these nodes share one kernel and one hierarchy, so each
// agent gets its own node's cgroup (kind's nodes each see theirs as the root), or it would
// balance the other node's sockets with its own maps. Then it waits for the DaemonSet's pods
// to be Ready on every node.
func (c *Config) deploySluice(cs kubernetes.Interface, name string) error {
	all, err := c.renderSluice(name)
	if err != nil {
		return err
	}
	if _, err := c.kubectl(all, "apply", "-f", "-"); err != nil {
		return err
	}
	return waitFor("sluice-agent Ready on every node", 3*time.Minute, func() error {
		ds, err := cs.AppsV1().DaemonSets("kube-system").Get(context.Background(), "sluice-agent", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if n := int32(len(Nodes)); ds.Status.NumberReady != n || ds.Status.UpdatedNumberScheduled != n {
			return fmt.Errorf("%d of %d ready", ds.Status.NumberReady, n)
		}
		return nil
	})
}

// renderSluice is what deploySluice applies.
func (c *Config) renderSluice(name string) ([]byte, error) {
	dir := filepath.Join(c.Src, "manifests")
	if WithoutKubeProxy(c.KubeProxy) {
		dir = filepath.Join(c.Src, "manifests-kube-proxy-free")
	}
	cmd := exec.Command(c.bin("kubectl"), "kustomize", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	all, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("render %s: %w: %s", dir, err, bytes.TrimSpace(stderr.Bytes()))
	}
	all = imageLine.ReplaceAll(all, []byte("${1}"+name))
	if WithoutKubeProxy(c.KubeProxy) {
		v2 := cgroupMounts(true)
		if len(v2) == 0 {
			return nil, errors.New("render sluice: no cgroup v2 hierarchy for socket LB")
		}
		all = apiServerArg.ReplaceAll(all, []byte("${1}"+netip.AddrPortFrom(gwIP, apiPort).String()))
		// $(NODE_NAME) is the node's cgroupRoot: one DaemonSet for both.
		all = socketLBArg.ReplaceAll(all, []byte("${1}"+filepath.Join("/host", v2[0])+"/$(NODE_NAME)"))
		if c.KubeProxy == KubeProxyNoneHostNS {
			all = socketLBLine.ReplaceAll(all, []byte("$0\n${1}- --socket-lb-hostns-only"))
		}
	}
	return all, nil
}
