package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/tools/controlplane"
)

func describeMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	m.Hostname, _ = os.Hostname()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		if strings.Contains(string(b), " hypervisor") {
			m.Hypervisor = "yes"
		}
	}
	if b, err := os.ReadFile("/sys/class/dmi/id/sys_vendor"); err == nil && m.Hypervisor != "" {
		m.Hypervisor = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.Atoi(f[1])
				m.MemoryMB = kb / 1024
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.LoadAvg = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	if out, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil {
		m.Dirty = len(strings.TrimSpace(string(out))) > 0
	}
	// The version build.sh built (kube-proxy --version says the same since it stamps it).
	if b, err := os.ReadFile(filepath.Join(controlplane.Bin(), ".version")); err == nil {
		m.KubeProxy = "kube-proxy " + strings.TrimSpace(string(b)) + " (built from source by tools/controlplane)"
	}
	if out, err := exec.Command("iptables", "--version").Output(); err == nil {
		m.Iptables = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("nft", "--version").Output(); err == nil {
		m.Nft = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("iperf3", "--version").Output(); err == nil {
		m.Iperf3 = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	if out, _ := exec.Command("wrk", "--version").CombinedOutput(); len(out) > 0 {
		m.Wrk = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	return m
}
