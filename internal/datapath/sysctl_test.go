package datapath

import (
	"os"
	"path/filepath"
	"testing"
)

// A container's own /proc/sys is read-only: the agent reads and writes the node's net
// sysctls under the procfs the DaemonSet mounts elsewhere.
func TestSysctlsFollowTheProcFS(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sys/net/ipv4"), 0o755); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"ip_forward": "1\n", "ip_local_port_range": "32768\t60999\n"} {
		if err := os.WriteFile(filepath.Join(dir, "sys/net/ipv4", k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	SetProcFS(dir)
	t.Cleanup(func() { SetProcFS("/proc") })
	if ok, err := ForwardingEnabled(); err != nil || !ok {
		t.Errorf("ForwardingEnabled() = %v, %v; want true from %s", ok, err, dir)
	}
	if lo, hi, err := LocalPortRange(); err != nil || lo != 32768 || hi != 60999 {
		t.Errorf("LocalPortRange() = %d, %d, %v; want 32768, 60999", lo, hi, err)
	}
}
