package healthcheck

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/lb"
)

func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

func get(t *testing.T, port uint16) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(int(port)) + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestServeLikeKubeProxy(t *testing.T) {
	healthy := true
	s := &Server{Addresses: nil, Healthy: func() bool { return healthy }, Log: zap.NewNop()}
	defer s.Close()
	web := types.NamespacedName{Namespace: "default", Name: "web"}
	port := freePort(t)

	s.Sync(map[types.NamespacedName]desired.HealthCheck{web: {Port: port, LocalEndpoints: 2}})
	resp, body := get(t, port)
	want := "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
	if resp.StatusCode != 200 || body != want || resp.Header.Get("X-Load-Balancing-Endpoint-Weight") != "2" ||
		resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("got %d %v\n%s", resp.StatusCode, resp.Header, body)
	}
	var parsed struct {
		Service             struct{ Namespace, Name string }
		LocalEndpoints      int
		ServiceProxyHealthy bool
	}
	if err := json.Unmarshal([]byte(body), &parsed); err != nil || parsed.LocalEndpoints != 2 {
		t.Fatalf("body is not the JSON kube-proxy sends: %v %+v", err, parsed)
	}

	// No local endpoint (or only terminating ones, which desired does not count): 503.
	s.Sync(map[types.NamespacedName]desired.HealthCheck{web: {Port: port, LocalEndpoints: 0}})
	if resp, body := get(t, port); resp.StatusCode != 503 || !json.Valid([]byte(body)) {
		t.Errorf("no local endpoints: %d %s", resp.StatusCode, body)
	}
	// An unhealthy agent: 503 with serviceProxyHealthy false.
	s.Sync(map[types.NamespacedName]desired.HealthCheck{web: {Port: port, LocalEndpoints: 1}})
	healthy = false
	if resp, body := get(t, port); resp.StatusCode != 503 || json.Unmarshal([]byte(body), &parsed) != nil || parsed.ServiceProxyHealthy {
		t.Errorf("unhealthy agent: %d %s", resp.StatusCode, body)
	}
	healthy = true

	// The service goes (or its policy changes): the port closes.
	s.Sync(nil)
	if _, err := http.Get("http://127.0.0.1:" + strconv.Itoa(int(port))); err == nil {
		t.Error("port still answers after the service went")
	}
}

// Beside kube-proxy, which already serves the port: sluice leaves it (said once at info, no
// error on every sync) and serves it once it is let go.
func TestPortTakenIsLeftAndTakenOver(t *testing.T) {
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	core, logs := observer.New(zapcore.InfoLevel)
	s := &Server{Log: zap.New(core)}
	defer s.Close()
	web := types.NamespacedName{Namespace: "default", Name: "web"}
	checks := map[types.NamespacedName]desired.HealthCheck{web: {Port: port, LocalEndpoints: 1}}
	s.Sync(checks)
	s.Sync(checks)
	if n := logs.FilterMessageSnippet("served by another process").Len(); n != 1 || logs.FilterLevelExact(zapcore.ErrorLevel).Len() != 0 {
		t.Errorf("logged %v, want the other process said once and no error", logs.All())
	}
	ln.Close()
	s.Sync(checks)
	if resp, _ := get(t, port); resp.StatusCode != 200 {
		t.Errorf("after the port was freed: %d", resp.StatusCode)
	}
}

// The ports follow the addresses: after SetAddresses and the next Sync, a check answers on the
// new address and no longer on the old one.
func TestFollowsAddresses(t *testing.T) {
	s := &Server{Log: zap.NewNop()}
	s.SetAddresses([]netip.Addr{netip.MustParseAddr("127.0.0.1")})
	defer s.Close()
	web := types.NamespacedName{Namespace: "default", Name: "web"}
	port := freePort(t)
	checks := map[types.NamespacedName]desired.HealthCheck{web: {Port: port, LocalEndpoints: 1}}
	s.Sync(checks)
	answers := func(addr string) bool {
		resp, err := http.Get("http://" + net.JoinHostPort(addr, strconv.Itoa(int(port))) + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}
	if !answers("127.0.0.1") || answers("127.0.0.2") {
		t.Fatalf("before: 127.0.0.1 %v, 127.0.0.2 %v; want only 127.0.0.1", answers("127.0.0.1"), answers("127.0.0.2"))
	}
	if s.SetAddresses([]netip.Addr{netip.MustParseAddr("127.0.0.1")}) {
		t.Errorf("the same addresses reported as a change")
	}
	if !s.SetAddresses([]netip.Addr{netip.MustParseAddr("127.0.0.2")}) {
		t.Fatalf("new addresses not reported as a change")
	}
	s.Sync(checks)
	if answers("127.0.0.1") || !answers("127.0.0.2") {
		t.Errorf("after: 127.0.0.1 %v, 127.0.0.2 %v; want only 127.0.0.2", answers("127.0.0.1"), answers("127.0.0.2"))
	}
}

// Closing a port does not wait for a probe in progress: a load balancer's connection that has
// sent half a request must not hold the sync loop (it held it for the 1 s drain, with the
// server's lock taken). The port can be opened again at once.
func TestSyncDoesNotWaitForProbes(t *testing.T) {
	s := &Server{Healthy: func() bool { return true }, Log: zap.NewNop()}
	defer s.Close()
	web := types.NamespacedName{Namespace: "default", Name: "web"}
	port := freePort(t)
	s.Sync(map[types.NamespacedName]desired.HealthCheck{web: {Port: port, LocalEndpoints: 1}})
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(int(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n")); err != nil { // headers not finished
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // the server has read it: the connection is active
	start := time.Now()
	s.Sync(nil)
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Errorf("closing the port took %v with a probe in progress", d)
	}
	s.Sync(map[types.NamespacedName]desired.HealthCheck{web: {Port: port, LocalEndpoints: 1}})
	if resp, _ := get(t, port); resp.StatusCode != 200 {
		t.Errorf("reopened port answers %d", resp.StatusCode)
	}
}

// A dual-stack service's probe over IPv6 gets IPv6's count, over IPv4 IPv4's: kube-proxy
// answers each family from its own proxier.
func TestServeEachFamilyItsCount(t *testing.T) {
	s := &Server{Log: zap.NewNop()}
	defer s.Close()
	web := types.NamespacedName{Namespace: "default", Name: "web"}
	port := freePort(t)
	s.Sync(map[types.NamespacedName]desired.HealthCheck{web: {Port: port, LocalEndpoints: 1, DualStack: true, Second: lb.IPv6, SecondEndpoints: 0}})
	if resp, _ := get(t, port); resp.StatusCode != 200 {
		t.Errorf("over IPv4: %d, want 200 (one IPv4 endpoint)", resp.StatusCode)
	}
	resp, err := http.Get("http://[::1]:" + strconv.Itoa(int(port)) + "/healthz")
	if err != nil {
		t.Fatalf("over IPv6: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("X-Load-Balancing-Endpoint-Weight") != "0" {
		t.Errorf("over IPv6: %d, want 503 (no IPv6 endpoint)", resp.StatusCode)
	}
}
