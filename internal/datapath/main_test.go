package datapath_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/cilium/ebpf/rlimit"
	"github.com/sluicelb/sluice/internal/testutil"
)

// Tests that make maps without datapath.Load (the migration and verifier tests) need what Load
// does first on Linux before 5.11, where maps count against RLIMIT_MEMLOCK.
func TestMain(m *testing.M) {
	testutil.SockClientMain()
	if err := rlimit.RemoveMemlock(); err != nil && os.Geteuid() == 0 {
		fmt.Fprintln(os.Stderr, "raise the memlock limit:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}
