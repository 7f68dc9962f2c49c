package cluster

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/sluicelb/sluice/tools/image"
)

// The images the cluster runs, under the names the kubelet, containerd and e2e.test ask for, so
// that none is pulled: no registry is reachable here.
const (
	// PauseImage is the sandbox image: containerd 2.4's default, kubeadm 1.37's PauseVersion
	// and e2e's imageutils.Pause agree.
	PauseImage = "registry.k8s.io/pause:3.10.2"
	// AgnhostImage is e2e's imageutils.Agnhost (test/utils/image/manifest.go).
	AgnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	// CoreDNSImage is kubeadm 1.37's (constants.CoreDNSVersion); build.sh builds that release.
	CoreDNSImage = "registry.k8s.io/coredns/coredns:v1.14.6"
	// BusyBoxImage is e2e's imageutils.BusyBox: Conntrack's init and client containers.
	BusyBoxImage = "registry.k8s.io/e2e-test-images/busybox:1.37.0-2"
	// RegressionIssue74839Image is e2e's imageutils.RegressionIssue74839: Conntrack's test of
	// the invalid conntrack state bug.
	RegressionIssue74839Image = "registry.k8s.io/e2e-test-images/regression-issue-74839:1.5"
)

// Images that no test of [sig-network] Services, Networking Granular Checks: Services or
// Conntrack uses are not written (nginx, httpd, the storage and node images); nor are these parts
// of agnhost's: /coredns 1.6.2 (DNS tests), /var/registry (fake registry tests), porter's
// localhost.crt and .key (Proxy's TLS port), dig, iperf, bash, socat and ipcs.

// defaultPath is the PATH of the Dockerfiles' bases (alpine, busybox, distroless).
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// hostTools are the Debian commands agnhost's tests run in its containers, where the real
// image has Alpine's (Dockerfile: apk add curl netcat-openbsd iproute2): curl and nc in
// nearly every Service test, nc -W (OpenBSD's, not busybox's) in Conntrack's probes, ss in
// "should release NodePorts on delete"; and GNU wget for `wget -T`, on which bookworm's busybox
// 1.35 wget crashes (SIGSEGV). They come with their libraries (elfFiles), in /usr/bin, before
// busybox's links in /bin on PATH. /bin/sh is dash: Debian's static busybox sh runs its own
// applets before PATH's commands wherever /proc is mounted (a container), so `sh -c "nc -W 1"`
// would run busybox's nc. Busybox gives the rest: nslookup, seq, grep, tail, tr, sleep, date.
var hostTools = []struct{ host, path string }{
	{"/bin/dash", "/bin/dash"},
	{"/usr/bin/curl", "/usr/bin/curl"},
	{"/bin/nc.openbsd", "/usr/bin/nc"},
	{"/usr/bin/ss", "/usr/bin/ss"},
	{"/usr/bin/wget", "/usr/bin/wget"},
}

// busyboxPath is Debian's busybox-static: one static binary, its applets symbolic links.
const busyboxPath = "/bin/busybox"

// debianPackages are what WriteImages reads from the host (build.sh's debian part installs them).
const debianPackages = "busybox-static dash curl netcat-openbsd iproute2 wget"

// WriteImages writes an OCI archive for each image above into dir, from the binaries build.sh
// put in bin (pause, agnhost, coredns, regression-issue-74839) and Debian's busybox and tools,
// and returns their paths. An archive whose content has not changed since it was written (its
// .key file) is kept, so that a warm cluster start does not compress 200 MB again.
func WriteImages(bin, dir string) ([]string, error) {
	imgs, err := Images(bin)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create image dir: %w", err)
	}
	paths := make([]string, len(imgs))
	errs := make([]error, len(imgs))
	var wg sync.WaitGroup
	for i, img := range imgs {
		paths[i] = filepath.Join(dir, archiveName(img.Name))
		wg.Add(1)
		go func() { // gzip is the cost: one image per core
			defer wg.Done()
			errs[i] = writeIfChanged(paths[i], img)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return paths, nil
}

// archiveName is the file an image is written to: its repository's last element.
func archiveName(ref string) string {
	name, _, _ := strings.Cut(ref[strings.LastIndex(ref, "/")+1:], ":")
	return name + ".tar"
}

func writeIfChanged(p string, img image.Image) error {
	key := imageKey(img)
	if old, err := os.ReadFile(p + ".key"); err == nil && string(old) == key {
		if _, err := os.Stat(p); err == nil {
			return nil
		}
	}
	tmp := p + ".new"
	if err := image.WriteFile(tmp, img); err != nil {
		return fmt.Errorf("write image %s: %w", img.Name, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write image %s: %w", img.Name, err)
	}
	if err := os.WriteFile(p+".key", []byte(key), 0o644); err != nil {
		return fmt.Errorf("write image %s: %w", img.Name, err)
	}
	return nil
}

// imageKey hashes all an archive is made of: the same key, the same archive bytes (as long as
// tools/image writes them the same way: a change there needs the old archives removed).
func imageKey(img image.Image) string {
	h := sha256.New()
	cfg, _ := json.Marshal(img.Config)
	fmt.Fprintf(h, "%s\n%s\n%s\n", img.Name, img.Arch, cfg)
	for i, layer := range img.Layers {
		fmt.Fprintf(h, "layer %d\n", i)
		for _, f := range layer {
			fmt.Fprintf(h, "%s %o %t %q %d\n", f.Path, f.Mode, f.Dir, f.Link, len(f.Data))
			h.Write(f.Data)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Images are the cluster's images, built in memory from bin and the host's Debian packages.
func Images(bin string) ([]image.Image, error) {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(bin, name))
		if err != nil {
			return nil, fmt.Errorf("read %s (tools/cluster/build.sh builds it): %w", name, err)
		}
		return b, nil
	}
	pause, err := read("pause")
	if err != nil {
		return nil, err
	}
	agnhost, err := read("agnhost")
	if err != nil {
		return nil, err
	}
	coredns, err := read("coredns")
	if err != nil {
		return nil, err
	}
	regression, err := read("regression-issue-74839")
	if err != nil {
		return nil, err
	}
	busybox, err := busyboxLayer()
	if err != nil {
		return nil, err
	}
	tools, err := toolsLayer()
	if err != nil {
		return nil, err
	}
	distroless, err := image.BaseLayer()
	if err != nil {
		return nil, err
	}
	arch := runtime.GOARCH
	env := []string{defaultPath}
	return []image.Image{
		// build/pause/Dockerfile: FROM scratch, /pause, USER 65535:65535.
		{Name: PauseImage, Arch: arch, Layers: [][]image.File{{{Path: "/pause", Mode: 0o755, Data: pause}}},
			Config: image.Config{Entrypoint: []string{"/pause"}, User: "65535:65535", Env: env}},
		// test/images/agnhost/Dockerfile, on busybox where it has Alpine.
		{Name: AgnhostImage, Arch: arch, Layers: [][]image.File{busybox, tools, agnhostLayer(agnhost)},
			Config: image.Config{Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"}, Env: env,
				ExposedPorts: ports("80/tcp", "8080/tcp", "8081/tcp", "9376/tcp", "5000/tcp")}},
		// coredns' Dockerfile: distroless static, /coredns. It runs as root here: the real image's
		// nonroot user binds :53 by a file capability, which these archives do not carry.
		{Name: CoreDNSImage, Arch: arch, Layers: [][]image.File{distroless, {{Path: "/coredns", Mode: 0o755, Data: coredns}}},
			Config: image.Config{Entrypoint: []string{"/coredns"}, Env: env, WorkingDir: "/",
				ExposedPorts: ports("53/tcp", "53/udp")}},
		// test/images/busybox: busybox 1.37's official image; this is Debian bookworm's 1.35.
		{Name: BusyBoxImage, Arch: arch, Layers: [][]image.File{busybox},
			Config: image.Config{Cmd: []string{"sh"}, Env: env}},
		// test/images/regression-issue-74839: on debian-base, here on busybox (the same shell
		// tools; the static binary needs nothing of either).
		{Name: RegressionIssue74839Image, Arch: arch,
			Layers: [][]image.File{busybox, {{Path: "/regression-issue-74839", Mode: 0o755, Data: regression}}},
			Config: image.Config{Entrypoint: []string{"/regression-issue-74839"}, Env: env}},
	}, nil
}

func ports(ps ...string) map[string]struct{} {
	m := map[string]struct{}{}
	for _, p := range ps {
		m[p] = struct{}{}
	}
	return m
}

// The busybox image's users and groups (those of its system accounts a container may run as).
const (
	busyboxPasswd = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\n" +
		"bin:x:2:2:bin:/bin:/bin/false\nsys:x:3:3:sys:/dev:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
	busyboxGroup = "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nnogroup:x:65534:\n"
)

// busyboxLayer is the busybox image's content: the binary, every applet as a link to it in
// /bin, and its users and directories.
func busyboxLayer() ([]image.File, error) {
	b, err := os.ReadFile(busyboxPath)
	if err != nil {
		return nil, fmt.Errorf("read busybox (apt-get install %s): %w", debianPackages, err)
	}
	out, err := exec.Command(busyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("list busybox applets: %w", err)
	}
	files := []image.File{
		{Path: "/bin/busybox", Mode: 0o755, Data: b},
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte(busyboxPasswd)},
		{Path: "/etc/group", Mode: 0o644, Data: []byte(busyboxGroup)},
		{Path: "/tmp", Dir: true, Mode: 0o1777},
		{Path: "/root", Dir: true, Mode: 0o700},
		{Path: "/home", Dir: true, Mode: 0o755},
		{Path: "/usr/sbin", Dir: true, Mode: 0o755},
		{Path: "/var/spool/mail", Dir: true, Mode: 0o755},
		{Path: "/var/www", Dir: true, Mode: 0o755},
	}
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" && !strings.Contains(a, "/") {
			files = append(files, image.File{Path: "/bin/" + a, Link: "busybox"})
		}
	}
	return files, nil
}

// toolsLayer is hostTools with the shared libraries and loader they need, at the paths the
// loader searches without an ld.so.cache (Debian's multiarch directories).
func toolsLayer() ([]image.File, error) {
	files := []image.File{
		// glibc reads /etc/hosts first only when told: Alpine's musl always does.
		{Path: "/etc/nsswitch.conf", Mode: 0o644, Data: []byte("hosts: files dns\n")},
		{Path: "/bin/sh", Link: "dash"},
	}
	seen := map[string]bool{}
	for _, t := range hostTools {
		b, err := os.ReadFile(t.host)
		if err != nil {
			return nil, fmt.Errorf("read %s (apt-get install %s): %w", t.host, debianPackages, err)
		}
		files = append(files, image.File{Path: t.path, Mode: 0o755, Data: b})
		libs, err := elfFiles(t.host, seen)
		if err != nil {
			return nil, err
		}
		files = append(files, libs...)
	}
	return files, nil
}

// libDirs are where Debian's loader looks for a library by default.
func libDirs() []string {
	triplet := map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}[runtime.GOARCH]
	return []string{"/lib/" + triplet, "/usr/lib/" + triplet, "/lib", "/usr/lib"}
}

// elfFiles are the loader and the libraries the program at p needs, transitively (DT_NEEDED),
// each once over calls sharing seen.
func elfFiles(p string, seen map[string]bool) ([]image.File, error) {
	f, err := elf.Open(p)
	if err != nil {
		return nil, fmt.Errorf("read ELF %s: %w", p, err)
	}
	defer f.Close()
	var out []image.File
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		b, err := io.ReadAll(prog.Open())
		if err != nil {
			return nil, fmt.Errorf("read ELF %s interpreter: %w", p, err)
		}
		interp := string(bytes.TrimRight(b, "\x00"))
		if !seen[interp] {
			seen[interp] = true
			data, err := os.ReadFile(interp)
			if err != nil {
				return nil, fmt.Errorf("read loader: %w", err)
			}
			out = append(out, image.File{Path: interp, Mode: 0o755, Data: data})
		}
	}
	needed, err := f.ImportedLibraries()
	if err != nil {
		return nil, fmt.Errorf("read ELF %s libraries: %w", p, err)
	}
	sort.Strings(needed)
	for _, lib := range needed {
		if seen[lib] {
			continue
		}
		seen[lib] = true
		var found string
		for _, d := range libDirs() {
			if _, err := os.Stat(filepath.Join(d, lib)); err == nil {
				found = filepath.Join(d, lib)
				break
			}
		}
		if found == "" {
			return nil, fmt.Errorf("find library %s of %s in %v", lib, p, libDirs())
		}
		data, err := os.ReadFile(found)
		if err != nil {
			return nil, fmt.Errorf("read library: %w", err)
		}
		out = append(out, image.File{Path: found, Mode: 0o644, Data: data})
		more, err := elfFiles(found, seen)
		if err != nil {
			return nil, err
		}
		out = append(out, more...)
	}
	return out, nil
}

// agnhostLayer is what agnhost's Dockerfile adds to its base: the binary, the agnhost-2 link
// (entrypoint-tester), netexec's /uploads, and the user and group of the image-defined
// SupplementalGroups test.
func agnhostLayer(agnhost []byte) []image.File {
	return []image.File{
		{Path: "/agnhost", Mode: 0o755, Data: agnhost},
		{Path: "/agnhost-2", Link: "agnhost"},
		{Path: "/uploads", Dir: true, Mode: 0o755},
		{Path: "/home/user-defined-in-image", Dir: true, Mode: 0o755},
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte(busyboxPasswd +
			"user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n")},
		{Path: "/etc/group", Mode: 0o644, Data: []byte(busyboxGroup +
			"user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n")},
	}
}
