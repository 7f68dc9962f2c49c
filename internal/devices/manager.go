package devices

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
)

// Manager keeps the datapath attached to the selected devices. Reconcile is called from one
// goroutine (the agent's sync loop); Names may be called from any.
type Manager struct {
	DP *datapath.Datapath
	// Explicit are the --devices names; empty means detect (Detect with NodeIPs()).
	Explicit []string
	XDP      datapath.XDPMode
	TC       datapath.TCMode
	// NodeIPs returns this node's addresses from its Node object (nil while unknown).
	NodeIPs func() []netip.Addr
	// Pods: also keep the pod programs on the pods' devices (DetectPods), from EnablePods on.
	// Off, a previous agent's pod programs are removed at the first Reconcile.
	Pods bool
	Log  *zap.Logger

	mu       sync.Mutex
	attached map[string]*datapath.Attachment
	missing  map[string]bool // explicit devices reported missing, so each is logged once
	// clean: nothing changed since the last Reconcile that succeeded (no netlink event, the
	// same Node addresses), so the next one has nothing to do. Invalidate clears it.
	clean   atomic.Bool
	lastIPs []netip.Addr
	// podsOn: EnablePods was called. podFailed: pods' devices whose attach failed, each
	// warned of once.
	podsOn    atomic.Bool
	podFailed map[string]bool
}

// Invalidate makes the next Reconcile look at the devices again: call it when netlink reports a
// change (Watch).
func (m *Manager) Invalidate() { m.clean.Store(false) }

// EnablePods starts following the pods' devices (with Pods), once the NICs are known for sure:
// before the Node's addresses are read, a NIC that is a veth into another namespace and holds
// no default route would look like a pod's. Until then a previous agent's pod programs keep
// serving, untouched.
func (m *Manager) EnablePods() {
	if m.Pods && !m.podsOn.Swap(true) {
		m.Invalidate()
	}
}

// Reconcile attaches to selected devices that lack the programs (new, or re-created under a
// new ifindex) and detaches from devices no longer selected. It reports whether the set
// changed. It looks only when something may have changed (Invalidate, or other Node
// addresses), so calling it before every sync costs nothing; a device that failed to attach is
// retried at the next call.
func (m *Manager) Reconcile() (changed bool, err error) {
	var ips []netip.Addr
	if m.NodeIPs != nil {
		ips = m.NodeIPs()
	}
	// Cleared before the look, so that an event during it is not lost.
	if m.clean.Swap(true) && slices.Equal(ips, m.lastIPs) {
		return false, nil
	}
	m.lastIPs = ips
	defer func() {
		if err != nil {
			m.clean.Store(false) // retry with the next sync
		}
	}()
	want, err := m.selected(ips)
	if err != nil {
		return false, err
	}
	var pods []string
	if m.Pods && m.podsOn.Load() {
		if pods, err = DetectPods(want, ips); err != nil {
			return false, err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	if m.attached == nil {
		m.attached = map[string]*datapath.Attachment{}
		// Pods deleted while no agent ran took their programs with them; not their pins.
		if n, err := m.DP.PruneDeadLinks(); err != nil {
			errs = append(errs, err)
		} else if n > 0 {
			m.Log.Info("Unpinned the links of devices that are gone", zap.Int("links", n))
		}
		if !m.Pods {
			if n, err := m.DP.DetachPodPrograms(); err != nil {
				errs = append(errs, err)
			} else if n > 0 {
				m.Log.Info("Removed the pod programs a previous agent left on pods' devices", zap.Int("programs", n))
			}
		}
	}
	podsBefore := m.podCount()
	for name, a := range m.attached {
		role := want
		if a.Pod {
			role = pods
		}
		if idx, ok := ifindex(name); ok && idx == a.Ifindex && slices.Contains(role, name) {
			continue
		}
		// Gone, re-created, or no longer selected: its programs (if the device still
		// exists) come off, and its pinned links go.
		if err := a.Detach(); err != nil && exists(name) {
			errs = append(errs, err)
		}
		delete(m.attached, name)
		if a.Pod {
			m.Log.Debug("Detached from pod device", zap.String("device", name))
			continue
		}
		for _, f := range []lb.Family{lb.IPv4, lb.IPv6} {
			if err := m.DP.SetDeviceAddress(a.Ifindex, f, netip.Addr{}); err != nil {
				errs = append(errs, err)
			}
		}
		changed = true
		m.Log.Info("Detached", zap.String("device", name))
	}
	m.attachPods(pods)
	if n := m.podCount(); n != podsBefore {
		m.Log.Info("Pod devices", zap.Int("attached", n))
	}
	for _, name := range want {
		if m.attached[name] != nil {
			continue
		}
		a, xdpErr, err := m.DP.Attach(name, m.XDP, m.TC)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m.attached[name] = a
		changed = true
		if xdpErr != nil {
			m.Log.Warn("XDP did not attach: ingress runs at tc", zap.String("device", name), zap.Error(xdpErr))
		}
		if a.Caveat != "" {
			m.Log.Warn("XDP mode forced where auto would not choose it", zap.String("device", name), zap.String("xdp", string(a.XDP)),
				zap.String("driver", a.Facts.Driver), zap.String("mustGuarantee", a.Caveat))
		}
		m.Log.Info("Attached", zap.String("device", name), zap.String("xdp", string(a.XDP)), zap.String("tc", a.TC),
			zap.String("driver", a.Facts.Driver), zap.String("kind", a.Facts.Kind), zap.String("reason", a.Reason.String()),
			zap.String("why", datapath.ReasonText(a.Reason, a.Facts)))
	}
	// Tunnels come and go without being selected: traffic routed into one needs the kernel.
	if err := m.DP.MarkL3Devices(); err != nil {
		errs = append(errs, err)
	}
	// Addresses change without the device set changing (this look was caused by something).
	for name, a := range m.attached {
		if a.Pod {
			continue
		}
		for _, f := range []lb.Family{lb.IPv4, lb.IPv6} {
			addr, _ := datapath.PrimaryAddress(name, f)
			if err := m.DP.SetDeviceAddress(a.Ifindex, f, addr); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return changed, fmt.Errorf("attach devices: %w", err)
	}
	return changed, nil
}

// selected are the devices the datapath should be on now.
func (m *Manager) selected(ips []netip.Addr) ([]string, error) {
	if len(m.Explicit) == 0 {
		return Detect(ips)
	}
	present, missing := Existing(m.Explicit)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.missing == nil {
		m.missing = map[string]bool{}
	}
	for _, n := range missing {
		if !m.missing[n] {
			m.Log.Warn("Device named in --devices does not exist: attached when it appears", zap.String("device", n))
			m.missing[n] = true
		}
	}
	for _, n := range present {
		delete(m.missing, n)
	}
	return present, nil
}

// attachPods attaches the pod programs to the pods' devices that lack them. A device that
// fails is warned of once and retried with the next sync, and fails nothing else: the NICs'
// service goes on (a CNI's own `ingress` qdisc on a pre-6.6 kernel refuses clsact).
func (m *Manager) attachPods(pods []string) {
	if m.podFailed == nil {
		m.podFailed = map[string]bool{}
	}
	for name := range m.podFailed {
		if !slices.Contains(pods, name) {
			delete(m.podFailed, name)
		}
	}
	for _, name := range pods {
		if m.attached[name] != nil {
			continue
		}
		a, err := m.DP.AttachPod(name, m.TC)
		if err != nil {
			m.clean.Store(false)
			if exists(name) && !m.podFailed[name] { // (a pod gone meanwhile is no failure)
				m.podFailed[name] = true
				m.Log.Warn("Could not attach to a pod's device: its pod's service traffic is not translated unless a socket hook does; retrying",
					zap.String("device", name), zap.Error(err))
			}
			continue
		}
		delete(m.podFailed, name)
		m.attached[name] = a
		m.Log.Debug("Attached to pod device", zap.String("device", name), zap.String("tc", a.TC))
	}
}

func (m *Manager) podCount() int {
	n := 0
	for _, a := range m.attached {
		if a.Pod {
			n++
		}
	}
	return n
}

// Attachments returns the current attachments to NICs (not to pods' devices), sorted by
// device name.
func (m *Manager) Attachments() []*datapath.Attachment {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*datapath.Attachment, 0, len(m.attached))
	for _, a := range m.attached {
		if !a.Pod {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b *datapath.Attachment) int { return strings.Compare(a.Device, b.Device) })
	return out
}

// PodDevices returns the pods' devices the pod programs are attached to, sorted.
func (m *Manager) PodDevices() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for name, a := range m.attached {
		if a.Pod {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Names returns the NICs the datapath is attached to.
func (m *Manager) Names() []string {
	var out []string
	for _, a := range m.Attachments() {
		out = append(out, a.Device)
	}
	return out
}

// Release lets go of every attachment and leaves the programs running, for the next agent.
func (m *Manager) Release() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, a := range m.attached {
		a.Release()
	}
	m.attached = nil
}

// Watch calls changed (coalesced over 100 ms) whenever a link, an address or a route of the
// namespace changes, until ctx ends.
func Watch(ctx context.Context, changed func()) error {
	done := make(chan struct{})
	defer close(done)
	links := make(chan netlink.LinkUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 64)
	errc := make(chan error, 3)
	onErr := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to link changes: %w", err)
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to address changes: %w", err)
	}
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to route changes: %w", err)
	}
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return fmt.Errorf("watch devices: %w", err)
		case _, ok := <-links:
			if !ok {
				return errors.New("watch devices: link subscription closed")
			}
		case _, ok := <-addrs:
			if !ok {
				return errors.New("watch devices: address subscription closed")
			}
		case _, ok := <-routes:
			if !ok {
				return errors.New("watch devices: route subscription closed")
			}
		case <-timer:
			timer = nil
			changed()
			continue
		}
		if timer == nil {
			timer = time.After(100 * time.Millisecond)
		}
	}
}

func ifindex(name string) (int, bool) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, false
	}
	return l.Attrs().Index, true
}

func exists(name string) bool {
	_, ok := ifindex(name)
	return ok
}
