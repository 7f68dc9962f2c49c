package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// Global flags go anywhere on the line, as kubectl's and bpftool's do: users type
// `sluicectl service list -o json`.
func TestGlobalFlagsAnywhere(t *testing.T) {
	f := newFixture(t)
	for _, args := range [][]string{
		{"--bpffs", f.dir, "-o", "json", "service", "list"},
		{"service", "list", "-o", "json", "--bpffs", f.dir},
		{"service", "--bpffs=" + f.dir, "list", "-o=json"},
		{"-o", "json", "ct", "list", "--count", "--bpffs", f.dir},
	} {
		var out, errOut bytes.Buffer
		code := 0
		must := f.node.Do(func() error { code = Run(args, &out, &errOut); return nil })
		if must != nil || code != 0 {
			t.Errorf("sluicectl %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
			continue
		}
		var v any
		if err := json.Unmarshal(out.Bytes(), &v); err != nil {
			t.Errorf("sluicectl %s: not JSON: %v\n%s", strings.Join(args, " "), err, out.String())
		}
	}
	// A subcommand's own flag is still its own, and a bad one is still refused.
	if _, errOut, code := f.runCode(t, "ct", "list", "--nope"); code == 0 || !strings.Contains(errOut, "nope") {
		t.Errorf("unknown flag: exit %d, %q", code, errOut)
	}
}
