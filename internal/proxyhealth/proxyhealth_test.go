package proxyhealth

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
)

// fixture is a server on a fake clock behind a real HTTP listener, with a Node the test swaps.
type fixture struct {
	t   *testing.T
	clk *clocktesting.FakeClock
	s   *Server
	srv *httptest.Server

	mu   sync.Mutex
	node *v1.Node
}

var start = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func newFixture(t *testing.T) *fixture {
	f := &fixture{t: t, clk: clocktesting.NewFakeClock(start), node: &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"}}}
	// 20s: twice a 10s sync period, as kube-proxy sets it; the steps below straddle it.
	f.s = New(20*time.Second, f.getNode, f.clk, zap.NewNop())
	f.srv = httptest.NewServer(f.s.Handler())
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) getNode() *v1.Node {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.node
}

func (f *fixture) setNode(n *v1.Node) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.node = n
}

// get answers path, checking kube-proxy's headers and that the body is the JSON it sends.
func (f *fixture) get(path string) (int, Health, string) {
	f.t.Helper()
	resp, err := http.Get(f.srv.URL + path)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	if ct, nosniff := resp.Header.Get("Content-Type"), resp.Header.Get("X-Content-Type-Options"); ct != "application/json" || nosniff != "nosniff" {
		f.t.Errorf("%s: headers Content-Type %q, X-Content-Type-Options %q", path, ct, nosniff)
	}
	var h Health
	if err := json.Unmarshal(b, &h); err != nil {
		f.t.Fatalf("%s: body %q: %v", path, b, err)
	}
	return resp.StatusCode, h, string(b)
}

// want checks /healthz and /livez: their codes, and the body's health and node eligibility.
func (f *fixture) want(what string, healthz, livez int, healthy, eligible bool) {
	f.t.Helper()
	code, h, body := f.get("/healthz")
	if code != healthz || h.Healthy != healthy || h.NodeEligible == nil || *h.NodeEligible != eligible {
		f.t.Errorf("%s: /healthz %d %s, want %d healthy %v nodeEligible %v", what, code, body, healthz, healthy, eligible)
	}
	code, h, body = f.get("/livez")
	if code != livez || h.Healthy != healthy || strings.Contains(body, "nodeEligible") {
		f.t.Errorf("%s: /livez %d %s, want %d healthy %v and no nodeEligible", what, code, body, livez, healthy)
	}
}

// Starting up, a sync done, time passing with nothing queued, a change queued past the
// timeout, and synced again: as kube-proxy's TestHealthzServer walks it.
func TestHealthFollowsQueuedChangesAndSyncs(t *testing.T) {
	f := newFixture(t)

	// Not synced yet: healthy (kube-proxy judges a family only once it has synced), no status,
	// lastUpdated the time of the answer.
	code, h, body := f.get("/healthz")
	want := `{"lastUpdated":"2026-12-01T10:00:00Z","currentTime":"2026-12-01T10:00:00Z","nodeEligible":true,"healthy":true}`
	if code != 200 || body != want {
		t.Errorf("not synced: %d %s\nwant 200 %s", code, body, want)
	}
	// A change queued before the first sync does not count either.
	f.s.QueuedUpdate()
	f.clk.Step(time.Minute)
	f.want("queued, never synced", 200, 200, true, true)

	f.s.Updated()
	synced := f.clk.Now()
	f.clk.Step(25 * time.Second) // past the timeout, but nothing is queued
	code, h, body = f.get("/healthz")
	want = `{"lastUpdated":"2026-12-01T10:01:25Z","currentTime":"2026-12-01T10:01:25Z","nodeEligible":true,"healthy":true,` +
		`"status":{"IPv4":{"lastUpdated":"2026-12-01T10:01:00Z","healthy":true}}}`
	if code != 200 || body != want {
		t.Errorf("synced, idle: %d %s\nwant 200 %s", code, body, want)
	}

	f.s.QueuedUpdate()
	f.clk.Step(10 * time.Second)
	f.s.QueuedUpdate() // a later change does not restart the wait
	f.clk.Step(9 * time.Second)
	f.want("queued 19s of 20s", 200, 200, true, true)
	f.clk.Step(time.Second) // the timeout itself is too late
	f.want("queued 20s", 503, 503, false, true)
	code, h, _ = f.get("/livez")
	if code != 503 || !h.LastUpdated.Equal(synced) || !h.CurrentTime.Equal(f.clk.Now()) ||
		!h.Status[v1.IPv4Protocol].LastUpdated.Equal(synced) || h.Status[v1.IPv4Protocol].Healthy {
		t.Errorf("stale: lastUpdated %v currentTime %v status %v; want the last sync's time %v", h.LastUpdated, h.CurrentTime, h.Status, synced)
	}

	f.s.Updated()
	f.clk.Step(5 * time.Second)
	f.want("synced again", 200, 200, true, true)
	if _, h, _ := f.get("/livez"); !h.LastUpdated.Equal(f.clk.Now()) || h.Status[v1.IPv4Protocol].LastUpdated.Equal(synced) {
		t.Errorf("synced again: %+v", h)
	}
}

// A node on its way out fails /healthz, so load balancers drain it, while /livez (is the
// proxy itself working?) stays 200; back to 200 when it is eligible again.
func TestHealthzFollowsTheNodesEligibility(t *testing.T) {
	f := newFixture(t)
	f.s.Updated()
	node := f.getNode()
	f.want("eligible", 200, 200, true, true)

	deleting := node.DeepCopy()
	deleting.DeletionTimestamp = &metav1.Time{Time: start}
	f.setNode(deleting)
	f.want("being deleted", 503, 200, true, false)

	f.setNode(node)
	f.want("eligible again", 200, 200, true, true)

	tainted := node.DeepCopy()
	tainted.Spec.Taints = []v1.Taint{{Key: "example.com/other", Effect: v1.TaintEffectNoSchedule}}
	f.setNode(tainted)
	f.want("another taint", 200, 200, true, true)
	tainted = tainted.DeepCopy()
	tainted.Spec.Taints = append(tainted.Spec.Taints, v1.Taint{Key: ToBeDeletedTaint, Value: "1764583200", Effect: v1.TaintEffectNoSchedule})
	f.setNode(tainted)
	f.want("tainted by the autoscaler", 503, 200, true, false)
	if _, _, body := f.get("/healthz"); !strings.Contains(body, `"nodeEligible":false,"healthy":true`) {
		t.Errorf("body %s", body)
	}

	// Unknown (not seen yet, or deleted): not eligible, as kube-proxy's nil Node.
	f.setNode(nil)
	f.want("no Node", 503, 200, true, false)

	f.setNode(node)
	f.want("eligible again", 200, 200, true, true)

	// Both at once: stale and not eligible.
	f.s.QueuedUpdate()
	f.clk.Step(time.Minute)
	f.setNode(tainted)
	f.want("stale and tainted", 503, 503, false, false)
}

func TestOnlyHealthzAndLivez(t *testing.T) {
	f := newFixture(t)
	for _, p := range []string{"/", "/readyz", "/metrics", "/healthz/x"} {
		resp, err := http.Get(f.srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", p, resp.StatusCode)
		}
	}
}

// kube-proxy still holds the address (a cluster migrating): Run says so once at warn, with
// the address, keeps trying, and serves once it is let go.
func TestRunWaitsForTheAddress(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := held.Addr().String()
	defer held.Close()

	core, logs := observer.New(zapcore.InfoLevel)
	clk := clocktesting.NewFakeClock(start)
	s := New(time.Minute, func() *v1.Node { return &v1.Node{} }, clk, zap.New(core))
	s.Updated()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		s.Run(ctx, addr)
		close(done)
	}()
	// Waiting to retry: the fake clock has a waiter.
	waitFor(t, "a retry to be scheduled", clk.HasWaiters)
	clk.Step(retryInterval)
	waitFor(t, "a second retry", clk.HasWaiters)
	warns := logs.FilterLevelExact(zapcore.WarnLevel).All()
	if len(warns) != 1 || warns[0].ContextMap()["addr"] != addr || !strings.Contains(warns[0].Message, "in use") {
		t.Fatalf("want one warning naming %s, got %v", addr, warns)
	}

	held.Close()
	clk.Step(retryInterval)
	var resp *http.Response
	waitFor(t, "the server to answer", func() bool {
		resp, err = http.Get("http://" + addr + "/healthz")
		return err == nil
	})
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("after the address was let go: %d", resp.StatusCode)
	}
	waitFor(t, "the takeover to be logged", func() bool { return logs.FilterMessageSnippet("the address was let go").Len() == 1 })

	cancel()
	<-done
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Error("still serving after ctx ended")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
