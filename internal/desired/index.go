package desired

import (
	"fmt"
	"sort"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// rank orders services claiming one NodePort: the oldest wins, then the name, so the outcome
// does not depend on the order events arrive in.
type rank struct {
	created time.Time
	name    string
}

func (a rank) before(b rank) bool {
	if !a.created.Equal(b.created) {
		return a.created.Before(b.created)
	}
	return a.name < b.name
}

// Index is the desired state kept up to date one service at a time, so a change to one
// EndpointSlice costs that service's work, not the cluster's.
type Index struct {
	o Options
	// Services are the service ports the datapath should hold (each key's winner).
	Services map[ServiceKey]*Service
	ports    map[types.NamespacedName][]*Service
	ranks    map[types.NamespacedName]rank
	claims   map[ServiceKey]map[types.NamespacedName]bool
	// HealthChecks are the services with a healthCheckNodePort to answer on.
	HealthChecks map[types.NamespacedName]HealthCheck
}

// NewIndex returns an empty Index.
func NewIndex(o Options) *Index {
	return &Index{o: o, Services: map[ServiceKey]*Service{},
		ports: map[types.NamespacedName][]*Service{}, ranks: map[types.NamespacedName]rank{},
		claims: map[ServiceKey]map[types.NamespacedName]bool{}, HealthChecks: map[types.NamespacedName]HealthCheck{}}
}

// Set replaces service n (svc nil: deleted) and its slices, and returns the keys whose entry
// may have changed, and the service's own problems (not conflicts: see Conflicts).
func (x *Index) Set(n types.NamespacedName, svc *v1.Service, slices []*discoveryv1.EndpointSlice) ([]ServiceKey, []Problem) {
	ports, problems := ServicePorts(n, svc, slices, x.o)
	// Only for a service with a port sluice programs: a load balancer told "healthy" for a
	// service whose every port was refused would send traffic nothing serves.
	external := false
	for _, p := range ports {
		external = external || p.Key.Scope == ScopeExternal
	}
	if hc, ok := HealthCheckOf(svc, slices, x.o.NodeName); ok && external {
		x.HealthChecks[n] = hc
	} else {
		delete(x.HealthChecks, n)
	}
	affected := map[ServiceKey]bool{}
	for _, p := range x.ports[n] {
		affected[p.Key] = true
		delete(x.claims[p.Key], n)
	}
	if len(ports) == 0 {
		delete(x.ports, n)
		delete(x.ranks, n)
	} else {
		x.ports[n] = ports
		x.ranks[n] = rank{svc.CreationTimestamp.Time, n.String()}
		for _, p := range ports {
			affected[p.Key] = true
			if x.claims[p.Key] == nil {
				x.claims[p.Key] = map[types.NamespacedName]bool{}
			}
			x.claims[p.Key][n] = true
		}
	}
	keys := make([]ServiceKey, 0, len(affected))
	for k := range affected {
		keys = append(keys, k)
		x.elect(k)
	}
	return keys, problems
}

// elect gives key to its oldest claimant.
func (x *Index) elect(k ServiceKey) {
	var best types.NamespacedName
	found := false
	for n := range x.claims[k] {
		if !found || x.ranks[n].before(x.ranks[best]) {
			best, found = n, true
		}
	}
	if !found {
		delete(x.claims, k)
		delete(x.Services, k)
		return
	}
	for _, p := range x.ports[best] {
		if p.Key == k {
			x.Services[k] = p
		}
	}
}

// Conflicts lists the service ports that lost their NodePort to an older service.
func (x *Index) Conflicts() []Problem {
	keys := make([]ServiceKey, 0, len(x.claims))
	for k := range x.claims {
		keys = append(keys, k)
	}
	return x.ConflictsFor(keys)
}

// ConflictsFor is Conflicts restricted to keys.
func (x *Index) ConflictsFor(keys []ServiceKey) []Problem {
	var out []Problem
	for _, k := range keys {
		claimants := x.claims[k]
		// A node scope loses with its external scope: one problem says so.
		if len(claimants) < 2 || k.Scope == ScopeNode {
			continue
		}
		winner := x.Services[k]
		for n := range claimants {
			for _, p := range x.ports[n] {
				if p.Key == k && p != winner {
					out = append(out, Problem{"Service " + n.String(),
						fmt.Errorf("port %q: nodePort %s already used by %s", p.Name[len(n.String())+1:], k, winner.Name)})
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Error() < out[j].Error() })
	return out
}
