// The Manifests source polls its folder instead of using inotify: polling works on any
// filesystem, including bind mounts and ConfigMap volumes (which swap a symlink rather than
// write the files), and is not bound by inotify watch limits. A folder of a few manifests is
// cheap to stat a few times a second.

package source

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// DefaultPollInterval is how often Manifests looks at its folder unless told otherwise.
const DefaultPollInterval = 250 * time.Millisecond

// Manifests is a Source that reads Services, EndpointSlices and Nodes from the .yaml, .yml
// and .json files of one folder (not recursive) and follows edits to them.
type Manifests struct {
	// PollInterval is the time between two looks at the folder.
	PollInterval time.Duration

	dir string
	log *zap.Logger
}

var _ Source = (*Manifests)(nil)

// NewManifests returns a source for the manifests in dir. log may be nil.
func NewManifests(dir string, log *zap.Logger) *Manifests {
	if log == nil {
		log = zap.NewNop()
	}
	return &Manifests{PollInterval: DefaultPollInterval, dir: dir, log: log}
}

// Run delivers the objects of the folder, then OnSynced, then every change, until ctx is
// done (it then returns nil). It fails only if the folder cannot be read at start; later
// errors are logged and the last good state is kept.
func (m *Manifests) Run(ctx context.Context, h Handler) error {
	s := &scanner{
		dir:       m.dir,
		log:       m.log,
		files:     map[string]*fileState{},
		delivered: map[objKey]any{},
	}
	entries, err := os.ReadDir(m.dir)
	if err != nil {
		return fmt.Errorf("read manifests dir: %w", err)
	}
	s.scan(entries)
	s.deliver(h)
	h.OnSynced()

	interval := m.PollInterval
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		entries, err := os.ReadDir(m.dir)
		if err != nil {
			if s.dirErr != err.Error() {
				m.log.Error("read manifests dir, keeping last state", zap.String("dir", m.dir), zap.Error(err))
				s.dirErr = err.Error()
			}
			continue
		}
		if s.dirErr != "" {
			m.log.Info("manifests dir readable again", zap.String("dir", m.dir))
			s.dirErr = ""
		}
		if s.scan(entries) {
			s.deliver(h)
		}
	}
}

// Kinds, in the order events are delivered within one change.
const (
	kindNode          = "Node"
	kindService       = "Service"
	kindEndpointSlice = "EndpointSlice"
)

var kindRank = map[string]int{kindNode: 0, kindService: 1, kindEndpointSlice: 2}

type objKey struct{ kind, namespace, name string }

func (k objKey) String() string {
	if k.namespace == "" {
		return k.kind + " " + k.name
	}
	return k.kind + " " + k.namespace + "/" + k.name
}

// fileState is what one file contributed when last read successfully.
type fileState struct {
	info os.FileInfo
	sum  [sha256.Size]byte
	// racy: the file was read so soon after its mtime that a later write could keep the same
	// mtime (coarse timestamps), so it is read again even if its stat looks unchanged.
	racy    bool
	statErr string
	objs    map[objKey]any // *v1.Service, *discoveryv1.EndpointSlice or *v1.Node
}

// scanner holds the state of one Run; only Run's goroutine touches it.
type scanner struct {
	dir       string
	log       *zap.Logger
	files     map[string]*fileState // by file name
	delivered map[objKey]any
	dirErr    string
}

// scan brings s.files up to date with the folder listing and reports whether any file's
// objects changed.
func (s *scanner) scan(entries []os.DirEntry) bool {
	changed := false
	seen := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !slices.Contains([]string{".yaml", ".yml", ".json"}, filepath.Ext(name)) {
			continue
		}
		path := filepath.Join(s.dir, name)
		fi, err := os.Stat(path) // follows symlinks, as in ConfigMap volumes
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since listed, or a dangling symlink
		}
		st := s.files[name]
		if err != nil {
			// Keep what the file gave before: the error may be transient.
			if st == nil {
				st = &fileState{}
				s.files[name] = st
			}
			if st.statErr != err.Error() {
				s.log.Error("stat manifest", zap.String("file", path), zap.Error(err))
				st.statErr = err.Error()
			}
			seen[name] = true
			continue
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		seen[name] = true
		if st != nil {
			st.statErr = ""
			if !st.racy && sameStat(st.info, fi) {
				continue
			}
		}
		if s.read(name, path, fi) {
			changed = true
		}
	}
	for name, st := range s.files {
		if !seen[name] {
			delete(s.files, name)
			changed = changed || len(st.objs) > 0
		}
	}
	return changed
}

func sameStat(a, b os.FileInfo) bool {
	return a != nil && os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime()) && a.Mode() == b.Mode()
}

// read (re)reads one file and reports whether its objects may have changed. On any error
// the file keeps the objects it gave before, so a half-written edit does not delete them.
func (s *scanner) read(name, path string, fi os.FileInfo) bool {
	st := s.files[name]
	if st == nil {
		st = &fileState{}
		s.files[name] = st
	}
	readAt := time.Now()
	data, err := os.ReadFile(path)
	// Recording the stat even on error means a broken file is retried (and logged) once
	// per change, not once per poll.
	st.info, st.racy = fi, false
	if err != nil {
		s.log.Error("read manifest", zap.String("file", path), zap.Error(err))
		return false
	}
	st.racy = readAt.Sub(fi.ModTime()) < time.Second
	sum := sha256.Sum256(data)
	if sum == st.sum {
		return false
	}
	st.sum = sum
	objs, err := s.parse(path, data)
	if err != nil {
		s.log.Error("parse manifest, keeping its previous objects", zap.String("file", path), zap.Error(err))
		return false
	}
	st.objs = objs
	return true
}

// parse decodes every document of a file. A syntax error anywhere fails the whole file; a
// document that does not make a valid object is logged and skipped.
func (s *scanner) parse(path string, data []byte) (map[objKey]any, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var docs []json.RawMessage
	for {
		var doc json.RawMessage
		err := dec.Decode(&doc)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("decode document %d: %w", len(docs), err)
		}
		docs = append(docs, doc)
	}
	objs := map[objKey]any{}
	for i, doc := range docs {
		s.decode(doc, objs, zap.String("file", path), zap.Int("doc", i))
	}
	return objs, nil
}

// decode adds the object(s) of one document to objs. where says where the document is,
// for the logs.
func (s *scanner) decode(doc json.RawMessage, objs map[objKey]any, where ...zap.Field) {
	if t := bytes.TrimSpace(doc); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return // empty document
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(doc, &tm); err != nil {
		s.log.Error("decode manifest document, skipping it", append(where, zap.Error(err))...)
		return
	}
	where = append(where, zap.String("kind", tm.Kind))

	var obj any
	var meta *metav1.ObjectMeta
	switch tm.APIVersion + "/" + tm.Kind {
	case "v1/List":
		var list struct {
			Items []json.RawMessage `json:"items"`
		}
		if err := json.Unmarshal(doc, &list); err != nil {
			s.log.Error("decode manifest document, skipping it", append(where, zap.Error(err))...)
			return
		}
		for i, item := range list.Items {
			s.decode(item, objs, append(where[:len(where):len(where)], zap.Int("item", i))...)
		}
		return
	case "v1/Service":
		svc := &v1.Service{}
		obj, meta = svc, &svc.ObjectMeta
	case "discovery.k8s.io/v1/EndpointSlice":
		slice := &discoveryv1.EndpointSlice{}
		obj, meta = slice, &slice.ObjectMeta
	case "v1/Node":
		node := &v1.Node{}
		obj, meta = node, &node.ObjectMeta
	default:
		s.log.Debug("ignoring manifest of unsupported kind", append(where, zap.String("apiVersion", tm.APIVersion))...)
		return
	}

	err := json.Unmarshal(doc, obj)
	where = append(where, zap.String("name", meta.Name))
	if err == nil && meta.Name == "" {
		err = errors.New("metadata.name is missing")
	}
	if svc, ok := obj.(*v1.Service); ok && err == nil {
		err = validateService(svc)
	}
	if err != nil {
		s.log.Error("decode manifest object, skipping it", append(where, zap.Error(err))...)
		return
	}
	switch {
	case tm.Kind == kindNode:
		meta.Namespace = "" // cluster-scoped
	case meta.Namespace == "":
		meta.Namespace = metav1.NamespaceDefault
	}
	key := objKey{tm.Kind, meta.Namespace, meta.Name}
	if _, dup := objs[key]; dup {
		s.log.Warn("object defined twice in one file, the later one wins", append(where, zap.Stringer("object", key))...)
	}
	objs[key] = obj
}

// validateService rejects only what could not be translated at all; the translation layer
// validates the rest.
func validateService(svc *v1.Service) error {
	for _, p := range svc.Spec.Ports {
		switch p.Protocol {
		case "", v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP:
		default:
			return fmt.Errorf("port %q: unsupported protocol %q", p.Name, p.Protocol)
		}
		if p.NodePort < 0 || p.NodePort > 65535 {
			return fmt.Errorf("port %q: nodePort %d out of range", p.Name, p.NodePort)
		}
	}
	return nil
}

// desired merges the objects of all files; when two files define the same object, the file
// whose name sorts last wins.
func (s *scanner) desired() map[objKey]any {
	names := make([]string, 0, len(s.files))
	for name := range s.files {
		names = append(names, name)
	}
	slices.Sort(names)
	want := map[objKey]any{}
	owner := map[objKey]string{}
	for _, name := range names {
		for key, obj := range s.files[name].objs {
			if prev, dup := owner[key]; dup {
				s.log.Warn("object defined in two files, the later file wins", zap.Stringer("object", key),
					zap.String("file", filepath.Join(s.dir, name)), zap.String("overrides", filepath.Join(s.dir, prev)))
			}
			want[key], owner[key] = obj, name
		}
	}
	return want
}

// deliver calls h for every difference between what h has seen and what the files now say.
func (s *scanner) deliver(h Handler) {
	want := s.desired()
	keys := make([]objKey, 0, len(want)+len(s.delivered))
	for k := range want {
		keys = append(keys, k)
	}
	for k := range s.delivered {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b objKey) int {
		return cmp.Or(cmp.Compare(kindRank[a.kind], kindRank[b.kind]), strings.Compare(a.namespace, b.namespace), strings.Compare(a.name, b.name))
	})
	for _, k := range keys {
		old, cur := s.delivered[k], want[k]
		if old != nil && cur != nil && equality.Semantic.DeepEqual(old, cur) {
			want[k] = old // h keeps seeing the object it was given
			continue
		}
		s.log.Debug("manifest object changed", zap.Stringer("object", k), zap.Bool("old", old != nil), zap.Bool("new", cur != nil))
		switch k.kind {
		case kindService:
			emit(old, cur, h.OnServiceAdd, h.OnServiceUpdate, h.OnServiceDelete)
		case kindEndpointSlice:
			emit(old, cur, h.OnEndpointSliceAdd, h.OnEndpointSliceUpdate, h.OnEndpointSliceDelete)
		case kindNode:
			emit(old, cur, h.OnNodeAdd, h.OnNodeUpdate, h.OnNodeDelete)
		}
	}
	s.delivered = want
}

func emit[T any](old, cur any, add func(T), update func(old, cur T), del func(T)) {
	switch {
	case old == nil:
		add(cur.(T))
	case cur == nil:
		del(old.(T))
	default:
		update(old.(T), cur.(T))
	}
}
