package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluicelb/sluice/internal/testutil"
)

func command(ctx context.Context, ns *testutil.Netns, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + ns.Path()}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// startLocked starts cmd from a thread locked for the command's lifetime and returns its
// Wait. The kernel sends Pdeathsig when the thread that forked the child ends, and Go ends
// threads whose goroutine exits while locked (the namespace helpers do that): started from
// an ordinary goroutine, a child could be killed at any moment.
func startLocked(cmd *exec.Cmd) (wait func() error, err error) {
	started := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return func() error { return <-done }, nil
}

// runLocked runs cmd (see startLocked) and returns its combined output, or only its stdout.
func runLocked(cmd *exec.Cmd, combined bool) ([]byte, error) {
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	if combined {
		cmd.Stderr = &out
	}
	wait, err := startLocked(cmd)
	if err != nil {
		return nil, err
	}
	err = wait()
	if err != nil && !combined {
		err = fmt.Errorf("%w: %s", err, tail(errb.String(), 500))
	}
	return out.Bytes(), err
}

// runIperf runs one iperf3 TCP stream from the client to addr for secs seconds.
func runIperf(ctx context.Context, client *testutil.Netns, addr netip.AddrPort, secs int) (*Iperf, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs+20)*time.Second)
	defer cancel()
	out, err := runLocked(command(ctx, client, "iperf3", "-c", addr.Addr().String(), "-p", strconv.Itoa(int(addr.Port())),
		"-t", strconv.Itoa(secs), "-J"), false)
	var rep struct {
		End struct {
			SumSent struct {
				Seconds       float64 `json:"seconds"`
				BitsPerSecond float64 `json:"bits_per_second"`
				Retransmits   int     `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Seconds       float64 `json:"seconds"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if jerr := json.Unmarshal(out, &rep); jerr != nil {
		return nil, fmt.Errorf("iperf3 to %v: %v (%v): %s", addr, err, jerr, tail(string(out), 1000))
	}
	if rep.Error != "" || err != nil {
		return nil, fmt.Errorf("iperf3 to %v: %v %s", addr, err, rep.Error)
	}
	return &Iperf{Gbps: rep.End.SumReceived.BitsPerSecond / 1e9, SentGbps: rep.End.SumSent.BitsPerSecond / 1e9,
		Retransmits: rep.End.SumSent.Retransmits, Seconds: rep.End.SumReceived.Seconds}, nil
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in ([0-9.]+)(us|ms|s|m)`)
	wrkRPS      = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkPct      = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s|m)\s*$`)
)

func unitMillis(v float64, unit string) float64 {
	switch unit {
	case "us":
		return v / 1e3
	case "s":
		return v * 1e3
	case "m":
		return v * 60e3
	}
	return v
}

// runWrk runs wrk from the client against url: keep-alive connections, or "Connection: close"
// (a new connection, so a new flow through the datapath, per request).
func runWrk(ctx context.Context, client *testutil.Netns, url string, secs, conns int, keepAlive bool) (*Wrk, error) {
	return runWrkCmd(ctx, func(ctx context.Context, args ...string) *exec.Cmd { return command(ctx, client, args...) }, url, secs, conns, keepAlive)
}

// runWrkCmd is runWrk with the command made by cmd (in a namespace, a cgroup).
func runWrkCmd(ctx context.Context, cmd func(context.Context, ...string) *exec.Cmd, url string, secs, conns int, keepAlive bool) (*Wrk, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs+20)*time.Second)
	defer cancel()
	args := []string{"wrk", "-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(secs) + "s", "--timeout", "2s", "--latency"}
	if !keepAlive {
		args = append(args, "-H", "Connection: close")
	}
	out, err := runLocked(cmd(ctx, append(args, url)...), true)
	s := string(out)
	if err != nil {
		return nil, fmt.Errorf("wrk %s: %v: %s", url, err, tail(s, 1000))
	}
	w, err := parseWrk(s)
	if err != nil {
		return nil, err
	}
	w.KeepAlive, w.Connections = keepAlive, conns
	return w, nil
}

// parseWrk reads wrk's report (with --latency).
func parseWrk(s string) (*Wrk, error) {
	w := &Wrk{}
	m := wrkRequests.FindStringSubmatch(s)
	r := wrkRPS.FindStringSubmatch(s)
	if m == nil || r == nil {
		return nil, fmt.Errorf("parse wrk output: %s", s)
	}
	w.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	secsRun, _ := strconv.ParseFloat(m[2], 64)
	w.Seconds = unitMillis(secsRun, m[3]) / 1e3
	w.RPS, _ = strconv.ParseFloat(r[1], 64)
	for _, p := range wrkPct.FindAllStringSubmatch(s, -1) {
		v, _ := strconv.ParseFloat(p[2], 64)
		if p[1] == "50" {
			w.P50ms = unitMillis(v, p[3])
		} else {
			w.P99ms = unitMillis(v, p[3])
		}
	}
	var detail []string
	if m := wrkSocket.FindStringSubmatch(s); m != nil {
		for i, name := range []string{"connect", "read", "write", "timeout"} {
			n, _ := strconv.ParseInt(m[i+1], 10, 64)
			w.Errors += n
			if n > 0 {
				detail = append(detail, fmt.Sprintf("%s %d", name, n))
			}
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(s); m != nil {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		w.Errors += n
		detail = append(detail, fmt.Sprintf("non-2xx %d", n))
	}
	w.ErrorDetail = strings.Join(detail, ", ")
	return w, nil
}

func (w *Wrk) String() string {
	if w == nil {
		return "-"
	}
	s := fmt.Sprintf("%.0f req/s, p50 %.2f ms, p99 %.2f ms", w.RPS, w.P50ms, w.P99ms)
	if w.Errors > 0 {
		s += fmt.Sprintf(", %d errors (%s)", w.Errors, w.ErrorDetail)
	}
	return s
}
