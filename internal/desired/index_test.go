package desired

import (
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/lb"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func nn(name string) types.NamespacedName {
	return types.NamespacedName{Namespace: "default", Name: name}
}

// The NodePort goes to the oldest claimant whatever order events come in, and passes to the
// next one when the owner goes.
func TestIndexConflictHandover(t *testing.T) {
	tcp := v1.ProtocolTCP
	older, newer := service("old", v1.ServiceTypeNodePort, port("", tcp, 30300)), service("new", v1.ServiceTypeNodePort, port("", tcp, 30300))
	older.CreationTimestamp = metav1.NewTime(time.Unix(100, 0))
	newer.CreationTimestamp = metav1.NewTime(time.Unix(200, 0))
	k := ServiceKey{NodePort: 30300, Proto: lb.TCP}
	x := NewIndex(Options{NodeName: "node1", NodePortRange: PortRange{30000, 32767}})
	x.Set(nn("new"), newer, nil)
	if x.Services[k].Name != "default/new:" {
		t.Fatalf("sole claimant: %v", x.Services[k])
	}
	x.Set(nn("old"), older, nil)
	if x.Services[k].Name != "default/old:" || len(x.Conflicts()) != 1 {
		t.Fatalf("older claimant must win: %v %v", x.Services[k], x.Conflicts())
	}
	keys, _ := x.Set(nn("old"), nil, nil) // deleted
	if len(keys) != 1 || x.Services[k].Name != "default/new:" || len(x.Conflicts()) != 0 {
		t.Fatalf("after the owner left: %v %v %v", keys, x.Services[k], x.Conflicts())
	}
	x.Set(nn("new"), nil, nil)
	if len(x.Services) != 0 || len(x.claims) != 0 {
		t.Errorf("left: %v %v", x.Services, x.claims)
	}
}

// Updating one service touches only its keys.
func TestIndexSetReturnsOnlyAffectedKeys(t *testing.T) {
	tcp := v1.ProtocolTCP
	x := NewIndex(Options{NodeName: "node1", NodePortRange: PortRange{30000, 32767}})
	for i, name := range []string{"a", "b", "c"} {
		x.Set(nn(name), service(name, v1.ServiceTypeNodePort, port("", tcp, int32(30100+i))), nil)
	}
	svc := service("b", v1.ServiceTypeNodePort, port("", tcp, 30200)) // nodePort changed
	sl := []*discoveryv1.EndpointSlice{slice("b-1", "b", []discoveryv1.EndpointPort{sport("", tcp, 80)}, ep{addr: "10.244.1.1"})}
	keys, _ := x.Set(nn("b"), svc, sl)
	if len(keys) != 2 || len(x.Services) != 3 || len(x.Services[ServiceKey{NodePort: 30200, Proto: lb.TCP}].Backends) != 1 {
		t.Errorf("keys %v services %v", keys, x.Services)
	}
}

// A health check is served only for a service sluice programs: one whose every port was
// refused (here, a protocol sluice does not serve) gets none, as it gets no frontend.
func TestIndexHealthCheckOnlyForProgrammedServices(t *testing.T) {
	x := NewIndex(Options{NodeName: "node1", NodePortRange: PortRange{30000, 32767}})
	local := func(name string, proto v1.Protocol) *v1.Service {
		s := service(name, v1.ServiceTypeLoadBalancer, port("", proto, 30400))
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = 32400
		return s
	}
	_, problems := x.Set(nn("quic"), local("quic", "QUIC"), nil)
	if len(problems) != 1 {
		t.Fatalf("problems %v", problems)
	}
	if hc, ok := x.HealthChecks[nn("quic")]; ok {
		t.Errorf("health check %+v served for a service with no programmed port", hc)
	}
	x.Set(nn("quic"), local("quic", v1.ProtocolTCP), nil) // fixed
	if _, ok := x.HealthChecks[nn("quic")]; !ok {
		t.Error("no health check once the service is programmed")
	}
}
