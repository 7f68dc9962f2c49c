package testutil

import (
	"testing"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/maps"
)

// KernelMaps loads an unpinned datapath with cfg for the test and returns its typed maps.
func KernelMaps(t testing.TB, cfg datapath.Config) *maps.Kernel {
	t.Helper()
	RequirePrivileges(t)
	dp, err := datapath.Load(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	return maps.NewKernel(&dp.Objs.SluiceMaps)
}
