package cli

import (
	"fmt"
	"net/netip"
	"sort"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
)

// AffinityJSON is one session-affinity entry in `affinity list -o json`.
type AffinityJSON struct {
	Service   string `json:"service"`
	Client    string `json:"client"`
	Backend   string `json:"backend"`
	ExpiresIn int64  `json:"expiresInSeconds"`
}

// affinityList lists the clients that sessionAffinity ClientIP sends to a remembered backend:
// entries still within their service's timeout, counted from the client's last new flow.
func affinityList(e *Env, args []string) error {
	k, err := e.mapsNoFlags("affinity list", args)
	if err != nil {
		return err
	}
	entries, err := k.Affinities()
	if err != nil {
		return err
	}
	fes, err := k.Frontends()
	if err != nil {
		return err
	}
	timeout := map[uint32]time.Duration{}
	for _, fe := range fes {
		timeout[fe.ServiceID] = time.Duration(fe.AffinityTimeout) * time.Second
	}
	bes, err := k.Backends()
	if err != nil {
		return err
	}
	_, name, err := names(k)
	if err != nil {
		return err
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return fmt.Errorf("read the clock: %w", err)
	}
	now := time.Duration(ts.Nano())
	out := []AffinityJSON{}
	for _, a := range entries {
		left := a.LastSeen + timeout[a.ServiceID] - now
		if timeout[a.ServiceID] == 0 || left <= 0 {
			continue // expired, or its service has no affinity any more: not used again
		}
		backend := fmt.Sprintf("id %d (gone)", a.BackendID)
		if b, ok := bes[a.BackendID]; ok {
			backend = netip.AddrPortFrom(b.Addr, b.Port).String()
		}
		out = append(out, AffinityJSON{Service: name(a.ServiceID), Client: a.Client.String(), Backend: backend,
			ExpiresIn: int64((left + time.Second - 1) / time.Second)})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Client < out[j].Client
	})
	return e.emit(out, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "SERVICE\tCLIENT\tBACKEND\tEXPIRES IN")
		for _, a := range out {
			fmt.Fprintf(w, "%s\t%s\t%s\t%ds\n", a.Service, a.Client, a.Backend, a.ExpiresIn)
		}
	})
}
