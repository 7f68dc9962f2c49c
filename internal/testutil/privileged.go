package testutil

import (
	"os"
	"testing"
)

// RequirePrivileges stops a test that needs root and BPF: it fails when CI is set (a CI run
// that silently skipped the datapath would prove nothing) and skips otherwise.
func RequirePrivileges(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this test needs root (CAP_BPF, CAP_NET_ADMIN) and CI is set")
	}
	t.Skip("needs root; set CI to make this a failure")
}
