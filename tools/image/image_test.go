package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// archive is an image archive read back: its blobs by digest, checked against their names.
type archive struct {
	index  struct{ Manifests []descriptor }
	blobs  map[string][]byte
	config struct {
		Config Config
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	layers []map[string]*tar.Header // per layer: path -> header
	data   map[string][]byte        // path -> content, over all layers
}

func readArchive(t *testing.T, b []byte) *archive {
	t.Helper()
	a := &archive{blobs: map[string][]byte{}, data: map[string][]byte{}}
	tr := tar.NewReader(bytes.NewReader(b))
	var index []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		switch {
		case h.Name == "index.json":
			index = body
		case strings.HasPrefix(h.Name, "blobs/sha256/") && h.Typeflag == tar.TypeReg:
			sum := sha256.Sum256(body)
			if name := strings.TrimPrefix(h.Name, "blobs/sha256/"); name != hex.EncodeToString(sum[:]) {
				t.Fatalf("blob %s has digest %x", name, sum)
			}
			a.blobs["sha256:"+strings.TrimPrefix(h.Name, "blobs/sha256/")] = body
		}
	}
	if err := json.Unmarshal(index, &a.index); err != nil || len(a.index.Manifests) != 1 {
		t.Fatalf("index.json %s: %v", index, err)
	}
	var m struct {
		Config descriptor
		Layers []descriptor
	}
	if err := json.Unmarshal(a.blobs[a.index.Manifests[0].Digest], &m); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(a.blobs[m.Config.Digest], &a.config); err != nil {
		t.Fatal(err)
	}
	for i, l := range m.Layers {
		zr, err := gzip.NewReader(bytes.NewReader(a.blobs[l.Digest]))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(zr)
		if sum := sha256.Sum256(raw); "sha256:"+hex.EncodeToString(sum[:]) != a.config.RootFS.DiffIDs[i] {
			t.Errorf("layer %d: diff ID does not match its content", i)
		}
		hs := map[string]*tar.Header{}
		lr := tar.NewReader(bytes.NewReader(raw))
		for {
			h, err := lr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			hs[strings.TrimSuffix(h.Name, "/")] = h
			a.data[strings.TrimSuffix(h.Name, "/")], _ = io.ReadAll(lr)
		}
		a.layers = append(a.layers, hs)
	}
	return a
}

// The image built from the Dockerfile is the one it describes: the build stage's go build
// (static binaries, the version stamped), every command under cmd/ at the COPY destination,
// the final stage's user and entrypoint; the archive's blobs match their digests.
func TestImageAgreesWithTheDockerfile(t *testing.T) {
	d, err := ParseDockerfile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	img, err := d.Build("../..", "example.test/sluice-agent:dev", map[string]string{"VERSION": "v9.9.9-test"})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Write(&buf, img); err != nil {
		t.Fatal(err)
	}
	a := readArchive(t, buf.Bytes())
	if got := a.index.Manifests[0].Annotations["io.containerd.image.name"]; got != "example.test/sluice-agent:dev" {
		t.Errorf("image name %q", got)
	}
	if a.config.Config.User != "0" || !slices.Equal(a.config.Config.Entrypoint, []string{"/usr/local/bin/sluice-agent"}) {
		t.Errorf("config %+v, want the Dockerfile's USER 0 and ENTRYPOINT", a.config.Config)
	}
	cmds, _ := os.ReadDir("../../cmd")
	if len(cmds) == 0 {
		t.Fatal("no commands under cmd/")
	}
	dir := t.TempDir()
	for _, c := range cmds {
		p := "usr/local/bin/" + c.Name()
		b, ok := a.data[p]
		if !ok {
			t.Errorf("no %s in the image", p)
			continue
		}
		if h := a.layers[1][p]; h.Mode&0o111 == 0 || h.Uid != 0 {
			t.Errorf("%s: mode %o uid %d", p, h.Mode, h.Uid)
		}
		f, err := elf.NewFile(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				t.Errorf("%s is dynamically linked: the base has no libc", p)
			}
		}
		bin := filepath.Join(dir, c.Name())
		if err := os.WriteFile(bin, b, 0o755); err != nil {
			t.Fatal(err)
		}
		if c.Name() == "sluice-agent" {
			if out, err := exec.Command(bin, "--version").CombinedOutput(); err != nil || !strings.Contains(string(out), "v9.9.9-test") {
				t.Errorf("sluice-agent --version: %q %v, want the version the build arg stamped", out, err)
			}
		}
	}
	if _, ok := a.data["etc/passwd"]; !ok {
		t.Error("the base layer has no /etc/passwd")
	}
}

// The same content gives the same archive, byte for byte.
func TestArchiveIsReproducible(t *testing.T) {
	img := Image{Name: "example.test/x:1", Arch: "amd64", Config: Config{Entrypoint: []string{"/x"}},
		Layers: [][]File{{{Path: "/b/c", Mode: 0o644, Data: []byte("c")}, {Path: "/a", Mode: 0o755, Data: []byte("a")}}}}
	var one, two bytes.Buffer
	if err := Write(&one, img); err != nil {
		t.Fatal(err)
	}
	if err := Write(&two, img); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(one.Bytes(), two.Bytes()) {
		t.Error("two writes of one image differ")
	}
	a := readArchive(t, one.Bytes())
	if h := a.layers[0]["b"]; h == nil || h.Typeflag != tar.TypeDir {
		t.Errorf("parent directory /b not written before /b/c: %v", a.layers[0])
	}
}

// A final stage the parser does not understand is an error, not an image missing a step.
func TestDockerfileWithUnknownFinalStepIsRefused(t *testing.T) {
	df := "FROM golang AS build\nRUN CGO_ENABLED=0 go build -o /out/ ./cmd/...\nFROM scratch\nCOPY --from=build /out/ /bin/\nRUN echo hi\nENTRYPOINT [\"/bin/x\"]\n"
	if _, err := parseDockerfile(strings.NewReader(df)); err == nil || !strings.Contains(err.Error(), "RUN is not supported") {
		t.Errorf("err %v", err)
	}
}

// A symbolic link is written as one, and EXPOSE's ports reach the config only when set.
func TestSymlinksAndExposedPorts(t *testing.T) {
	img := Image{Name: "example.test/x:1", Arch: "amd64",
		Config: Config{Entrypoint: []string{"/bin/sh"}, ExposedPorts: map[string]struct{}{"53/udp": {}}},
		Layers: [][]File{{{Path: "/bin/busybox", Mode: 0o755, Data: []byte("x")}, {Path: "/bin/sh", Link: "busybox"}}}}
	var buf bytes.Buffer
	if err := Write(&buf, img); err != nil {
		t.Fatal(err)
	}
	a := readArchive(t, buf.Bytes())
	if h := a.layers[0]["bin/sh"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" || h.Size != 0 {
		t.Errorf("bin/sh: %+v, want a symbolic link to busybox", h)
	}
	if _, ok := a.config.Config.ExposedPorts["53/udp"]; !ok {
		t.Errorf("config %+v: no 53/udp", a.config.Config)
	}
	cfg, _ := json.Marshal(Config{})
	if strings.Contains(string(cfg), "ExposedPorts") {
		t.Errorf("an empty config says %s", cfg)
	}
}
