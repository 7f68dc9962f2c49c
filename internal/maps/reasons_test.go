package maps_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/internal/maps"
)

// Every reason the datapath counts has a label, and the label is the C name: REASON_X is
// "x" on /metrics, in sluicectl and in the README, so a grep for either finds the other.
func TestReasonLabelsAreTheCNames(t *testing.T) {
	src, err := os.ReadFile("../../bpf/lib/maps.h")
	if err != nil {
		t.Fatal(err)
	}
	body := string(src)
	body = body[strings.Index(body, "enum reason {"):]
	body = body[:strings.Index(body, "};")]
	names := regexp.MustCompile(`(?m)^\s*(REASON_[A-Z0-9_]+)`).FindAllStringSubmatch(body, -1)
	if len(names) < 2 || names[len(names)-1][1] != "REASON_MAX" {
		t.Fatalf("could not read enum reason: %v", names)
	}
	names = names[:len(names)-1]
	if len(names) != len(maps.ReasonNames) {
		t.Errorf("%d reasons in C, %d labels in Go", len(names), len(maps.ReasonNames))
	}
	for i, n := range names {
		want := strings.ToLower(strings.TrimPrefix(n[1], "REASON_"))
		if got := maps.ReasonNames[maps.Reason(i)]; got != want {
			t.Errorf("reason %d (%s) is labelled %q, want %q", i, n[1], got, want)
		}
	}
}
