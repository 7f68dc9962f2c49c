package pktgen

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// openNetns opens the namespace at path, or the calling thread's when path is empty (so a
// caller already inside a namespace, e.g. testutil's Netns.Do, is honoured).
func openNetns(path string) (netns.NsHandle, error) {
	if path == "" {
		h, err := netns.Get()
		if err != nil {
			return netns.None(), fmt.Errorf("get current netns: %w", err)
		}
		return h, nil
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return netns.None(), fmt.Errorf("open netns %s: %w", path, err)
	}
	return h, nil
}

// lockInto locks the goroutine to its thread and moves the thread into ns. The thread is
// never unlocked: it keeps the namespace (and whatever affinity the caller sets), so the
// runtime discards it when the goroutine ends instead of reusing it elsewhere.
func lockInto(ns netns.NsHandle) error {
	runtime.LockOSThread()
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("enter netns: %w", err)
	}
	return nil
}

// inNetns runs fn on a thread of its own inside the namespace at path ("" = the calling thread's).
func inNetns(path string, fn func() error) error {
	ns, err := openNetns(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	errc := make(chan error, 1)
	go func() {
		if err := lockInto(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}
