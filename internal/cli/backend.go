package cli

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"
)

// BackendListJSON is one backend in `backend list -o json`.
type BackendListJSON struct {
	ID          uint32   `json:"id"`
	Address     string   `json:"address"`
	Local       bool     `json:"local"`
	Terminating bool     `json:"terminating"`
	Services    []string `json:"services"`
}

func backendList(e *Env, args []string) error {
	k, err := e.mapsNoFlags("backend list", args)
	if err != nil {
		return err
	}
	bes, err := k.Backends()
	if err != nil {
		return err
	}
	svcs, err := loadServices(k)
	if err != nil {
		return err
	}
	users := map[uint32][]string{}
	for _, s := range svcs {
		for _, b := range s.Backends {
			users[b.ID] = append(users[b.ID], s.Name)
		}
	}
	var out []BackendListJSON
	for id, b := range bes {
		u := users[id]
		if u == nil {
			u = []string{}
		}
		sort.Strings(u)
		out = append(out, BackendListJSON{ID: id, Address: netip.AddrPortFrom(b.Addr, b.Port).String(), Local: b.Local, Terminating: b.Terminating, Services: u})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	if out == nil {
		out = []BackendListJSON{}
	}
	return e.emit(out, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "ID\tADDRESS\tLOCAL\tTERMINATING\tSERVICES")
		for _, b := range out {
			fmt.Fprintf(w, "%d\t%s\t%v\t%v\t%s\n", b.ID, b.Address, b.Local, b.Terminating, strings.Join(b.Services, ","))
		}
	})
}
