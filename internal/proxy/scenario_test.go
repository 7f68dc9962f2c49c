package proxy

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/tools/txtar"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/sluicelb/sluice/internal/desired"
	"github.com/sluicelb/sluice/internal/maps"
	"github.com/sluicelb/sluice/internal/reconciler"
)

var update = flag.Bool("update", false, "rewrite the expected dumps and writes of testdata/scenarios")

// Control-plane scenarios as data: each testdata/scenarios/*.txtar is a sequence of steps
// run through the Tracker, Syncer and Reconciler over maps.Fake, the whole path from objects
// to map entries. Steps are the archive's files, in order:
//
//	config      node: NAME / zone: ZONE / addresses: A B ... / algorithm: maglev / ipv6: true
//	apply       Services, EndpointSlices and Nodes (YAML, "---" between): added or updated
//	delete      lines "Kind namespace/name" (Node: "Node name")
//	fail        lines of write operations ("update slot", "delete backend", ...) that fail
//	            from now on; an empty body ends the faults
//	restart     a new agent: a new Reconciler restored from the maps, a new Syncer
//	resync      the next sync is a full one (as every --sync-period)
//	dump        sync, then the maps (maps.Fake.Dump, IDs resolved) must equal the body
//	writes      the writes of the last sync, in order, must equal the body
//	log         each line is in a warning or error the last sync logged
//
// After every write of every step, nothing the datapath can read may name an entry that does
// not exist (maps.Fake.CheckOrder). go test -run TestScenarios -update rewrites dump and
// writes bodies with what the code does now.
func TestScenarios(t *testing.T) {
	files, err := filepath.Glob("testdata/scenarios/*.txtar")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txtar"), func(t *testing.T) {
			runScenario(t, file)
		})
	}
}

var errInjected = errors.New("injected fault")

type scenario struct {
	t       *testing.T
	f       *maps.Fake
	tr      *Tracker
	s       *Syncer
	opts    desired.Options
	addrs   []netip.Addr
	zone    bool
	objects map[string]any // "Kind ns/name" -> the object last applied
	fail    []string
	logs    *observer.ObservedLogs
	log     *zap.Logger
	syncAt  int // Writes before the last sync
	synced  int // Writes after the last sync
	lastErr error
}

func runScenario(t *testing.T, file string) {
	ar, err := txtar.ParseFile(file)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.WarnLevel)
	sc := &scenario{t: t, f: maps.NewFake(), tr: NewTracker(), objects: map[string]any{}, logs: logs, log: zap.New(core),
		opts:  desired.Options{NodeName: "node1", NodePortRange: desired.PortRange{Min: 30000, Max: 32767}},
		addrs: []netip.Addr{netip.MustParseAddr("10.89.0.11")}}
	sc.f.CheckOrder = true
	sc.f.Fault = func(op string) error {
		for _, p := range sc.fail {
			if strings.HasPrefix(op, p) {
				return errInjected
			}
		}
		return nil
	}
	sc.tr.OnSynced()
	changed := false
	for i := range ar.Files {
		file := &ar.Files[i]
		step := strings.TrimSpace(strings.SplitN(file.Name, ":", 2)[0])
		body := string(file.Data)
		switch step {
		case "config":
			sc.config(body)
		case "apply":
			sc.apply(body)
		case "delete":
			sc.delete(body)
		case "fail":
			sc.fail = lines(body)
		case "restart":
			sc.s = nil
		case "resync":
			if sc.s != nil {
				sc.s.lastFull = time.Time{}
			}
		case "dump":
			sc.sync()
			if got := sc.f.Dump(); got != body {
				if *update {
					file.Data, changed = []byte(got), true
				} else {
					t.Errorf("%s, step %d (%s): maps:\n%s\nwant:\n%s", file.Name, i, step, got, body)
				}
			}
		case "writes":
			got := canonicalWrites(sc.f.WritesSoFar()[sc.syncAt:sc.synced])
			if got != canonicalWrites(lines(body)) {
				if *update {
					file.Data, changed = []byte(got), true
				} else {
					t.Errorf("step %d (%s): writes of the last sync:\n%s\nwant:\n%s", i, step, got, body)
				}
			}
		case "log":
			var all []string
			for _, e := range sc.logs.All() {
				s := e.Message
				for k, v := range e.ContextMap() {
					s += fmt.Sprintf(" %s=%v", k, v)
				}
				all = append(all, s)
			}
			for _, want := range lines(body) {
				if !slices.ContainsFunc(all, func(s string) bool { return strings.Contains(s, want) }) {
					t.Errorf("step %d (%s): no log line has %q; logged:\n%s", i, step, want, strings.Join(all, "\n"))
				}
			}
		default:
			t.Fatalf("step %d: unknown step %q", i, file.Name)
		}
		if v := sc.f.Violations; len(v) > 0 {
			t.Fatalf("step %d (%s): the datapath could read a missing entry:\n%s", i, file.Name, strings.Join(v[:min(5, len(v))], "\n"))
		}
	}
	if changed {
		if err := os.WriteFile(file, txtar.Format(ar), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// canonicalWrites sorts each run of writes of one kind ("frontend", "delete slot", ...):
// their order within the run comes from map iteration and is no contract, while the order of
// the runs (backends, then slots, then frontends) is.
func canonicalWrites(ws []string) string {
	kind := func(w string) string {
		var k []string
		for _, f := range strings.Fields(w) {
			if strings.ContainsAny(f, "0123456789") {
				break
			}
			k = append(k, f)
		}
		return strings.Join(k, " ")
	}
	var out []string
	for i := 0; i < len(ws); {
		j := i + 1
		for j < len(ws) && kind(ws[j]) == kind(ws[i]) {
			j++
		}
		run := slices.Clone(ws[i:j])
		slices.Sort(run)
		out = append(out, run...)
		i = j
	}
	if len(out) == 0 {
		return ""
	}
	return strings.Join(out, "\n") + "\n"
}

func lines(body string) []string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

func (sc *scenario) config(body string) {
	for _, l := range lines(body) {
		k, v, _ := strings.Cut(l, ":")
		v = strings.TrimSpace(v)
		switch k {
		case "node":
			sc.opts.NodeName = v
		case "zone":
			sc.zone = v == "from-node"
		case "algorithm":
			sc.opts.Maglev = v == "maglev"
		case "ipv6":
			sc.opts.IPv6 = v == "true"
		case "addresses":
			sc.addrs = nil
			for _, a := range strings.Fields(v) {
				sc.addrs = append(sc.addrs, netip.MustParseAddr(a))
			}
		default:
			sc.t.Fatalf("config: unknown key %q", k)
		}
	}
}

func (sc *scenario) apply(body string) {
	for _, doc := range strings.Split(body, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			sc.t.Fatalf("apply: %v", err)
		}
		switch tm.Kind {
		case "Service":
			o := &v1.Service{}
			sc.decode(doc, o)
			remember(sc, "Service "+o.Namespace+"/"+o.Name, o, sc.tr.OnServiceUpdate)
		case "EndpointSlice":
			o := &discoveryv1.EndpointSlice{}
			sc.decode(doc, o)
			remember(sc, "EndpointSlice "+o.Namespace+"/"+o.Name, o, sc.tr.OnEndpointSliceUpdate)
		case "Node":
			o := &v1.Node{}
			sc.decode(doc, o)
			remember(sc, "Node "+o.Name, o, sc.tr.OnNodeUpdate)
		default:
			sc.t.Fatalf("apply: unknown kind %q", tm.Kind)
		}
	}
}

// remember hands o to the tracker as an update of what was applied under key before (nil: an
// add) and keeps it for the next update or delete.
func remember[T any](sc *scenario, key string, o *T, update func(old, o *T)) {
	old, _ := sc.objects[key].(*T)
	update(old, o)
	sc.objects[key] = o
}

func (sc *scenario) decode(doc string, into any) {
	if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
		sc.t.Fatalf("apply: %v\n%s", err, doc)
	}
}

func (sc *scenario) delete(body string) {
	for _, l := range lines(body) {
		o, ok := sc.objects[l]
		if !ok {
			sc.t.Fatalf("delete: no %q applied", l)
		}
		switch o := o.(type) {
		case *v1.Service:
			sc.tr.OnServiceDelete(o)
		case *discoveryv1.EndpointSlice:
			sc.tr.OnEndpointSliceDelete(o)
		case *v1.Node:
			sc.tr.OnNodeDelete(o)
		}
		delete(sc.objects, l)
	}
}

// sync runs one sync, starting a new agent (restored from the maps) first if there is none.
func (sc *scenario) sync() {
	if sc.s == nil {
		r := reconciler.New(sc.f, 64, 256, sc.log.Named("reconciler"))
		r.MaglevSize = 251
		if _, err := r.Restore(); err != nil {
			sc.t.Fatalf("restore: %v", err)
		}
		sc.s = &Syncer{Tracker: sc.tr, Reconciler: r, Options: sc.opts, FullEvery: time.Hour, Log: sc.log.Named("syncer"),
			Addresses: func() ([]netip.Addr, error) { return slices.Clone(sc.addrs), nil }}
		if sc.zone {
			sc.s.NodeZone = func() string { return sc.tr.NodeZone(sc.opts.NodeName) }
		}
	}
	sc.logs.TakeAll()
	sc.syncAt = len(sc.f.WritesSoFar())
	sc.lastErr = sc.s.Sync()
	sc.synced = len(sc.f.WritesSoFar())
	if sc.lastErr != nil {
		sc.log.Error("Sync failed", zap.Error(sc.lastErr))
	}
}
