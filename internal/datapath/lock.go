package datapath

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrPinPathLocked is LockPinPath's answer while another agent holds the directory.
var ErrPinPathLocked = errors.New("another sluice-agent holds this --bpffs")

// LockPinPath takes an exclusive lock on the pin directory (flock on the directory itself:
// bpffs holds no regular files), so that two agents never program one set of maps, each
// undoing the other's writes. The kernel drops the lock when the process ends, however it
// ends. Returns ErrPinPathLocked, at once, while another process holds it; release unlocks.
func LockPinPath(dir string) (release func(), err error) {
	if err := EnsureBPFFS(dir); err != nil {
		return nil, err
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: %w", dir, ErrPinPathLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}
