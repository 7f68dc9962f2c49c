package datapath

import "path/filepath"

// procFS is where the node's procfs is mounted. In a container the runtime mounts /proc/sys
// read-only (and runc refuses bind mounts inside /proc), so the DaemonSet mounts the node's
// /proc/sys/net elsewhere and says where with SetProcFS, as Cilium's --procfs does.
var procFS = "/proc"

// SetProcFS says where the node's procfs is (default /proc). Call it before anything else here.
func SetProcFS(p string) { procFS = p }

// sysctlPath is the file of a sysctl key under the node's procfs ("net/ipv4/ip_forward").
func sysctlPath(key string) string { return filepath.Join(procFS, "sys", key) }
