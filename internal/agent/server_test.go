package agent

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// An error line is one line: the message, the object and the error, no stack trace.
func TestLoggerWritesNoStackTraces(t *testing.T) {
	var buf bytes.Buffer
	log, err := newLoggerTo("info", zapcore.AddSync(&buf))
	if err != nil {
		t.Fatal(err)
	}
	log.Named("sync").Error("Skipping invalid object", zap.String("object", "Service default/a"), zap.Error(errors.New("nodePort 30300/TCP already used")))
	log.Debug("not at info")
	out := strings.TrimSpace(buf.String())
	if strings.Count(out, "\n") != 0 || !strings.Contains(out, "Skipping invalid object") || !strings.Contains(out, "sync") ||
		!strings.Contains(out, "Service default/a") || !strings.Contains(out, "server_test.go") {
		t.Errorf("logged:\n%s", out)
	}
	if _, err := newLoggerTo("loud", zapcore.AddSync(&buf)); err == nil {
		t.Error("a bad level was accepted")
	}
}

// client-go's errors (klog) reach the agent's log.
func TestClientGoLogsIntoTheAgentsLog(t *testing.T) {
	var buf bytes.Buffer
	log, err := newLoggerTo("info", zapcore.AddSync(&buf))
	if err != nil {
		t.Fatal(err)
	}
	RouteKlog(log)
	klog.ErrorS(errors.New("forbidden: User cannot list endpointslices"), "Failed to watch", "reflector", "EndpointSlice")
	klog.V(4).InfoS("chatter below info")
	klog.Flush()
	out := buf.String()
	if !strings.Contains(out, "client-go") || !strings.Contains(out, "Failed to watch") || !strings.Contains(out, "forbidden") {
		t.Errorf("logged:\n%s", out)
	}
	if strings.Contains(out, "chatter") {
		t.Errorf("klog's verbose lines reach the info log:\n%s", out)
	}
}

// A hybrid host's /sys/fs/cgroup, mounted whole, is found through its unified/; a directory
// in no cgroup v2 hierarchy is refused with the flag's name.
func TestCgroup2Dir(t *testing.T) {
	unified := ""
	for _, d := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(d, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC && unified == "" {
			unified = d
		}
	}
	if unified != "" {
		if got, err := cgroup2Dir(unified); err != nil || got != unified {
			t.Errorf("%s: %q %v", unified, got, err)
		}
	}
	if unified == "/sys/fs/cgroup/unified" {
		if got, err := cgroup2Dir("/sys/fs/cgroup"); err != nil || got != unified {
			t.Errorf("/sys/fs/cgroup: %q %v, want %s", got, err, unified)
		}
	}
	if _, err := cgroup2Dir(t.TempDir()); err == nil || !strings.Contains(err.Error(), "--socket-lb-cgroup") {
		t.Errorf("a plain directory: %v", err)
	}
}
