package cluster

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/sluicelb/sluice/internal/testutil"
	"github.com/sluicelb/sluice/tools/image"
)

// imagesBin is build.sh's output, or the test is skipped (failed in CI, which must have built it).
func imagesBin(t *testing.T) string {
	t.Helper()
	cache := os.Getenv("SLUICE_CACHE")
	if cache == "" {
		cache = "/var/cache/sluice"
	}
	bin := filepath.Join(cache, "cluster", "bin")
	var missing []string
	for _, p := range []string{filepath.Join(bin, "pause"), filepath.Join(bin, "agnhost"), filepath.Join(bin, "coredns"),
		filepath.Join(bin, "regression-issue-74839"), busyboxPath} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
		}
	}
	for _, tool := range hostTools {
		if _, err := os.Stat(tool.host); err != nil {
			missing = append(missing, tool.host)
		}
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("missing %v: run bash tools/cluster/build.sh (k8s, coredns and debian parts)", missing)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// ociArchive is an archive read back: its image's name, config and files (last layer wins).
type ociArchive struct {
	name   string
	config image.Config
	files  map[string]*tar.Header
	layers int
}

func readOCI(t *testing.T, p string) ociArchive {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	blobs := map[string][]byte{}
	var index []byte
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		b, _ := io.ReadAll(tr)
		if h.Name == "index.json" {
			index = b
		} else if d, ok := strings.CutPrefix(h.Name, "blobs/sha256/"); ok && d != "" {
			blobs["sha256:"+d] = b
		}
	}
	var idx struct {
		Manifests []struct {
			Digest      string
			Annotations map[string]string
		}
	}
	if err := json.Unmarshal(index, &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("%s: index.json %s: %v", p, index, err)
	}
	var m struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(blobs[idx.Manifests[0].Digest], &m); err != nil {
		t.Fatalf("%s: manifest: %v", p, err)
	}
	var cfg struct{ Config image.Config }
	if err := json.Unmarshal(blobs[m.Config.Digest], &cfg); err != nil {
		t.Fatalf("%s: config: %v", p, err)
	}
	a := ociArchive{name: idx.Manifests[0].Annotations["io.containerd.image.name"], config: cfg.Config,
		files: map[string]*tar.Header{}, layers: len(m.Layers)}
	for _, l := range m.Layers {
		zr, err := gzip.NewReader(bytes.NewReader(blobs[l.Digest]))
		if err != nil {
			t.Fatalf("%s: layer %s: %v", p, l.Digest, err)
		}
		lr := tar.NewReader(zr)
		for {
			h, err := lr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: layer %s: %v", p, l.Digest, err)
			}
			a.files["/"+strings.TrimSuffix(h.Name, "/")] = h
		}
	}
	return a
}

// Each archive names its image as e2e.test and containerd ask for it, runs what the real image
// runs, and holds that file; agnhost also holds the tools the network tests exec in it. A second
// write with nothing changed keeps the archives.
func TestWriteImages(t *testing.T) {
	bin := imagesBin(t)
	dir := t.TempDir()
	paths, err := WriteImages(bin, dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name       string
		entrypoint []string
		cmd        []string
		files      []string // regular files or links; the first is what the image runs
	}{
		{PauseImage, []string{"/pause"}, nil, []string{"/pause"}},
		{AgnhostImage, []string{"/agnhost"}, []string{"pause"}, []string{"/agnhost", "/agnhost-2", "/bin/sh",
			"/usr/bin/curl", "/usr/bin/nc", "/usr/bin/ss", "/usr/bin/wget", "/bin/nslookup", "/uploads"}},
		{CoreDNSImage, []string{"/coredns"}, nil, []string{"/coredns"}},
		{BusyBoxImage, nil, []string{"sh"}, []string{"/bin/sh", "/bin/busybox", "/bin/nc", "/bin/sleep"}},
		{RegressionIssue74839Image, []string{"/regression-issue-74839"}, nil, []string{"/regression-issue-74839", "/bin/sh"}},
	}
	if len(paths) != len(want) {
		t.Fatalf("archives %v, want %d", paths, len(want))
	}
	for i, w := range want {
		a := readOCI(t, paths[i])
		if a.name != w.name {
			t.Errorf("%s: image %q, want %q", paths[i], a.name, w.name)
		}
		if !slices.Equal(a.config.Entrypoint, w.entrypoint) || !slices.Equal(a.config.Cmd, w.cmd) {
			t.Errorf("%s: entrypoint %q cmd %q, want %q %q", w.name, a.config.Entrypoint, a.config.Cmd, w.entrypoint, w.cmd)
		}
		for _, f := range w.files {
			h := a.files[f]
			switch {
			case h == nil:
				t.Errorf("%s: no %s", w.name, f)
			case h.Typeflag == tar.TypeReg && (h.Mode&0o111 == 0 || h.Size == 0):
				t.Errorf("%s: %s mode %o size %d", w.name, f, h.Mode, h.Size)
			case h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeSymlink && h.Typeflag != tar.TypeDir:
				t.Errorf("%s: %s is type %c", w.name, f, h.Typeflag)
			}
		}
		if h := a.files[w.files[0]]; h != nil && h.Typeflag != tar.TypeReg && w.name != BusyBoxImage {
			t.Errorf("%s: entrypoint %s is not a file", w.name, w.files[0])
		}
	}
	before, _ := os.Stat(paths[1])
	if _, err := WriteImages(bin, dir); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.Stat(paths[1]); !after.ModTime().Equal(before.ModTime()) {
		t.Error("an unchanged image was written again")
	}
}

// agnhost's tools run from its own root as the tests run them (sh -c): curl, nc and wget reach
// a server, the loader finds every library, sh finds nc and wget on PATH (not busybox's
// applets), nc is OpenBSD's (-W) and ss answers.
func TestAgnhostToolsRun(t *testing.T) {
	testutil.RequirePrivileges(t) // chroot
	bin := imagesBin(t)
	imgs, err := Images(bin)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	for _, layer := range imgs[1].Layers {
		for _, f := range layer {
			p := filepath.Join(root, f.Path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			switch {
			case f.Dir:
				err = os.MkdirAll(p, os.FileMode(f.Mode))
			case f.Link != "":
				os.Remove(p)
				err = os.Symlink(f.Link, p)
			case f.Path == "/agnhost":
				continue // 60 MB not needed here
			default:
				err = os.WriteFile(p, f.Data, os.FileMode(f.Mode))
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hostname-x") }))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	host, port, _ := strings.Cut(addr, ":")
	script := fmt.Sprintf(`set -e
curl -q -s --connect-timeout 2 http://%[1]s/; echo
printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 %[2]s %[3]s | tail -n 1; echo
wget -q -O - -T 2 http://%[1]s/; echo
nc -h 2>&1 | grep -q -- '-W recvlimit' && echo openbsd-nc
command -v nc; command -v wget
ss -V
`, addr, host, port)
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Env = []string{defaultPath}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in agnhost's root: %v\n%s", err, out)
	}
	for _, w := range []string{"hostname-x\nhostname-x\nhostname-x", "openbsd-nc", "/usr/bin/nc\n/usr/bin/wget\n", "ss utility, iproute2"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}
