// Package healthcheck serves the healthCheckNodePort of services with externalTrafficPolicy
// Local, as kube-proxy does: a load balancer asks each node whether it has endpoints for the
// service and sends traffic only to those that answer 200.
package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/lb"
)

// Server runs one HTTP listener per health check port.
type Server struct {
	// Addresses to listen on; none: every address (kube-proxy's --nodeport-addresses).
	Addresses []netip.Addr
	// Healthy reports whether the agent itself is healthy (serviceProxyHealthy).
	Healthy func() bool
	Log     *zap.Logger

	mu        sync.Mutex
	services  map[types.NamespacedName]desired.HealthCheck
	listeners map[uint16]*listener
	// elsewhere are the ports another process serves (kube-proxy, beside sluice): said once,
	// then retried quietly on every Sync, so sluice takes a port over when it is let go.
	elsewhere map[uint16]bool
}

type listener struct {
	name    types.NamespacedName
	servers []*http.Server
	lns     []net.Listener
}

// Sync makes the server answer for exactly these services: new ports are opened, ports of
// services gone are closed, and counts change in place. A port another process already serves
// is left to it: beside kube-proxy, whichever binds a healthCheckNodePort first answers it, and
// both answer alike (both count this node's ready endpoints of the same EndpointSlices). That
// is said once; the port is tried again on every Sync, so sluice serves it once the other
// process lets it go (kube-proxy removed). Any other failure is logged as an error.
func (s *Server) Sync(checks map[types.NamespacedName]desired.HealthCheck) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listeners == nil {
		s.listeners = map[uint16]*listener{}
		s.elsewhere = map[uint16]bool{}
	}
	s.services = make(map[types.NamespacedName]desired.HealthCheck, len(checks))
	want := map[uint16]types.NamespacedName{}
	for n, hc := range checks {
		s.services[n] = hc
		if other, ok := want[hc.Port]; ok {
			s.Log.Error("Two services share a healthCheckNodePort; serving the first", zap.Uint16("port", hc.Port),
				zap.Stringer("service", n), zap.Stringer("other", other))
			if other.String() < n.String() {
				continue
			}
		}
		want[hc.Port] = n
	}
	for port, l := range s.listeners {
		if n, ok := want[port]; !ok || n != l.name {
			l.close()
			delete(s.listeners, port)
		}
	}
	for port, n := range want {
		if _, ok := s.listeners[port]; ok {
			continue
		}
		l, err := s.listen(port, n)
		switch {
		case errors.Is(err, syscall.EADDRINUSE):
			if !s.elsewhere[port] {
				s.Log.Info("Health check port served by another process (kube-proxy?); leaving it to it, and taking it over if it is let go",
					zap.Stringer("service", n), zap.Uint16("port", port))
				s.elsewhere[port] = true
			}
			continue
		case err != nil:
			s.Log.Error("Could not serve health check", zap.Stringer("service", n), zap.Uint16("port", port), zap.Error(err))
			continue
		}
		delete(s.elsewhere, port)
		s.Log.Info("Serving health check", zap.Stringer("service", n), zap.Uint16("port", port))
		s.listeners[port] = l
	}
	for port := range s.elsewhere {
		if _, ok := want[port]; !ok {
			delete(s.elsewhere, port)
		}
	}
}

// SetAddresses changes the addresses to listen on (a device plugged in or unplugged, an
// address added): when they differ, every listener closes and the next Sync opens it again on
// the new ones. Reports whether they differed.
func (s *Server) SetAddresses(addrs []netip.Addr) bool {
	addrs = slices.Clone(addrs)
	slices.SortFunc(addrs, netip.Addr.Compare)
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Equal(addrs, s.Addresses) {
		return false
	}
	s.Addresses = addrs
	for port, l := range s.listeners {
		l.close()
		delete(s.listeners, port)
	}
	return true
}

// Close stops every listener.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for port, l := range s.listeners {
		l.close()
		delete(s.listeners, port)
	}
}

func (s *Server) listen(port uint16, n types.NamespacedName) (*listener, error) {
	addrs := []string{""}
	if len(s.Addresses) > 0 {
		addrs = addrs[:0]
		for _, a := range s.Addresses {
			addrs = append(addrs, a.String())
		}
	}
	l := &listener{name: n}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.serve(w, n, familyOf(r)) })
	for _, a := range addrs {
		ln, err := net.Listen("tcp", net.JoinHostPort(a, strconv.Itoa(int(port))))
		if err != nil {
			l.close()
			return nil, fmt.Errorf("listen on health check port: %w", err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		l.servers = append(l.servers, srv)
		l.lns = append(l.lns, ln)
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.Log.Warn("Health check listener stopped", zap.Stringer("service", n), zap.Error(err))
			}
		}()
	}
	return l, nil
}

// close stops listening at once (the port can be opened again) and lets probes in progress
// finish in the background for up to a second: the caller, the sync loop, holding the
// server's lock, must not wait for a load balancer's slow or half-sent request.
func (l *listener) close() {
	for _, ln := range l.lns {
		_ = ln.Close()
	}
	servers := l.servers
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		for _, srv := range servers {
			_ = srv.Shutdown(ctx)
		}
	}()
}

// serve answers as kube-proxy's service health server: the same status, headers and body.
func (s *Server) serve(w http.ResponseWriter, n types.NamespacedName, f lb.Family) {
	s.mu.Lock()
	hc, ok := s.services[n]
	s.mu.Unlock()
	local := hc.For(f)
	if !ok {
		// Gone while the probe was in progress (its port is closing): not a 200 by default.
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	healthy := s.Healthy == nil || s.Healthy()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(local))
	if local != 0 && healthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintf(w, "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
		n.Namespace, n.Name, local, healthy)
}

// familyOf is the family a probe came over (its connection's local address): kube-proxy
// answers it from that family's proxier, with that family's endpoints.
func familyOf(r *http.Request) lb.Family {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			return lb.FamilyOf(ap.Addr())
		}
	}
	return lb.IPv4
}
