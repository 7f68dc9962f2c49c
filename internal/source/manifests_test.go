package source

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// recorder is a Handler that remembers every call as a string, with its objects.
type recorder struct {
	mu     sync.Mutex
	events []string
	objs   [][2]any // old, new (nil when absent)
	seen   int      // events already checked by next
}

func (r *recorder) add(ev string, old, cur any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
	r.objs = append(r.objs, [2]any{old, cur})
}

func nsName(namespace, name string) string {
	if namespace == "" {
		return name
	}
	return namespace + "/" + name
}

func (r *recorder) OnServiceAdd(s *v1.Service) { r.add("add svc "+nsName(s.Namespace, s.Name), nil, s) }
func (r *recorder) OnServiceUpdate(o, s *v1.Service) {
	r.add("update svc "+nsName(s.Namespace, s.Name), o, s)
}
func (r *recorder) OnServiceDelete(s *v1.Service) {
	r.add("delete svc "+nsName(s.Namespace, s.Name), s, nil)
}
func (r *recorder) OnEndpointSliceAdd(s *discoveryv1.EndpointSlice) {
	r.add("add slice "+nsName(s.Namespace, s.Name), nil, s)
}
func (r *recorder) OnEndpointSliceUpdate(o, s *discoveryv1.EndpointSlice) {
	r.add("update slice "+nsName(s.Namespace, s.Name), o, s)
}
func (r *recorder) OnEndpointSliceDelete(s *discoveryv1.EndpointSlice) {
	r.add("delete slice "+nsName(s.Namespace, s.Name), s, nil)
}
func (r *recorder) OnNodeAdd(n *v1.Node) { r.add("add node "+nsName(n.Namespace, n.Name), nil, n) }
func (r *recorder) OnNodeUpdate(o, n *v1.Node) {
	r.add("update node "+nsName(n.Namespace, n.Name), o, n)
}
func (r *recorder) OnNodeDelete(n *v1.Node) {
	r.add("delete node "+nsName(n.Namespace, n.Name), n, nil)
}
func (r *recorder) OnSynced() { r.add("synced", nil, nil) }

// next waits until len(want) more events arrived, checks they are want, and returns their
// objects.
func (r *recorder) next(t *testing.T, want ...string) [][2]any {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		r.mu.Lock()
		got, objs := slices.Clone(r.events[r.seen:]), slices.Clone(r.objs[r.seen:])
		r.mu.Unlock()
		if len(got) >= len(want) || time.Now().After(deadline) {
			if !slices.Equal(got, want) {
				t.Fatalf("events:\n got %q\nwant %q", got, want)
			}
			r.seen += len(got)
			return objs
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// quiet checks that no event arrives for a few polls.
func (r *recorder) quiet(t *testing.T) {
	t.Helper()
	time.Sleep(150 * time.Millisecond)
	r.next(t)
}

type harness struct {
	*recorder
	dir  string
	logs *observer.ObservedLogs
}

func start(t *testing.T, files map[string]string) *harness {
	t.Helper()
	h := &harness{recorder: &recorder{}, dir: t.TempDir()}
	for name, content := range files {
		h.write(t, name, content)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	h.logs = logs
	m := NewManifests(h.dir, zap.New(core))
	m.PollInterval = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, h.recorder) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return h
}

// write replaces a file atomically, as editors and kubectl do, so the source never sees it
// half-written.
func (h *harness) write(t *testing.T, name, content string) {
	t.Helper()
	tmp := filepath.Join(h.dir, ".tmp-"+name)
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(h.dir, name)); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) remove(t *testing.T, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(h.dir, name)); err != nil {
		t.Fatal(err)
	}
}

// waitLog waits for a log entry at level whose message contains msg and whose file field
// contains file.
func (h *harness) waitLog(t *testing.T, level zapcore.Level, msg, file string) observer.LoggedEntry {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range h.logs.FilterLevelExact(level).FilterMessageSnippet(msg).All() {
			if f, _ := e.ContextMap()["file"].(string); strings.Contains(f, file) {
				return e
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no %v log %q for file %q; logs: %v", level, msg, file, h.logs.All())
	return observer.LoggedEntry{}
}

func svcYAML(name string, nodePort int) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %s
spec:
  type: NodePort
  selector: {app: %[1]s}
  ports:
  - name: http
    port: 80
    targetPort: 8080
    protocol: TCP
    nodePort: %d
`, name, nodePort)
}

const sliceYAML = `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses: [10.0.0.5]
  conditions: {ready: true}
`

const nodeYAML = `apiVersion: v1
kind: Node
metadata:
  name: n1
  namespace: ignored
status:
  addresses:
  - {type: InternalIP, address: 192.168.1.10}
`

func servicePair(t *testing.T, objs [2]any) (old, cur *v1.Service) {
	t.Helper()
	old, _ = objs[0].(*v1.Service)
	cur, _ = objs[1].(*v1.Service)
	return old, cur
}

func TestManifestsInitialAndEdits(t *testing.T) {
	h := start(t, map[string]string{
		"lab.yaml": "# comment only\n---\n" + svcYAML("web", 30080) + "---\n" + sliceYAML + "---\n---\n" + nodeYAML +
			"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n",
		"notes.txt":   svcYAML("txt", 30001),
		".hidden.yml": svcYAML("hidden", 30002),
	})
	objs := h.next(t, "add node n1", "add svc default/web", "add slice default/web-abc", "synced")
	if n := objs[0][1].(*v1.Node); n.Namespace != "" || n.Status.Addresses[0].Address != "192.168.1.10" {
		t.Errorf("node = %+v", n)
	}
	if s := objs[2][1].(*discoveryv1.EndpointSlice); len(s.Endpoints) != 1 || s.Endpoints[0].Addresses[0] != "10.0.0.5" {
		t.Errorf("slice = %+v", s)
	}

	// Edit one field: one update, with both versions.
	content := svcYAML("web", 30081) + "---\n" + sliceYAML + "---\n" + nodeYAML
	h.write(t, "lab.yaml", content)
	old, cur := servicePair(t, h.next(t, "update svc default/web")[0])
	if old.Spec.Ports[0].NodePort != 30080 || cur.Spec.Ports[0].NodePort != 30081 {
		t.Errorf("update nodePort %d -> %d, want 30080 -> 30081", old.Spec.Ports[0].NodePort, cur.Spec.Ports[0].NodePort)
	}

	// Same content again (new inode and mtime): nothing.
	h.write(t, "lab.yaml", content)
	h.quiet(t)

	// Removing the file removes its objects.
	h.remove(t, "lab.yaml")
	h.next(t, "delete node n1", "delete svc default/web", "delete slice default/web-abc")
}

func TestManifestsEmptyDir(t *testing.T) {
	h := start(t, nil)
	h.next(t, "synced")
	h.write(t, "a.yml", svcYAML("a", 0))
	h.next(t, "add svc default/a")
}

func TestManifestsBrokenFileKeepsObjects(t *testing.T) {
	h := start(t, map[string]string{"web.yaml": svcYAML("web", 30080)})
	h.next(t, "add svc default/web", "synced")

	h.write(t, "web.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: web\nspec: [\n")
	e := h.waitLog(t, zapcore.ErrorLevel, "parse manifest", "web.yaml")
	if _, ok := e.ContextMap()["error"]; !ok {
		t.Errorf("log has no error field: %v", e.ContextMap())
	}
	h.quiet(t)
	if n := h.logs.FilterMessageSnippet("parse manifest").Len(); n != 1 {
		t.Errorf("%d parse errors logged, want 1 (once per change)", n)
	}

	h.write(t, "web.yaml", svcYAML("web", 30090))
	_, cur := servicePair(t, h.next(t, "update svc default/web")[0])
	if cur.Spec.Ports[0].NodePort != 30090 {
		t.Errorf("nodePort = %d, want 30090", cur.Spec.Ports[0].NodePort)
	}
}

func TestManifestsBadDocumentsSkipped(t *testing.T) {
	h := start(t, map[string]string{"mixed.yaml": strings.Join([]string{
		strings.Replace(svcYAML("foo", 30001), "protocol: TCP", "protocol: FOO", 1),
		"apiVersion: v1\nkind: Service\nspec: {}\n",
		svcYAML("far", 70000),
		"apiVersion: v1\nkind: Service\nmetadata: {name: typed}\nspec: {ports: [{port: eighty}]}\n",
		svcYAML("good", 30003),
		nodeYAML,
	}, "---\n")})
	h.next(t, "add node n1", "add svc default/good", "synced")

	for _, want := range []struct {
		doc  int64
		name string
	}{{0, "foo"}, {1, ""}, {2, "far"}, {3, "typed"}} {
		found := false
		for _, e := range h.logs.FilterLevelExact(zapcore.ErrorLevel).All() {
			m := e.ContextMap()
			if m["doc"] == want.doc && m["name"] == want.name && m["kind"] == "Service" && strings.HasSuffix(m["file"].(string), "mixed.yaml") {
				found = true
			}
		}
		if !found {
			t.Errorf("no error log for document %d (%q); logs: %v", want.doc, want.name, h.logs.All())
		}
	}
}

func TestManifestsSameObjectInTwoFiles(t *testing.T) {
	h := start(t, map[string]string{"a.yaml": svcYAML("web", 30001), "b.yaml": svcYAML("web", 30002)})
	_, cur := servicePair(t, h.next(t, "add svc default/web", "synced")[0])
	if cur.Spec.Ports[0].NodePort != 30002 {
		t.Errorf("nodePort = %d, want 30002 from b.yaml", cur.Spec.Ports[0].NodePort)
	}
	e := h.waitLog(t, zapcore.WarnLevel, "two files", "b.yaml")
	if o, _ := e.ContextMap()["overrides"].(string); !strings.HasSuffix(o, "a.yaml") {
		t.Errorf("warning does not name a.yaml: %v", e.ContextMap())
	}

	// The object stays while a file still defines it.
	h.remove(t, "b.yaml")
	old, cur := servicePair(t, h.next(t, "update svc default/web")[0])
	if old.Spec.Ports[0].NodePort != 30002 || cur.Spec.Ports[0].NodePort != 30001 {
		t.Errorf("update nodePort %d -> %d, want 30002 -> 30001", old.Spec.Ports[0].NodePort, cur.Spec.Ports[0].NodePort)
	}
	h.remove(t, "a.yaml")
	h.next(t, "delete svc default/web")
}

func TestManifestsList(t *testing.T) {
	h := start(t, map[string]string{
		"list.yaml": "apiVersion: v1\nkind: List\nitems:\n" +
			"- {apiVersion: v1, kind: Service, metadata: {name: web, namespace: shop}, spec: {ports: [{port: 80, nodePort: 30080}]}}\n" +
			"- {apiVersion: v1, kind: Node, metadata: {name: n2}}\n",
		"list.json": `{"apiVersion": "v1", "kind": "List", "items": [
	{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "web-1", "namespace": "shop"}, "addressType": "IPv4"}
]}`,
	})
	h.next(t, "add node n2", "add svc shop/web", "add slice shop/web-1", "synced")
}

func TestManifestsDirRemovedKeepsState(t *testing.T) {
	h := start(t, map[string]string{"web.yaml": svcYAML("web", 30080)})
	h.next(t, "add svc default/web", "synced")
	if err := os.RemoveAll(h.dir); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for h.logs.FilterMessageSnippet("read manifests dir").Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no log about the missing dir")
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.quiet(t)
}

// A ConfigMap volume links each key to ..data/key and updates by swapping the ..data link.
func TestManifestsConfigMapSwap(t *testing.T) {
	h := start(t, nil)
	h.next(t, "synced")
	swap := func(version, content string) {
		t.Helper()
		dir := filepath.Join(h.dir, version)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "web.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(version, filepath.Join(h.dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(h.dir, "..data_tmp"), filepath.Join(h.dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	swap("..v1", svcYAML("web", 30001))
	if err := os.Symlink("..data/web.yaml", filepath.Join(h.dir, "web.yaml")); err != nil {
		t.Fatal(err)
	}
	h.next(t, "add svc default/web")
	swap("..v2", svcYAML("web", 30002))
	_, cur := servicePair(t, h.next(t, "update svc default/web")[0])
	if cur.Spec.Ports[0].NodePort != 30002 {
		t.Errorf("nodePort = %d, want 30002", cur.Spec.Ports[0].NodePort)
	}
}

func TestManifestsMissingDir(t *testing.T) {
	m := NewManifests(filepath.Join(t.TempDir(), "nope"), nil)
	err := m.Run(context.Background(), &recorder{})
	if err == nil || !strings.HasPrefix(err.Error(), "read manifests dir: ") || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Run = %v, want a read manifests dir not-exist error", err)
	}
}
