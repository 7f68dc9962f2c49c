package agent

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
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
