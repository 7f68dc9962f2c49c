package cli

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
)

// ServiceJSON is one service port in `service list -o json`.
type ServiceJSON struct {
	ID       uint32 `json:"id"`
	Name     string `json:"name"`
	NodePort uint16 `json:"nodePort"`
	Protocol string `json:"protocol"`
	// Scope: external (NodePorts, external and load-balancer IPs), internal (ClusterIPs), or
	// node (what clients on the node get of a Local NodePort, through the socket hooks).
	Scope string `json:"scope"`
	// Family: IPv4 or IPv6 (a dual-stack service port is one entry per family, each its own ID).
	Family       string        `json:"family"`
	Frontends    []string      `json:"frontends"`
	Backends     []BackendJSON `json:"backends"`
	Policy       PolicyJSON    `json:"policy"`
	Packets      uint64        `json:"packets"`
	Bytes        uint64        `json:"bytes"`
	ReplyPackets uint64        `json:"replyPackets"`
	ReplyBytes   uint64        `json:"replyBytes"`
	Rejected     uint64        `json:"rejected"`
}

// PolicyJSON is a service's load-balancing policy.
type PolicyJSON struct {
	// TrafficPolicy is the scope's: externalTrafficPolicy, or for the internal scope
	// internalTrafficPolicy (kept under one JSON name: tools read one field).
	TrafficPolicy          string `json:"externalTrafficPolicy"`
	Algorithm              string `json:"algorithm"`
	SessionAffinity        string `json:"sessionAffinity"`
	AffinityTimeoutSeconds int    `json:"affinityTimeoutSeconds"`
}

// BackendJSON is a backend as a service uses it.
type BackendJSON struct {
	ID          uint32 `json:"id"`
	Address     string `json:"address"`
	Local       bool   `json:"local"`
	Terminating bool   `json:"terminating"`
}

// loadServices gathers every service port the frontends name.
func loadServices(k *maps.Kernel) ([]ServiceJSON, error) {
	fes, err := k.Frontends()
	if err != nil {
		return nil, err
	}
	slots, err := k.Slots()
	if err != nil {
		return nil, err
	}
	bes, err := k.Backends()
	if err != nil {
		return nil, err
	}
	infos, name, err := names(k)
	if err != nil {
		return nil, err
	}
	byID := map[uint32]*ServiceJSON{}
	for fk, fe := range fes {
		s := byID[fe.ServiceID]
		if s == nil {
			s = &ServiceJSON{ID: fe.ServiceID, Name: name(fe.ServiceID), NodePort: fk.Port, Protocol: fk.Proto.String(),
				Family: lb.FamilyOf(fk.Addr).String(), Policy: PolicyJSON{TrafficPolicy: "Cluster", Algorithm: "random", SessionAffinity: "None"}}
			if fe.Flags&lb.FrontendMaglev != 0 {
				s.Policy.Algorithm = "maglev"
			}
			if fe.Flags&lb.FrontendAffinity != 0 {
				s.Policy.SessionAffinity, s.Policy.AffinityTimeoutSeconds = "ClientIP", int(fe.AffinityTimeout)
			}
			s.Scope = scopeNames[0]
			if fk.Socket {
				s.Scope = scopeNames[2]
			}
			if i, ok := infos[fe.ServiceID]; ok {
				if int(i.Scope) < len(scopeNames) {
					s.Scope = scopeNames[i.Scope]
				}
				if i.NodePort != 0 || i.Scope == 1 {
					s.NodePort = i.NodePort // the internal scope's port is no NodePort
				}
				if i.ExternalLocal {
					s.Policy.TrafficPolicy = "Local"
				}
			}
			for slot := uint32(1); slot <= uint32(fe.Count); slot++ {
				id, ok := slots[maps.SlotKey{ServiceID: fe.ServiceID, Slot: slot}]
				if !ok {
					continue
				}
				b := bes[id]
				s.Backends = append(s.Backends, BackendJSON{ID: id, Address: netip.AddrPortFrom(b.Addr, b.Port).String(), Local: b.Local, Terminating: b.Terminating})
			}
			st, err := k.ServiceStats(fe.ServiceID)
			if err == nil {
				s.Packets, s.Bytes, s.ReplyPackets, s.ReplyBytes, s.Rejected = st.Packets, st.Bytes, st.ReplyPackets, st.ReplyBytes, st.Rejected
			}
			byID[fe.ServiceID] = s
		}
		s.Frontends = append(s.Frontends, netip.AddrPortFrom(fk.Addr, fk.Port).String())
	}
	out := make([]ServiceJSON, 0, len(byID))
	for _, s := range byID {
		sort.Strings(s.Frontends)
		if s.Backends == nil {
			s.Backends = []BackendJSON{}
		}
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].NodePort != out[j].NodePort {
			return out[i].NodePort < out[j].NodePort
		}
		if out[i].Protocol != out[j].Protocol {
			return out[i].Protocol < out[j].Protocol
		}
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		if out[i].Scope != out[j].Scope {
			return out[i].Scope < out[j].Scope
		}
		return out[i].Family < out[j].Family
	})
	return out, nil
}

func serviceList(e *Env, args []string) error {
	k, err := e.mapsNoFlags("service list", args)
	if err != nil {
		return err
	}
	svcs, err := loadServices(k)
	if err != nil {
		return err
	}
	return e.emit(svcs, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "ID\tSERVICE\tNODEPORT\tSCOPE\tFAMILY\tFRONTENDS\tBACKENDS\tPOLICY\tPACKETS\tBYTES\tREJECTED")
		for _, s := range svcs {
			var bs []string
			for _, b := range s.Backends {
				bs = append(bs, backendLabel(b))
			}
			backends := strings.Join(bs, ",")
			if backends == "" {
				backends = "none (rejects)"
			}
			fmt.Fprintf(w, "%d\t%s\t%d/%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", s.ID, s.Name, s.NodePort, s.Protocol, s.Scope, s.Family,
				strings.Join(s.Frontends, ","), backends, policyLabel(s.Policy, s.Scope), s.Packets, s.Bytes, s.Rejected)
		}
	})
}

func backendLabel(b BackendJSON) string {
	s := b.Address
	var tags []string
	if b.Local {
		tags = append(tags, "local")
	}
	if b.Terminating {
		tags = append(tags, "terminating")
	}
	if len(tags) > 0 {
		s += "(" + strings.Join(tags, ",") + ")"
	}
	return s
}

// scopeNames are desired.Scope's names, by value (maps.ServiceInfo.Scope).
var scopeNames = []string{"external", "internal", "node"}

func policyLabel(p PolicyJSON, scope string) string {
	name := "etp="
	if scope == scopeNames[1] {
		name = "itp="
	}
	s := name + p.TrafficPolicy + " lb=" + p.Algorithm
	if p.SessionAffinity != "None" {
		s += fmt.Sprintf(" affinity=%s/%ds", p.SessionAffinity, p.AffinityTimeoutSeconds)
	}
	return s
}
