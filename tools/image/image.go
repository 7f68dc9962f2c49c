// Package image writes container images as OCI image archives (the layout `ctr images import`
// and `podman load` read) without a container engine or a registry: a config, a manifest and
// gzip'd tar layers, all content-addressed, in one tar. Archives are reproducible: the same
// files give the same bytes (fixed times and owners, sorted entries).
package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// File is one entry of a layer.
type File struct {
	Path string // absolute, in the image
	Mode int64  // permission bits; a directory when Dir
	Dir  bool
	Data []byte
	Link string // when set, a symbolic link to Link (busybox's applets, a library's soname)
}

// Config is what the image's config says about running it.
type Config struct {
	Entrypoint []string
	Cmd        []string
	User       string
	Env        []string
	WorkingDir string
	Labels     map[string]string
	// ExposedPorts, e.g. "53/udp", as the Dockerfile's EXPOSE says (omitted when empty, so that
	// images without it keep their bytes).
	ExposedPorts map[string]struct{} `json:",omitempty"`
}

// Image is a name (reference) and its layers, bottom first.
type Image struct {
	Name   string // e.g. registry.k8s.io/pause:3.10
	Arch   string // GOARCH, e.g. amd64
	Config Config
	Layers [][]File
}

const (
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// epoch is every file's and the image's time: the archive depends on the content only.
var epoch = time.Unix(0, 0).UTC()

// Write writes img as an OCI image archive to w.
func Write(w io.Writer, img Image) error {
	blobs := map[string][]byte{}
	add := func(b []byte) string {
		sum := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[d] = b
		return d
	}
	var layers []descriptor
	var diffIDs []string
	for i, files := range img.Layers {
		raw, err := layerTar(files)
		if err != nil {
			return fmt.Errorf("write layer %d: %w", i, err)
		}
		sum := sha256.Sum256(raw)
		diffIDs = append(diffIDs, "sha256:"+hex.EncodeToString(sum[:]))
		var gz bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
		zw.ModTime = epoch
		if _, err := zw.Write(raw); err != nil {
			return fmt.Errorf("compress layer %d: %w", i, err)
		}
		if err := zw.Close(); err != nil {
			return fmt.Errorf("compress layer %d: %w", i, err)
		}
		layers = append(layers, descriptor{MediaType: mediaLayer, Digest: add(gz.Bytes()), Size: int64(gz.Len())})
	}
	cfg := map[string]any{
		"created":      epoch.Format(time.RFC3339),
		"architecture": img.Arch,
		"os":           "linux",
		"config":       img.Config,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("encode image config: %w", err)
	}
	manifest := map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaManifest,
		"config":        descriptor{MediaType: mediaConfig, Digest: add(cfgJSON), Size: int64(len(cfgJSON))},
		"layers":        layers,
	}
	mJSON, err := json.Marshal(manifest)
	if err != nil {
		return fmt.Errorf("encode image manifest: %w", err)
	}
	mDigest := add(mJSON)
	index := map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaIndex,
		"manifests": []descriptor{{MediaType: mediaManifest, Digest: mDigest, Size: int64(len(mJSON)),
			Platform: &platform{Architecture: img.Arch, OS: "linux"},
			// containerd names the imported image by the first, other tools by the second.
			Annotations: map[string]string{"io.containerd.image.name": img.Name, "org.opencontainers.image.ref.name": img.Name}}},
	}
	iJSON, err := json.Marshal(index)
	if err != nil {
		return fmt.Errorf("encode image index: %w", err)
	}
	tw := tar.NewWriter(w)
	entries := []File{
		{Path: "oci-layout", Mode: 0o644, Data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{Path: "index.json", Mode: 0o644, Data: iJSON},
		{Path: "blobs", Dir: true, Mode: 0o755},
		{Path: "blobs/sha256", Dir: true, Mode: 0o755},
	}
	digests := make([]string, 0, len(blobs))
	for d := range blobs {
		digests = append(digests, d)
	}
	sort.Strings(digests)
	for _, d := range digests {
		entries = append(entries, File{Path: "blobs/sha256/" + strings.TrimPrefix(d, "sha256:"), Mode: 0o644, Data: blobs[d]})
	}
	for _, e := range entries {
		if err := writeEntry(tw, e.Path, e); err != nil {
			return fmt.Errorf("write image archive: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write image archive: %w", err)
	}
	return nil
}

// WriteFile writes img to the file at p.
func WriteFile(p string, img Image) error {
	f, err := os.Create(p)
	if err != nil {
		return fmt.Errorf("create image archive: %w", err)
	}
	if err := Write(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// layerTar is a layer's uncompressed tar: parents before children, each once, sorted.
func layerTar(files []File) ([]byte, error) {
	all := map[string]File{}
	for _, f := range files {
		p := path.Clean("/" + f.Path)
		if p == "/" {
			continue
		}
		for dir := path.Dir(p); dir != "/"; dir = path.Dir(dir) {
			if _, ok := all[dir]; !ok {
				all[dir] = File{Path: dir, Dir: true, Mode: 0o755}
			}
		}
		f.Path = p
		all[p] = f
	}
	paths := make([]string, 0, len(all))
	for p := range all {
		paths = append(paths, p)
	}
	sort.Strings(paths) // "/a" sorts before "/a/b": parents first
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		if err := writeEntry(tw, strings.TrimPrefix(p, "/"), all[p]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeEntry(tw *tar.Writer, name string, f File) error {
	h := &tar.Header{Name: name, Mode: f.Mode, ModTime: epoch, Format: tar.FormatPAX}
	switch {
	case f.Dir:
		h.Typeflag, h.Name = tar.TypeDir, name+"/"
	case f.Link != "":
		h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.Link, 0o777
	default:
		h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
	}
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if h.Typeflag == tar.TypeReg {
		if _, err := tw.Write(f.Data); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}
