// Package cli is sluicectl: read-only, bpftool-style inspection of a node's sluice datapath
// through its pinned maps and loaded programs. One file per subcommand.
package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/maps"
)

// Env is what every subcommand works with.
type Env struct {
	BPFFS  string
	JSON   bool
	Out    io.Writer
	objs   *datapath.SluiceMaps
	objs6  *datapath.Sluice6Maps // nil: the agent serves no IPv6
	kernel *maps.Kernel
}

// Maps opens the pinned maps read-only, once.
func (e *Env) Maps() (*maps.Kernel, error) {
	if e.kernel != nil {
		return e.kernel, nil
	}
	objs, err := datapath.OpenPinned(e.BPFFS, true)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrPermission) || os.Geteuid() != 0 && errors.Is(err, os.ErrPermission):
			return nil, fmt.Errorf("%w\nsluicectl reads the datapath's pinned maps, which only root can open", err)
		case errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("%w\nno sluice datapath is pinned in %s (is the agent running with --bpffs %s?)", err, e.BPFFS, e.BPFFS)
		}
		return nil, err
	}
	e.objs, e.kernel = objs, maps.NewKernel(objs)
	// Both families in every command: IPv6's maps when the agent serves IPv6.
	objs6, err := datapath.OpenPinned6(e.BPFFS, true)
	switch {
	case err == nil:
		e.objs6 = objs6
		e.kernel.WithIPv6(objs6)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	return e.kernel, nil
}

// Close releases the maps.
func (e *Env) Close() {
	if e.objs != nil {
		e.objs.Close()
	}
	if e.objs6 != nil {
		e.objs6.Close()
	}
}

type command struct {
	path  string // "service list"
	usage string
	run   func(e *Env, args []string) error
}

var commands = []command{
	{"service list", "services: frontends, backends, policy and counters", serviceList},
	{"backend list", "backends and the services using them", backendList},
	{"ct list", "connections [--service NAME|NODEPORT] [--client IP[:PORT]] [--backend IP[:PORT]] [--count]", ctList},
	{"nat list", "SNAT ports in use per node address and backend", natList},
	{"affinity list", "session affinity entries", affinityList},
	{"stats", "per-service counters, drops by reason, map fill", stats},
	{"prog show", "devices, attach modes, programs, pins, versions", progShow},
	{"trace", "run a packet through the loaded program: --proto tcp|udp --src IP:PORT --dst IP:PORT [--device IF] [--flags S|A|F|R|PA]", trace},
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: sluicectl [--bpffs DIR] [-o table|json] COMMAND [ARGS]")
	fmt.Fprintln(w, "  (--bpffs and -o may also come after the command)")
	fmt.Fprintln(w, "\ncommands:")
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	for _, c := range commands {
		fmt.Fprintf(tw, "  %s\t%s\n", c.path, c.usage)
	}
	tw.Flush()
}

// Run is sluicectl's main; it returns the exit code.
func Run(args []string, stdout, stderr io.Writer) int {
	fsRoot := flag.NewFlagSet("sluicectl", flag.ContinueOnError)
	fsRoot.SetOutput(stderr)
	bpffs := fsRoot.String("bpffs", "/sys/fs/bpf/sluice", "where the agent pinned the maps (its --bpffs)")
	output := fsRoot.String("o", "table", "output: table or json")
	fsRoot.Usage = func() { usage(stderr); fsRoot.PrintDefaults() }
	global, rest := splitGlobal(args)
	if err := fsRoot.Parse(append(global, rest...)); err != nil {
		return 2
	}
	if *output != "table" && *output != "json" {
		fmt.Fprintf(stderr, "sluicectl: -o %q: want table or json\n", *output)
		return 2
	}
	rest = fsRoot.Args()
	for _, c := range commands {
		words := strings.Fields(c.path)
		if len(rest) < len(words) || strings.Join(rest[:len(words)], " ") != c.path {
			continue
		}
		e := &Env{BPFFS: *bpffs, JSON: *output == "json", Out: stdout}
		defer e.Close()
		if err := c.run(e, rest[len(words):]); err != nil {
			fmt.Fprintln(stderr, "sluicectl:", err)
			return 1
		}
		return 0
	}
	usage(stderr)
	return 2
}

// globalFlags are Run's own flags, which may come anywhere on the line.
var globalFlags = map[string]bool{"bpffs": true, "o": true}

// splitGlobal moves the global flags (and their values) out of args, wherever they are, so
// that `sluicectl service list -o json` works as `sluicectl -o json service list` does. Other
// flags stay for the subcommand; "--" ends the scan.
func splitGlobal(args []string) (global, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return global, append(rest, args[i:]...)
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || !globalFlags[name] {
			rest = append(rest, a)
			continue
		}
		global = append(global, a)
		if !hasValue && i+1 < len(args) {
			i++
			global = append(global, args[i])
		}
	}
	return global, rest
}

// emit writes v as indented JSON, or calls table.
func (e *Env) emit(v any, table func(w *tabwriter.Writer)) error {
	if e.JSON {
		enc := json.NewEncoder(e.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(e.Out, 2, 8, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// names maps service IDs to names ("svc-ID" where the agent recorded none).
func names(k *maps.Kernel) (map[uint32]maps.ServiceInfo, func(uint32) string, error) {
	infos, err := k.ServiceInfos()
	if err != nil {
		return nil, nil, err
	}
	return infos, func(id uint32) string {
		if i, ok := infos[id]; ok && i.Name != "" {
			return i.Name
		}
		return fmt.Sprintf("svc-%d", id)
	}, nil
}

func sortedKeys[K comparable, V any](m map[K]V, less func(a, b K) bool) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return less(out[i], out[j]) })
	return out
}

// mapsNoFlags starts a subcommand that takes no flags: it refuses arguments and opens the maps.
func (e *Env) mapsNoFlags(name string, args []string) (*maps.Kernel, error) {
	if err := subFlags(name, args, func(*flag.FlagSet) {}); err != nil {
		return nil, err
	}
	return e.Maps()
}

// subFlags parses a subcommand's flags.
func subFlags(name string, args []string, def func(fs *flag.FlagSet)) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	def(fs)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("parse %s flags: %w", name, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("parse %s flags: unexpected %q", name, fs.Args())
	}
	return nil
}
