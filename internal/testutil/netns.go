package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// Netns is a named network namespace (/var/run/netns/NAME), so that `ip netns exec` and
// `nsenter --net=/var/run/netns/NAME` reach it too.
type Netns struct {
	Name string
}

// UniqueName returns prefix plus a short random suffix, to keep concurrent labs apart.
func UniqueName(prefix string) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// NewNetns creates a named namespace with loopback up.
func NewNetns(name string) (*Netns, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("add netns %s: %v: %s", name, err, out)
	}
	n := &Netns{Name: name}
	if _, err := n.Exec("ip", "link", "set", "lo", "up"); err != nil {
		n.Delete()
		return nil, err
	}
	return n, nil
}

// NewTestNetns creates a namespace removed when the test ends.
func NewTestNetns(t testing.TB, prefix string) *Netns {
	t.Helper()
	n, err := NewNetns(UniqueName(prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Delete)
	return n
}

// Delete removes the namespace; processes still inside keep it alive until they exit.
func (n *Netns) Delete() {
	_ = exec.Command("ip", "netns", "delete", n.Name).Run()
}

// Path is the bind mount that names the namespace.
func (n *Netns) Path() string { return "/var/run/netns/" + n.Name }

// Exec runs a command inside the namespace and returns its combined output.
func (n *Netns) Exec(args ...string) (string, error) {
	full := append([]string{"netns", "exec", n.Name}, args...)
	out, err := exec.Command("ip", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("run %q in %s: %v: %s", strings.Join(args, " "), n.Name, err, out)
	}
	return string(out), nil
}

// MustExec runs a command in the namespace and fails the test if it fails.
func (n *Netns) MustExec(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Exec(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Do runs fn on an OS thread that has entered the namespace. Sockets fn creates belong to the
// namespace and can be used from any goroutine afterwards.
func (n *Netns) Do(fn func() error) error {
	target, err := netns.GetFromName(n.Name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", n.Name, err)
	}
	defer target.Close()

	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: if switching back failed it would carry the wrong
		// namespace, so the runtime discards it when the goroutine exits.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", n.Name, err)
			return
		}
		err = fn()
		if serr := netns.Set(orig); serr == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}
