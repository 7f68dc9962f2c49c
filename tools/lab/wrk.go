package lab

import (
	"bytes"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"time"

	"github.com/sluicelb/sluice/internal/testutil"
)

// Wrk is a run of wrk (Debian's package) from inside a namespace: the HTTP load users measure
// proxies with. KeepAlive false sends "Connection: close", so every request is a new flow.
type Wrk struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan struct{}
	err  error
}

// WrkResult is what wrk reported.
type WrkResult struct {
	Requests int64
	// Errors are socket errors (connect, read, write, timeout) and non-2xx responses.
	Connect, Read, Write, Timeout, Non2xx int64
	Output                                string
}

// Failed is every request or connection that went wrong.
func (r WrkResult) Failed() int64 { return r.Connect + r.Read + r.Write + r.Timeout + r.Non2xx }

// StartWrk runs wrk for d against url with conns connections on one thread.
func StartWrk(ns *testutil.Netns, url string, d time.Duration, conns int, keepAlive bool) (*Wrk, error) {
	args := []string{"--net=" + ns.Path(), "wrk", "-t1", "-c" + strconv.Itoa(conns),
		"-d" + strconv.Itoa(int(d.Seconds())) + "s", "--timeout", "2s"}
	if !keepAlive {
		args = append(args, "-H", "Connection: close")
	}
	w := &Wrk{done: make(chan struct{})}
	w.cmd = exec.Command("nsenter", append(args, url)...)
	w.cmd.Stdout, w.cmd.Stderr = &w.out, &w.out
	if err := w.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start wrk: %w", err)
	}
	go func() {
		w.err = w.cmd.Wait()
		close(w.done)
	}()
	return w, nil
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// Wait waits for wrk to finish and parses its report.
func (w *Wrk) Wait() (WrkResult, error) {
	<-w.done
	r := WrkResult{Output: w.out.String()}
	if w.err != nil {
		return r, fmt.Errorf("run wrk: %w: %s", w.err, r.Output)
	}
	m := wrkRequests.FindStringSubmatch(r.Output)
	if m == nil {
		return r, fmt.Errorf("parse wrk output: %s", r.Output)
	}
	r.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	if m := wrkSocket.FindStringSubmatch(r.Output); m != nil {
		r.Connect, _ = strconv.ParseInt(m[1], 10, 64)
		r.Read, _ = strconv.ParseInt(m[2], 10, 64)
		r.Write, _ = strconv.ParseInt(m[3], 10, 64)
		r.Timeout, _ = strconv.ParseInt(m[4], 10, 64)
	}
	if m := wrkNon2xx.FindStringSubmatch(r.Output); m != nil {
		r.Non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return r, nil
}
