package cluster

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// run runs a short command and returns its error with its output.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("run %s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func runArgv(argv []string) error { return run(argv[0], argv[1:]...) }

// inNS prefixes a command so that it runs in a network namespace and, if mnt is set, in a
// node's mount namespace. nsenter, not `ip netns exec`: that one remounts /sys, which hides the
// cgroup hierarchies the kubelet and runc need.
func inNS(netns, mnt string, argv ...string) []string {
	a := []string{"nsenter", "--net=/run/netns/" + netns}
	if mnt != "" {
		a = append(a, "--mount="+mnt)
	}
	return append(append(a, "--"), argv...)
}

// daemon starts argv detached (its own session, not our child once we exit), its output in
// log, and records its PID in pidfile. Down finds daemons by namespace and cgroup as well, so
// a lost pidfile leaks nothing.
func daemon(log, pidfile string, env []string, argv ...string) error {
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log %s: %w", log, err)
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", filepath.Base(argv[len(argv)-1]), err)
	}
	pid := cmd.Process.Pid
	// Reap it if it dies while we run (our exit hands it to init).
	go func() { _ = cmd.Wait() }()
	return os.WriteFile(pidfile, []byte(strconv.Itoa(pid)), 0o644)
}

// alive says whether pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// pidsWhere lists the running processes (other than us) for which match says yes.
func pidsWhere(match func(pid int) bool) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || !alive(pid) {
			continue
		}
		if match(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// nsInode is the inode of a namespace file (0 if it cannot be read).
func nsInode(path string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Ino
}

// kill signals every process match selects, TERM first and KILL after grace, until none is
// left; it waits at most a minute.
func kill(match func(pid int) bool, grace time.Duration) error {
	sig := syscall.SIGTERM
	start := time.Now()
	for {
		pids := pidsWhere(match)
		if len(pids) == 0 {
			return nil
		}
		if time.Since(start) > grace {
			sig = syscall.SIGKILL
		}
		if time.Since(start) > time.Minute {
			return fmt.Errorf("stop processes: %v still running", pids)
		}
		for _, p := range pids {
			_ = syscall.Kill(p, sig)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// readPid reads a pidfile (0 if there is none).
func readPid(p string) int {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

var errNotReady = errors.New("not ready")

// waitFor polls fn every interval until it returns nil or timeout passes; the error says what
// was awaited and the last reason.
func waitFor(what string, timeout time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for %s (%s): %w", what, timeout, err)
		}
		time.Sleep(time.Second)
	}
}
