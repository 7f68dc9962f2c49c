// Command sluice-image builds sluice's container image as an OCI archive, as the Dockerfile
// describes it, without a container engine: `ctr -n k8s.io images import` loads it into a
// node's containerd. The name defaults to the one manifests/daemonset.yaml runs.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/sluicelb/sluice/tools/image"
)

func main() {
	dockerfile := flag.String("dockerfile", "Dockerfile", "the Dockerfile to follow")
	src := flag.String("src", ".", "the source tree (the Dockerfile's build context)")
	name := flag.String("name", "", "image name (default: the image manifests/daemonset.yaml runs)")
	version := flag.String("version", "dev", "the VERSION build arg")
	out := flag.String("out", "bin/sluice-agent-image.tar", "where to write the archive")
	flag.Parse()
	if err := run(*dockerfile, *src, *name, *version, *out); err != nil {
		fmt.Fprintln(os.Stderr, "sluice-image:", err)
		os.Exit(1)
	}
}

func run(dockerfile, src, name, version, out string) error {
	if name == "" {
		n, err := manifestImage(src + "/manifests/daemonset.yaml")
		if err != nil {
			return err
		}
		name = n
	}
	d, err := image.ParseDockerfile(dockerfile)
	if err != nil {
		return err
	}
	img, err := d.Build(src, name, map[string]string{"VERSION": version})
	if err != nil {
		return err
	}
	if err := image.WriteFile(out, img); err != nil {
		return err
	}
	fmt.Printf("%s: %s\n", out, name)
	return nil
}

// manifestImage is the first "image:" of the DaemonSet manifest.
func manifestImage(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", fmt.Errorf("read the image name: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "image:"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("read the image name: no image in %s", p)
}
