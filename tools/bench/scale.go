package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

// runScale runs tools/scale (the control plane's measurement: N services through a real
// kube-apiserver, the agent's cold start to all of them in the maps, EndpointSlice update to
// map latency, RSS) and takes its JSON report.
func runScale(ctx context.Context, cfg *config) (*ControlPlane, error) {
	if _, err := os.Stat(cfg.scaleBin); err != nil {
		return nil, fmt.Errorf("%w (build it: go build -o bin/ ./tools/scale)", err)
	}
	logf("control plane: %s --services %d --endpoints %d --updates %d", cfg.scaleBin, cfg.scaleServices, cfg.scaleEndpoints, cfg.scaleUpdates)
	cmd := exec.CommandContext(ctx, cfg.scaleBin, "--agent", cfg.agentBin, "--services", strconv.Itoa(cfg.scaleServices),
		"--endpoints", strconv.Itoa(cfg.scaleEndpoints), "--updates", strconv.Itoa(cfg.scaleUpdates))
	// Its own process group: on an interrupt its API server, etcd and agent go with it (its
	// lab's namespaces stay; `ip netns` lists them as sl-<id>-*).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		logf("  scale: %s", sc.Text())
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.scaleBin, err)
	}
	var cp ControlPlane
	if err := json.Unmarshal(stdout.Bytes(), &cp); err != nil {
		return nil, fmt.Errorf("parse %s's report: %w: %s", cfg.scaleBin, err, stdout.String())
	}
	return &cp, nil
}
