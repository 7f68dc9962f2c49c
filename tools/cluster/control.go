package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netns"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// identities are the API server's users: one token each, in the groups the bootstrap RBAC
// policy (and the Node authorizer, for kubelets) expects.
func identities() map[string]identity {
	ids := map[string]identity{
		"admin":      {newToken(), "admin", []string{"system:masters"}},
		"controller": {newToken(), "system:kube-controller-manager", nil},
		"scheduler":  {newToken(), "system:kube-scheduler", nil},
		"kube-proxy": {newToken(), "system:kube-proxy", nil},
	}
	for _, n := range Nodes {
		ids[n.Name] = identity{newToken(), "system:node:" + n.Name, []string{"system:nodes"}}
	}
	return ids
}

func (c *Config) pkiDir() string { return filepath.Join(c.Dir, "pki") }

// writeCredentials writes the CA, the certificates, the token file and a kubeconfig per
// identity (name.kubeconfig, for the API server's address on br0).
func (c *Config) writeCredentials() (*pki, error) {
	p, err := newPKI(c.pkiDir())
	if err != nil {
		return nil, err
	}
	ips := []net.IP{gwIP.AsSlice(), net.IPv4(127, 0, 0, 1), apiIP.AsSlice()}
	dns := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}
	if err := p.sign("apiserver", "kube-apiserver", nil, ips, dns, false); err != nil {
		return nil, err
	}
	// The API server's client certificate toward kubelets (exec, logs, port-forward).
	if err := p.sign("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil, true); err != nil {
		return nil, err
	}
	for _, n := range Nodes {
		if err := p.sign("kubelet-"+n.Name, n.Name, nil, []net.IP{n.IP.AsSlice()}, []string{n.Name}, false); err != nil {
			return nil, err
		}
	}
	var csv strings.Builder
	for name, id := range identities() {
		fmt.Fprintf(&csv, "%s,%s,%s", id.token, id.user, id.user)
		if len(id.groups) > 0 {
			fmt.Fprintf(&csv, ",\"%s\"", strings.Join(id.groups, ","))
		}
		csv.WriteString("\n")
		kc, err := p.kubeconfig(fmt.Sprintf("https://%s:%d", gwIP, apiPort), id.token)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(p.path(name+".kubeconfig"), kc, 0o600); err != nil {
			return nil, fmt.Errorf("write kubeconfig: %w", err)
		}
		if name == "admin" {
			host, err := p.kubeconfig("https://"+HostRelay, id.token)
			if err != nil {
				return nil, err
			}
			if err := os.WriteFile(c.Kubeconfig(), host, 0o600); err != nil {
				return nil, fmt.Errorf("write kubeconfig: %w", err)
			}
		}
	}
	if err := os.WriteFile(p.path("tokens.csv"), []byte(csv.String()), 0o600); err != nil {
		return nil, fmt.Errorf("write tokens: %w", err)
	}
	return p, nil
}

// startControlPlane starts etcd, kube-apiserver, the controller manager and the scheduler in
// sluice-gw, and waits for the API server.
func (c *Config) startControlPlane() error {
	logs := filepath.Join(c.Dir, "logs")
	pk := c.pkiDir()
	f := func(name string) string { return filepath.Join(pk, name) }
	start := func(name string, argv ...string) error {
		return daemon(filepath.Join(logs, name+".log"), filepath.Join(c.Dir, "run", name+".pid"), nil, inNS(gwNS, "", argv...)...)
	}
	if err := start("etcd", "etcd", "--data-dir", filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "default=http://127.0.0.1:2380", "--quota-backend-bytes", "4294967296"); err != nil {
		return err
	}
	if err := start("kube-apiserver", c.bin("kube-apiserver"),
		"--etcd-servers", "http://127.0.0.1:2379",
		"--bind-address", "0.0.0.0", "--advertise-address", gwIP.String(), "--secure-port", fmt.Sprint(apiPort),
		"--tls-cert-file", f("apiserver.crt"), "--tls-private-key-file", f("apiserver.key"),
		"--client-ca-file", f("ca.crt"), "--token-auth-file", f("tokens.csv"),
		"--kubelet-client-certificate", f("apiserver-kubelet-client.crt"), "--kubelet-client-key", f("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority", f("ca.crt"),
		// Node names resolve nowhere here: reach kubelets by address (as kind does).
		"--kubelet-preferred-address-types", "InternalIP,Hostname",
		"--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
		"--allow-privileged=true",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", f("sa.pub"), "--service-account-signing-key-file", f("sa.key"),
		"--service-cluster-ip-range", c.svcCIDRs(), "--service-node-port-range", "30000-32767",
		"--profiling=false"); err != nil {
		return err
	}
	if err := c.waitAPI(2 * time.Minute); err != nil {
		return err
	}
	if err := start("kube-controller-manager", append([]string{c.bin("kube-controller-manager"),
		"--kubeconfig", f("controller.kubeconfig"),
		"--authentication-kubeconfig", f("controller.kubeconfig"), "--authorization-kubeconfig", f("controller.kubeconfig"),
		"--bind-address", "127.0.0.1",
		"--allocate-node-cidrs", "--cluster-cidr", c.podCIDRs(),
		"--service-cluster-ip-range", c.svcCIDRs(),
		"--root-ca-file", f("ca.crt"), "--service-account-private-key-file", f("sa.key"),
		"--use-service-account-credentials", "--controllers", "*,bootstrapsigner,tokencleaner",
		"--leader-elect=false", "--profiling=false"}, c.nodeCIDRMask()...)...); err != nil {
		return err
	}
	return start("kube-scheduler", c.bin("kube-scheduler"),
		"--kubeconfig", f("scheduler.kubeconfig"),
		"--authentication-kubeconfig", f("scheduler.kubeconfig"), "--authorization-kubeconfig", f("scheduler.kubeconfig"),
		"--bind-address", "127.0.0.1", "--leader-elect=false", "--profiling=false")
}

// dialIn dials from inside a network namespace: the thread that dials enters it and is
// thrown away after (a goroutine that exits locked ends its thread).
func dialIn(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			h, err := netns.GetFromPath("/run/netns/" + ns)
			if err == nil {
				err = netns.Set(h)
				h.Close()
			}
			if err != nil {
				ch <- result{nil, fmt.Errorf("enter netns %s: %w", ns, err)}
				return
			}
			conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			ch <- result{conn, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// RESTConfig reaches the API server as admin from this process, through sluice-gw.
func (c *Config) RESTConfig() (*rest.Config, error) {
	ca, err := os.ReadFile(filepath.Join(c.pkiDir(), "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	kc, err := os.ReadFile(filepath.Join(c.pkiDir(), "admin.kubeconfig"))
	if err != nil {
		return nil, fmt.Errorf("read admin kubeconfig: %w", err)
	}
	_, tok, _ := strings.Cut(string(kc), "token: ")
	tok, _, _ = strings.Cut(tok, "\n")
	return &rest.Config{
		Host: fmt.Sprintf("https://%s:%d", gwIP, apiPort), BearerToken: tok,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca}, Dial: dialIn(gwNS), QPS: 50, Burst: 100,
	}, nil
}

// Client is an admin clientset (see RESTConfig).
func (c *Config) Client() (kubernetes.Interface, error) {
	rc, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(rc)
}

func (c *Config) waitAPI(timeout time.Duration) error {
	cs, err := c.Client()
	if err != nil {
		return err
	}
	return waitFor("kube-apiserver", timeout, func() error {
		if !alive(readPid(filepath.Join(c.Dir, "run", "kube-apiserver.pid"))) {
			return errors.New("kube-apiserver exited: see " + filepath.Join(c.Dir, "logs", "kube-apiserver.log"))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("readyz: %w: %s", err, body)
		}
		return nil
	})
}

// Relay serves the API server on listen (on the host's loopback) until ctx ends: kubectl and
// e2e.test on the host reach the cluster through it.
func Relay(ctx context.Context, listen string) error {
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen for the relay: %w", err)
	}
	go func() { <-ctx.Done(); l.Close() }()
	dial := dialIn(gwNS)
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		go func() {
			defer conn.Close()
			up, err := dial(ctx, "tcp", fmt.Sprintf("%s:%d", gwIP, apiPort))
			if err != nil {
				return
			}
			defer up.Close()
			go func() { _, _ = io.Copy(up, conn); _ = up.(*net.TCPConn).CloseWrite() }()
			_, _ = io.Copy(conn, up)
		}()
	}
}

// podCIDRs and svcCIDRs are the cluster's ranges: IPv4's, then IPv6's in a dual-stack cluster.
func (c *Config) podCIDRs() string {
	if c.DualStack {
		return podCIDR + "," + podCIDR6
	}
	return podCIDR
}

func (c *Config) svcCIDRs() string {
	if c.DualStack {
		return svcCIDR + "," + svcCIDR6
	}
	return svcCIDR
}

// nodeCIDRMask sizes each node's pod range: a /24, and a /64 of IPv6 when dual-stack (the
// controller manager refuses the per-family flags on a single-stack cluster).
func (c *Config) nodeCIDRMask() []string {
	if c.DualStack {
		return []string{"--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64"}
	}
	return []string{"--node-cidr-mask-size=24"}
}
