package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Agent is a sluice-agent process running on node1. It is started with nsenter --net (not
// `ip netns exec`, which remounts /sys and would take the bpffs pins with it), so its pins
// live in the host's bpffs under PinDir and outlive it, as on a real node.
type Agent struct {
	cmd    *exec.Cmd
	PinDir string
	logs   *syncBuffer
	done   chan struct{}
	err    error
	// termIsExit: dying of SIGTERM is a clean stop (a process without a handler for it).
	termIsExit bool
}

// AgentOptions say how to run the agent.
type AgentOptions struct {
	Binary    string // path to sluice-agent
	Manifests string // folder of manifests
	XDPMode   string // auto, native, generic or off; "" leaves the agent's default
	// Devices is --devices; "" lets the agent find node1's device itself (eth0 carries the
	// default route).
	Devices string
	Extra   []string
	// Wrap runs the agent under another command (setpriv to drop capabilities, say).
	Wrap []string
}

// PinDir is where this lab's agent pins its maps.
func (l *Lab) PinDir() string { return "/sys/fs/bpf/sluice-lab-" + l.ID }

// StartAgent starts sluice-agent in node1's network namespace.
func (l *Lab) StartAgent(o AgentOptions) (*Agent, error) {
	bin, err := filepath.Abs(o.Binary)
	if err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	args := append(append([]string{"--net=" + l.Node1.Path()}, o.Wrap...), bin,
		"--manifests", o.Manifests, "--node-name", "node1", "--bpffs", l.PinDir())
	if o.Devices != "" {
		args = append(args, "--devices", o.Devices)
	}
	if o.XDPMode != "" {
		args = append(args, "--xdp-mode", o.XDPMode)
	}
	args = append(args, o.Extra...)
	a := &Agent{PinDir: l.PinDir(), logs: &syncBuffer{}, done: make(chan struct{})}
	a.cmd = exec.Command("nsenter", args...)
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start agent: %w", err)
	}
	go func() {
		a.err = a.cmd.Wait()
		close(a.done)
	}()
	return a, nil
}

// Logs returns everything the agent printed so far.
func (a *Agent) Logs() string { return a.logs.String() }

// Exited reports whether the agent process has ended.
func (a *Agent) Exited() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM and waits for the agent to exit (SIGKILL after 10 s).
func (a *Agent) Stop() error {
	if a.Exited() {
		return a.err
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
		return fmt.Errorf("stop agent: no exit 10 s after SIGTERM")
	}
	var ee *exec.ExitError
	if a.termIsExit && errors.As(a.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
			return nil
		}
	}
	return a.err
}

// RemovePins deletes the lab's pinned maps (the lab, not the agent, owns their lifetime).
func (l *Lab) RemovePins() error {
	if err := os.RemoveAll(l.PinDir()); err != nil {
		return fmt.Errorf("remove pins: %w", err)
	}
	return nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// PID is the agent's process ID (nsenter execs it in place).
func (a *Agent) PID() int { return a.cmd.Process.Pid }

// Kill ends the agent with SIGKILL, as a crash would.
func (a *Agent) Kill() {
	if a.Exited() {
		return
	}
	_ = a.cmd.Process.Kill()
	<-a.done
}

// Cleanup runs `sluice-agent --cleanup` on node1: detach and remove the pins (from every
// device: no --devices).
func (l *Lab) Cleanup(binary string) (string, error) {
	bin, err := filepath.Abs(binary)
	if err != nil {
		return "", err
	}
	out, err := exec.Command("nsenter", "--net="+l.Node1.Path(), bin, "--cleanup", "--bpffs", l.PinDir()).CombinedOutput()
	return string(out), err
}
