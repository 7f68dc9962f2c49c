// Package proxyhealth owns kube-proxy's node health server, /healthz and /livez (kube-proxy
// serves them on 0.0.0.0:10256), for clusters where sluice replaces kube-proxy: cloud load
// balancers probe nodeIP:10256/healthz to choose the nodes that get traffic. It answers as
// kube-proxy v1.37's pkg/proxy/healthcheck/proxy_health.go does: the same paths, status codes,
// headers and JSON body, from the same inputs (a change queued, a sync done, the Node).
package proxyhealth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"
)

// ToBeDeletedTaint is the taint the Cluster Autoscaler puts on a node it is about to remove:
// /healthz answers 503 from then on, so load balancers drain the node first.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// retryInterval is how long Run waits before listening again: kube-proxy retries its own
// health server every 5 seconds (cmd/kube-proxy/app/server.go, serveHealthz).
const retryInterval = 5 * time.Second

// family is the one IP family sluice programs; kube-proxy reports health per family.
const family = v1.IPv4Protocol

// Health is the JSON body of /healthz and /livez, field for field kube-proxy's ProxyHealth.
type Health struct {
	// LastUpdated is when the last sync ended, or, while healthy, the time of the answer
	// (kube-proxy keeps that for clients of older releases).
	LastUpdated time.Time `json:"lastUpdated"`
	CurrentTime time.Time `json:"currentTime"`
	// NodeEligible is set on /healthz only.
	NodeEligible *bool `json:"nodeEligible,omitempty"`
	Healthy      bool  `json:"healthy"`
	// Status is per IP family; empty (and left out) until the first sync.
	Status map[v1.IPFamily]FamilyHealth `json:"status,omitempty"`
}

// FamilyHealth is one IP family's health, kube-proxy's ProxierHealth.
type FamilyHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

// Server computes the node's health and serves it.
type Server struct {
	clock   clock.Clock
	timeout time.Duration
	node    func() *v1.Node
	log     *zap.Logger

	mu sync.Mutex
	// updated: a sync has been done, at lastUpdated. queued: a change waits for a sync
	// since oldestQueued.
	updated, queued           bool
	lastUpdated, oldestQueued time.Time
}

// New returns a server that counts the node unhealthy once a queued change has waited timeout
// for a sync (kube-proxy: twice its sync period). node returns this node's Node, nil while
// unknown; it is called on each /healthz without the server's lock held, so it may take its
// own. clk nil is the real clock.
func New(timeout time.Duration, node func() *v1.Node, clk clock.Clock, log *zap.Logger) *Server {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Server{clock: clk, timeout: timeout, node: node, log: log}
}

// Updated records a sync that programmed everything queued so far (kube-proxy calls it also
// when its sync loop starts, so a proxy whose first sync never succeeds is judged from then).
func (s *Server) Updated() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queued = false
	s.updated, s.lastUpdated = true, s.clock.Now()
}

// QueuedUpdate records a change waiting for a sync; only the oldest one waiting counts.
func (s *Server) QueuedUpdate() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.queued {
		s.queued, s.oldestQueued = true, s.clock.Now()
	}
}

// Health is the proxy's health, without the node's eligibility (/livez): healthy while no
// sync was ever recorded, or while no queued change has waited timeout.
func (s *Server) Health() Health {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	h := Health{CurrentTime: now, Healthy: true, Status: map[v1.IPFamily]FamilyHealth{}}
	if !s.updated {
		return h // starting up: kube-proxy judges a family only once it has synced
	}
	h.LastUpdated = s.lastUpdated
	fh := FamilyHealth{LastUpdated: s.lastUpdated, Healthy: true}
	if s.queued && now.Sub(s.oldestQueued) >= s.timeout {
		h.Healthy, fh.Healthy = false, false
	}
	h.Status[family] = fh
	return h
}

// NodeEligible reports whether load balancers may send this node traffic: its Node is known,
// not being deleted, and not tainted ToBeDeletedByClusterAutoscaler.
func (s *Server) NodeEligible() bool {
	n := s.node()
	if n == nil || !n.DeletionTimestamp.IsZero() {
		return false
	}
	for _, t := range n.Spec.Taints {
		if t.Key == ToBeDeletedTaint {
			return false
		}
	}
	return true
}

// Handler serves /healthz (the proxy's health and the node's eligibility) and /livez (the
// proxy's health alone).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		h := s.Health()
		eligible := s.NodeEligible()
		h.NodeEligible = &eligible
		s.write(w, h, h.Healthy && eligible)
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) {
		h := s.Health()
		s.write(w, h, h.Healthy)
	})
	return mux
}

func (s *Server) write(w http.ResponseWriter, h Health, ok bool) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if ok {
		w.WriteHeader(http.StatusOK)
		h.LastUpdated = s.clock.Now()
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	out, _ := json.Marshal(h) // nothing in Health fails to marshal
	_, _ = w.Write(out)
}

// Run serves on addr until ctx is done. An address it cannot listen on (kube-proxy still
// holding 10256 while a cluster migrates) is logged once and tried again every few seconds,
// so the server starts when the address is let go; the agent goes on meanwhile.
func (s *Server) Run(ctx context.Context, addr string) {
	var failed string // the listen error last logged
	for {
		ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
		switch {
		case err == nil:
			if failed != "" {
				s.log.Info("Serving node health: the address was let go", zap.String("addr", ln.Addr().String()))
			} else {
				s.log.Info("Serving node health", zap.String("addr", ln.Addr().String()))
			}
			failed = ""
			if err := s.serve(ctx, ln); err != nil {
				s.log.Error("Node health server stopped; starting it again", zap.String("addr", addr), zap.Error(err))
			}
		case ctx.Err() != nil:
		case err.Error() == failed:
			// Said already.
		case errors.Is(err, syscall.EADDRINUSE):
			s.log.Warn("Node health address in use by another process (kube-proxy?); serving it once it is let go",
				zap.String("addr", addr), zap.Error(err))
			failed = err.Error()
		default:
			s.log.Warn("Could not serve node health; retrying", zap.String("addr", addr), zap.Error(err))
			failed = err.Error()
		}
		select {
		case <-ctx.Done():
			return
		case <-s.clock.After(retryInterval):
		}
	}
}

// serve answers on ln until ctx is done, then lets requests in progress finish briefly.
func (s *Server) serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		case <-stopped:
		}
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve node health: %w", err)
	}
	return nil
}
