package cluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// checkCleanupOfEitherSide migrates as a user would and checks that neither side's --cleanup
// breaks the other: with kube-proxy stopped and cleaned up on node1, sluice serves node1's
// NodePort; with sluice's DaemonSet deleted its pinned datapath keeps serving; with sluice
// cleaned up on node2, kube-proxy serves node2's.
func checkCleanupOfEitherSide(t *testing.T, c *Config) {
	cs, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	labels := map[string]string{"app": "coexist"}
	replicas := int32(2)
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "coexist"}, Spec: appsv1.DeploymentSpec{
		Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "netexec", Image: AgnhostImage, Args: []string{"netexec", "--http-port=8080"}}}}}}}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "coexist"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeNodePort, Selector: labels,
		Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080), NodePort: 30999}}}}
	if _, err := cs.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	node1, node2 := Nodes[0], Nodes[1]
	url := func(n Node) string { return fmt.Sprintf("http://%s:30999/hostname", n.IP) }
	// Everything serves: both nodes, both proxies.
	if err := waitFor("the NodePort on both nodes", 2*time.Minute, func() error {
		for _, n := range Nodes {
			if err := get(url(n), 10); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// kube-proxy stopped and cleaned up on node1 (its rules gone): sluice alone serves there.
	pid := readPid(filepath.Join(c.Dir, "run", node1.Name+"-kube-proxy.pid"))
	if err := kill(func(p int) bool { return p == pid }, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := runArgv(c.inNode(node1, c.bin("kube-proxy"), "--cleanup")); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command("nsenter", "--net=/run/netns/"+node1.Name, "iptables-save").Output(); strings.Contains(string(out), "KUBE-NODEPORTS") {
		t.Fatalf("kube-proxy --cleanup left its NodePort rules on %s", node1.Name)
	}
	if err := get(url(node1), 20); err != nil {
		t.Fatalf("sluice stopped serving %s after kube-proxy --cleanup: %v", node1.Name, err)
	}

	// sluice's DaemonSet deleted: the datapath is pinned and keeps serving (node1 has nothing
	// else now); then sluice-agent --cleanup on node2 leaves it to kube-proxy.
	if err := cs.AppsV1().DaemonSets("kube-system").Delete(ctx, "sluice-agent", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := waitFor("sluice's pods gone", 2*time.Minute, func() error {
		pods, err := cs.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=sluice-agent"})
		if err == nil && len(pods.Items) > 0 {
			err = fmt.Errorf("%d left", len(pods.Items))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := get(url(node1), 20); err != nil {
		t.Fatalf("sluice's pinned datapath stopped serving %s when its DaemonSet went: %v", node1.Name, err)
	}
	agent := filepath.Join(t.TempDir(), "sluice-agent")
	if out, err := exec.Command("go", "build", "-o", agent, "../../cmd/sluice-agent").CombinedOutput(); err != nil {
		t.Fatalf("build sluice-agent: %v\n%s", err, out)
	}
	if err := runArgv(c.inNode(node2, agent, "--cleanup", "--bpffs", "/sys/fs/bpf/sluice")); err != nil {
		t.Fatal(err)
	}
	if err := runArgv(c.inNode(node2, "test", "!", "-e", "/sys/fs/bpf/sluice")); err != nil {
		t.Fatalf("sluice-agent --cleanup left its pins on %s: %v", node2.Name, err)
	}
	if err := get(url(node2), 20); err != nil {
		t.Fatalf("kube-proxy stopped serving %s after sluice-agent --cleanup: %v", node2.Name, err)
	}
}

// get makes n HTTP requests from the client's namespace (new connections each), all of which
// must succeed.
func get(url string, n int) error {
	dial := dialIn(clientNS)
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return dial(ctx, network, addr) }}}
	for i := 0; i < n; i++ {
		resp, err := client.Get(url)
		if err != nil {
			return fmt.Errorf("request %d of %d to %s: %w", i+1, n, url, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("request %d of %d to %s: %s", i+1, n, url, resp.Status)
		}
	}
	return nil
}
