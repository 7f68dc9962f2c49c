package datapath_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/testutil"
)

// One agent per --bpffs: a second lock is refused while the first is held, and granted once
// it is released.
func TestLockPinPath(t *testing.T) {
	testutil.RequirePrivileges(t)
	dir := filepath.Join("/sys/fs/bpf", testutil.UniqueName("sl-lock-"))
	t.Cleanup(func() { os.RemoveAll(dir) })
	release, err := datapath.LockPinPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := datapath.LockPinPath(dir); !errors.Is(err, datapath.ErrPinPathLocked) {
		t.Fatalf("second lock: %v, want ErrPinPathLocked", err)
	}
	release()
	release2, err := datapath.LockPinPath(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	release2()
}
