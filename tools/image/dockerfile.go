package image

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Dockerfile is what sluice's Dockerfile says, read from it, so that the archive this package
// builds is the image the Dockerfile describes: the same build command, the same files at the
// same paths, the same user and entrypoint. Only the instructions the Dockerfile uses are
// understood; any other in the final stage is an error, not silently skipped.
type Dockerfile struct {
	// BuildEnv and BuildArgs are the build stage's `RUN ... go build ...`: its environment
	// assignments and go's arguments (with ${ARG} left for Expand).
	BuildEnv  []string
	BuildArgs []string
	BuildOut  string            // the build's -o directory
	Args      map[string]string // ARG defaults
	// The final stage.
	Base       string
	CopyFrom   string // COPY --from=build SRC DST: SRC is BuildOut
	CopyTo     string
	User       string
	Entrypoint []string
}

// ParseDockerfile reads the Dockerfile at p.
func ParseDockerfile(p string) (*Dockerfile, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("read Dockerfile: %w", err)
	}
	defer f.Close()
	return parseDockerfile(f)
}

func parseDockerfile(r io.Reader) (*Dockerfile, error) {
	d := &Dockerfile{Args: map[string]string{}}
	stage := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		instr, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "FROM":
			stage++
			d.Base = strings.Fields(rest)[0]
		case "ARG":
			k, v, _ := strings.Cut(rest, "=")
			d.Args[k] = v
		case "RUN":
			if stage > 1 {
				return nil, fmt.Errorf("parse Dockerfile: final stage RUN is not supported")
			}
			if strings.Contains(rest, "go build") {
				words, err := shellWords(rest)
				if err != nil {
					return nil, fmt.Errorf("parse Dockerfile RUN %q: %w", rest, err)
				}
				i := 0
				for ; i < len(words) && strings.Contains(words[i], "="); i++ {
					d.BuildEnv = append(d.BuildEnv, words[i])
				}
				if i+2 > len(words) || words[i] != "go" || words[i+1] != "build" {
					return nil, fmt.Errorf("parse Dockerfile RUN %q: not a go build", rest)
				}
				d.BuildArgs = words[i+2:]
				for j, w := range d.BuildArgs {
					if w == "-o" && j+1 < len(d.BuildArgs) {
						d.BuildOut = d.BuildArgs[j+1]
					}
				}
			}
		case "COPY":
			if stage > 1 {
				f := strings.Fields(rest)
				if len(f) != 3 || !strings.HasPrefix(f[0], "--from=") {
					return nil, fmt.Errorf("parse Dockerfile: final stage COPY %q is not COPY --from=STAGE SRC DST", rest)
				}
				d.CopyFrom, d.CopyTo = f[1], f[2]
			}
		case "USER":
			if stage > 1 {
				d.User = rest
			}
		case "ENTRYPOINT":
			if stage > 1 {
				if err := json.Unmarshal([]byte(rest), &d.Entrypoint); err != nil {
					return nil, fmt.Errorf("parse Dockerfile ENTRYPOINT (exec form only): %w", err)
				}
			}
		case "WORKDIR":
			if stage > 1 {
				return nil, fmt.Errorf("parse Dockerfile: final stage WORKDIR is not supported")
			}
		default:
			if stage > 1 {
				return nil, fmt.Errorf("parse Dockerfile: final stage %s is not supported", instr)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read Dockerfile: %w", err)
	}
	if stage < 2 || d.BuildArgs == nil || d.CopyFrom == "" || len(d.Entrypoint) == 0 {
		return nil, fmt.Errorf("parse Dockerfile: want a build stage with go build and a final stage with COPY --from and ENTRYPOINT")
	}
	if path := filepath.Clean(d.CopyFrom); path != filepath.Clean(d.BuildOut) {
		return nil, fmt.Errorf("parse Dockerfile: the final stage copies %s, the build writes %s", d.CopyFrom, d.BuildOut)
	}
	return d, nil
}

// shellWords splits a command line as sh does for the forms the Dockerfile uses: words, and
// double-quoted strings.
func shellWords(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	in, inWord := false, false
	for _, c := range s {
		switch {
		case c == '"':
			in, inWord = !in, true
		case (c == ' ' || c == '\t') && !in:
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(c)
			inWord = true
		}
	}
	if in {
		return nil, fmt.Errorf("unterminated quote")
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}

// Build runs the Dockerfile's go build in the source tree src, with the ARGs in args over the
// Dockerfile's defaults, and returns the image of its final stage: a stand-in for the base (see
// BaseLayer) and the built files at CopyTo.
func (d *Dockerfile) Build(src, name string, args map[string]string) (Image, error) {
	out, err := os.MkdirTemp("", "sluice-image-")
	if err != nil {
		return Image{}, fmt.Errorf("build image: %w", err)
	}
	defer os.RemoveAll(out)
	vals := map[string]string{}
	for k, v := range d.Args {
		vals[k] = v
	}
	for k, v := range args {
		vals[k] = v
	}
	expand := func(s string) string { return os.Expand(s, func(k string) string { return vals[k] }) }
	goArgs := []string{"build"}
	for _, a := range d.BuildArgs {
		if a == d.BuildOut {
			a = out + "/" // the same directory, on this machine
		}
		goArgs = append(goArgs, expand(a))
	}
	cmd := exec.Command("go", goArgs...)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), d.BuildEnv...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return Image{}, fmt.Errorf("build image: go %s: %w\n%s", strings.Join(goArgs, " "), err, b)
	}
	ents, err := os.ReadDir(out)
	if err != nil {
		return Image{}, fmt.Errorf("build image: %w", err)
	}
	var files []File
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(out, e.Name()))
		if err != nil {
			return Image{}, fmt.Errorf("build image: %w", err)
		}
		files = append(files, File{Path: filepath.Join(d.CopyTo, e.Name()), Mode: 0o755, Data: b})
	}
	base, err := BaseLayer()
	if err != nil {
		return Image{}, err
	}
	return Image{Name: name, Arch: runtime.GOARCH, Layers: [][]File{base, files},
		Config: Config{Entrypoint: d.Entrypoint, User: d.User,
			Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}}, nil
}

// BaseLayer stands in for gcr.io/distroless/static-debian12, which cannot be pulled here: what
// a static binary may read of it (root and nonroot users and groups, /tmp, the CA bundle, the
// nsswitch that makes Go's resolver read /etc/hosts first).
func BaseLayer() ([]File, error) {
	files := []File{
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n")},
		{Path: "/etc/nsswitch.conf", Mode: 0o644, Data: []byte("hosts: files dns\n")},
		{Path: "/tmp", Dir: true, Mode: 0o1777},
		{Path: "/root", Dir: true, Mode: 0o700},
		{Path: "/home/nonroot", Dir: true, Mode: 0o700},
	}
	if ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		files = append(files, File{Path: "/etc/ssl/certs/ca-certificates.crt", Mode: 0o644, Data: ca})
	}
	return files, nil
}
