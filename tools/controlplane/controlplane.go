// Package controlplane runs a real kube-apiserver backed by etcd on loopback for integration
// tests, benchmarks and the side-by-side runs with kube-proxy: built by build.sh from the
// Kubernetes sources, started with Start, stopped (apiserver first, then etcd) with Stop.
package controlplane

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Cache is where build.sh keeps its sources, build cache and binaries.
func Cache() string {
	if c := os.Getenv("SLUICE_CACHE"); c != "" {
		return c
	}
	return "/var/cache/sluice"
}

// Bin is the folder with kube-apiserver and kube-proxy.
func Bin() string { return filepath.Join(Cache(), "k8s", "bin") }

var buildMu sync.Mutex

// Build runs build.sh (a no-op when the binaries are there).
func Build() error {
	buildMu.Lock()
	defer buildMu.Unlock()
	_, file, _, _ := runtime.Caller(0)
	out, err := exec.Command("bash", filepath.Join(filepath.Dir(file), "build.sh")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("build control plane: %v\n%s", err, out)
	}
	return nil
}

// ControlPlane is a running etcd + kube-apiserver.
type ControlPlane struct {
	Dir        string // scratch folder: data, certs, kubeconfig, logs
	Port       int    // kube-apiserver's secure port on 127.0.0.1
	Token      string // an admin bearer token (group system:masters)
	Kubeconfig string // a kubeconfig file for Port and Token
	etcd, api  *exec.Cmd
	opts       Options
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Options change how the API server runs.
type Options struct {
	// NodePortRange is --service-node-port-range (default 30000-32767): 10k NodePort services
	// need a wider one.
	NodePortRange string
}

// Start builds if needed, then starts etcd and kube-apiserver and waits until it is ready.
func Start() (*ControlPlane, error) { return StartWith(Options{}) }

// StartWith is Start with options.
func StartWith(o Options) (*ControlPlane, error) {
	if o.NodePortRange == "" {
		o.NodePortRange = "30000-32767"
	}
	if err := Build(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "sluice-controlplane-")
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{Dir: dir, opts: o}
	if err := cp.start(); err != nil {
		cp.Stop()
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	return cp, nil
}

func (cp *ControlPlane) start() error {
	ports := make([]int, 3)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return err
		}
		ports[i] = p
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	cp.Port = ports[2]
	logf, err := os.Create(filepath.Join(cp.Dir, "etcd.log"))
	if err != nil {
		return err
	}
	cp.etcd = exec.Command("etcd", "--data-dir", filepath.Join(cp.Dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
		"--initial-cluster", fmt.Sprintf("default=http://127.0.0.1:%d", ports[1]),
		"--quota-backend-bytes", strconv.Itoa(8<<30))
	cp.etcd.Stdout, cp.etcd.Stderr = logf, logf
	cp.etcd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+runtime.GOARCH)
	if err := cp.etcd.Start(); err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	saKey, saPub := filepath.Join(cp.Dir, "sa.key"), filepath.Join(cp.Dir, "sa.pub")
	if err := os.WriteFile(saKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(saPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		return err
	}
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	cp.Token = hex.EncodeToString(tok)
	tokens := filepath.Join(cp.Dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(cp.Token+",admin,admin,system:masters\n"), 0o600); err != nil {
		return err
	}
	apiLog, err := os.Create(filepath.Join(cp.Dir, "kube-apiserver.log"))
	if err != nil {
		return err
	}
	// --advertise-address 127.0.0.1 needs --endpoint-reconciler-type=none (it will not
	// publish a loopback address in the kubernetes service's endpoints).
	cp.api = exec.Command(filepath.Join(Bin(), "kube-apiserver"),
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(cp.Port), "--endpoint-reconciler-type", "none",
		"--cert-dir", filepath.Join(cp.Dir, "certs"), "--token-auth-file", tokens,
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", saPub, "--service-account-signing-key-file", saKey,
		// Dual-stack, IPv4 first: services are IPv4 unless they ask for IPv6 (the lab's IPv6
		// parity runs do).
		"--service-cluster-ip-range", "10.96.0.0/12,fd00:96::/112", "--service-node-port-range", cp.opts.NodePortRange,
		"--enable-priority-and-fairness=false", "--profiling=false",
		"--max-requests-inflight", "2000", "--max-mutating-requests-inflight", "1000")
	cp.api.Stdout, cp.api.Stderr = apiLog, apiLog
	if err := cp.api.Start(); err != nil {
		return fmt.Errorf("start kube-apiserver: %w", err)
	}
	if err := cp.waitReady(90 * time.Second); err != nil {
		return err
	}
	cp.Kubeconfig = filepath.Join(cp.Dir, "kubeconfig")
	return os.WriteFile(cp.Kubeconfig, []byte(cp.KubeconfigFor(fmt.Sprintf("https://127.0.0.1:%d", cp.Port))), 0o600)
}

// KubeconfigFor is a kubeconfig that reaches the API server at server (a relay, say).
func (cp *ControlPlane) KubeconfigFor(server string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: sluice
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: %s
contexts:
- name: sluice
  context: {cluster: sluice, user: admin}
current-context: sluice
`, server, cp.Token)
}

func (cp *ControlPlane) waitReady(timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(timeout)
	for {
		req, _ := http.NewRequest("GET", fmt.Sprintf("https://127.0.0.1:%d/readyz", cp.Port), nil)
		req.Header.Set("Authorization", "Bearer "+cp.Token)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			err = fmt.Errorf("readyz: %s", resp.Status)
		}
		if cp.api.ProcessState != nil || time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(cp.Dir, "kube-apiserver.log"))
			if len(log) > 4000 {
				log = log[len(log)-4000:]
			}
			return fmt.Errorf("wait for kube-apiserver: %w\n%s", err, log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// RESTConfig reaches the API server as admin.
func (cp *ControlPlane) RESTConfig() *rest.Config {
	return &rest.Config{
		Host: fmt.Sprintf("https://127.0.0.1:%d", cp.Port), BearerToken: cp.Token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true}, QPS: 500, Burst: 1000,
	}
}

// Client is an admin clientset.
func (cp *ControlPlane) Client() (kubernetes.Interface, error) {
	return kubernetes.NewForConfig(cp.RESTConfig())
}

// Stop stops the API server, then etcd (in the other order the API server spins for ~25 s),
// and removes the scratch folder.
func (cp *ControlPlane) Stop() {
	for _, c := range []*exec.Cmd{cp.api, cp.etcd} {
		if c == nil || c.Process == nil {
			continue
		}
		_ = c.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
	}
	_ = os.RemoveAll(cp.Dir)
}

// Relay accepts connections on a listener (made inside another network namespace, say) and
// connects each to the API server on this namespace's loopback: the agent runs in a lab node's
// namespace, where 127.0.0.1 is not ours.
func (cp *ControlPlane) Relay(ctx context.Context, l net.Listener) {
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			continue
		}
		go func() {
			defer c.Close()
			up, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", cp.Port))
			if err != nil {
				return
			}
			defer up.Close()
			go func() { copyConn(up, c) }()
			copyConn(c, up)
		}()
	}
}

func copyConn(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}
