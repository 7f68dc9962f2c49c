package cli

import (
	"flag"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/internal/lb"
	"github.com/sluicelb/sluice/internal/maps"
)

// FlowJSON is one connection in `ct list -o json`: a flow's forward entry, joined with what
// its reverse entry says.
type FlowJSON struct {
	Protocol    string `json:"protocol"`
	Client      string `json:"client"`
	Frontend    string `json:"frontend"`
	Backend     string `json:"backend"`
	SNAT        string `json:"snat,omitempty"` // node address:port the backend sees; empty for local backends
	Service     string `json:"service"`
	ServiceID   uint32 `json:"serviceId"`
	BackendID   uint32 `json:"backendId"`
	State       string `json:"state"` // syn, established, fin, closing, or udp
	IdleSeconds int64  `json:"idleSeconds"`
}

func monotonicNow() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

func flowState(e maps.CTEntry) string {
	switch {
	case e.Proto != lb.TCP:
		return "udp"
	case e.Flags&maps.CTClosing != 0:
		return "closing"
	case e.Flags&maps.CTSYN != 0:
		return "syn"
	case e.Flags&maps.CTFIN != 0:
		return "fin"
	}
	return "established"
}

// matchAddr matches "IP" or "IP:PORT".
func matchAddr(filter string, a netip.AddrPort) (bool, error) {
	if filter == "" {
		return true, nil
	}
	if ap, err := netip.ParseAddrPort(filter); err == nil {
		return ap == a, nil
	}
	ip, err := netip.ParseAddr(filter)
	if err != nil {
		return false, fmt.Errorf("parse address filter %q: want IP or IP:PORT", filter)
	}
	return ip == a.Addr(), nil
}

// loadFlows lists the live flows (forward entries) of the connection table.
func loadFlows(k *maps.Kernel) ([]FlowJSON, error) {
	_, name, err := names(k)
	if err != nil {
		return nil, err
	}
	now := monotonicNow()
	var flows []FlowJSON
	err = k.Conntrack(func(c maps.CTEntry) bool {
		if c.Flags&maps.CTReply != 0 {
			return true
		}
		f := FlowJSON{Protocol: c.Proto.String(), Client: c.Src.String(), Frontend: c.Dst.String(), Backend: c.NatDst.String(),
			Service: name(c.ServiceID), ServiceID: c.ServiceID, BackendID: c.BackendID, State: flowState(c),
			IdleSeconds: int64((now - c.LastSeen) / time.Second)}
		if c.NatSrc != c.Src {
			f.SNAT = c.NatSrc.String()
		}
		if c.Flags&maps.CTKernel != 0 {
			// Tracked for its port only (bpf/lib/hostnat.h); SNAT is set if it was moved.
			f.Service, f.Frontend, f.Backend = "(kernel NAT)", c.Dst.String(), c.Dst.String()
			if c.NatSrc != c.Src {
				f.SNAT = c.NatSrc.String()
			}
		}
		flows = append(flows, f)
		return true
	})
	sort.Slice(flows, func(i, j int) bool {
		if flows[i].Frontend != flows[j].Frontend {
			return flows[i].Frontend < flows[j].Frontend
		}
		return flows[i].Client < flows[j].Client
	})
	return flows, err
}

func ctList(e *Env, args []string) error {
	var service, client, backend string
	var countOnly bool
	if err := subFlags("ct list", args, func(fs *flag.FlagSet) {
		fs.StringVar(&service, "service", "", "service name (namespace/name or namespace/name:port) or NodePort")
		fs.StringVar(&client, "client", "", "client IP or IP:PORT")
		fs.StringVar(&backend, "backend", "", "backend IP or IP:PORT")
		fs.BoolVar(&countOnly, "count", false, "print only how many connections match")
	}); err != nil {
		return err
	}
	k, err := e.Maps()
	if err != nil {
		return err
	}
	all, err := loadFlows(k)
	if err != nil {
		return err
	}
	flows := []FlowJSON{}
	for _, f := range all {
		if service != "" && !matchService(service, f) {
			continue
		}
		ok1, err := matchAddr(client, netip.MustParseAddrPort(f.Client))
		if err != nil {
			return err
		}
		ok2, err := matchAddr(backend, netip.MustParseAddrPort(f.Backend))
		if err != nil {
			return err
		}
		if ok1 && ok2 {
			flows = append(flows, f)
		}
	}
	if countOnly {
		if e.JSON {
			return e.emit(map[string]int{"count": len(flows)}, nil)
		}
		_, err := fmt.Fprintln(e.Out, len(flows))
		return err
	}
	return e.emit(flows, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "PROTO\tCLIENT\tFRONTEND\tBACKEND\tSNAT\tSERVICE\tSTATE\tIDLE")
		for _, f := range flows {
			snat := f.SNAT
			if snat == "" {
				snat = "-"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%ds\n", f.Protocol, f.Client, f.Frontend, f.Backend, snat, f.Service, f.State, f.IdleSeconds)
		}
	})
}

func matchService(filter string, f FlowJSON) bool {
	if p, err := strconv.Atoi(filter); err == nil {
		fe := netip.MustParseAddrPort(f.Frontend)
		return int(fe.Port()) == p
	}
	return f.Service == filter || strings.HasPrefix(f.Service, filter+":")
}
