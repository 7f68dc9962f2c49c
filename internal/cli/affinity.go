package cli

import (
	"fmt"
	"text/tabwriter"
)

// AffinityJSON is one session-affinity entry in `affinity list -o json`.
type AffinityJSON struct {
	Service   string `json:"service"`
	Client    string `json:"client"`
	Backend   string `json:"backend"`
	ExpiresIn int64  `json:"expiresInSeconds"`
}

// affinityList lists session-affinity entries. The datapath has no sessionAffinity yet (every
// service balances at random), so the list is empty; the command and its JSON shape exist so
// that scripts written today keep working when it arrives.
func affinityList(e *Env, args []string) error {
	if _, err := e.mapsNoFlags("affinity list", args); err != nil {
		return err
	}
	return e.emit([]AffinityJSON{}, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "SERVICE\tCLIENT\tBACKEND\tEXPIRES IN")
		fmt.Fprintln(w, "(none: sessionAffinity is not in this datapath yet)")
	})
}
