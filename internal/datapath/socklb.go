package datapath

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// SocketLB is the socket-level load balancer (bpf/sock.c): cgroup sock_addr programs that
// point a connect() or unconnected sendmsg() to a frontend straight at a backend, for the
// clients whose packets never cross a device sluice is attached to (the node's processes, its
// pods reaching the node's own addresses). It reads the packet path's frontends, slots and
// backends: the reconciler writes once for both. Linux 5.8+ (getpeername4); sluice's floor,
// 5.10, has every hook and helper it uses.
type SocketLB struct {
	objs sockObjects
	// objs6 are the IPv6 hooks (bpf/sock6.c), once LoadSocketLB6 loaded them.
	objs6 *sock6Objects
	// Localhost: NodePorts are served on loopback to the host namespace's processes.
	Localhost bool
	// vars are the settings the programs were loaded with, for IPv6's to get the same.
	vars map[string]any
}

// SocketLBConfig are the socket programs' settings.
type SocketLBConfig struct {
	// LocalhostNodePorts serves NodePorts on 127.0.0.0/8 to the processes of the loader's
	// network namespace (the node's), as kube-proxy's iptables mode does (its nftables mode
	// does not). It needs SO_NETNS_COOKIE (Linux 5.14) to learn the namespace: before, off.
	LocalhostNodePorts bool
	// HostNamespaceOnly balances the sockets of the loader's network namespace only, not
	// pods' (Cilium's bpf-lb-sock-hostns-only). Linux 5.14, as above: before, an error.
	HostNamespaceOnly bool
}

// sockObjects are what LoadAndAssign loads of bpf/sock.c: its programs and the maps they use
// that are their own; the rest are the packet path's.
type sockObjects struct {
	Connect4     *ebpf.Program `ebpf:"sluice_connect4"`
	Sendmsg4     *ebpf.Program `ebpf:"sluice_sendmsg4"`
	Recvmsg4     *ebpf.Program `ebpf:"sluice_recvmsg4"`
	Getpeername4 *ebpf.Program `ebpf:"sluice_getpeername4"`
	PostBind4    *ebpf.Program `ebpf:"sluice_post_bind4"`
	Revnat       *ebpf.Map     `ebpf:"sluice_sock_revnat"`
	Affinity     *ebpf.Map     `ebpf:"sluice_sock_affinity"`
}

// sock6Objects are bpf/sock6.c's programs and the map of its own; its other maps are IPv6's
// packet path's and the IPv4 socket programs'.
type sock6Objects struct {
	Connect6     *ebpf.Program `ebpf:"sluice_connect6"`
	Sendmsg6     *ebpf.Program `ebpf:"sluice_sendmsg6"`
	Recvmsg6     *ebpf.Program `ebpf:"sluice_recvmsg6"`
	Getpeername6 *ebpf.Program `ebpf:"sluice_getpeername6"`
	PostBind6    *ebpf.Program `ebpf:"sluice_post_bind6"`
	Revnat6      *ebpf.Map     `ebpf:"sluice_sock_revnat6"`
}

// sockShared are the packet path's maps the socket programs read.
func (d *Datapath) sockShared() map[string]*ebpf.Map {
	m := d.Objs.SluiceMaps
	return map[string]*ebpf.Map{
		SluiceMapSluiceFrontends:     m.SluiceFrontends,
		SluiceMapSluiceSlots:         m.SluiceSlots,
		SluiceMapSluiceBackends:      m.SluiceBackends,
		SluiceMapSluiceAffinityMatch: m.SluiceAffinityMatch,
		SluiceMapSluiceMaglev:        m.SluiceMaglev,
	}
}

// LoadSocketLB loads the socket programs against d's maps; its own maps are pinned beside d's.
func (d *Datapath) LoadSocketLB(c SocketLBConfig) (*SocketLB, error) {
	spec, err := LoadSluiceSock()
	if err != nil {
		return nil, fmt.Errorf("load socket spec: %w", err)
	}
	sizeMaps(spec, d.Config)
	if d.Config.PinPath == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	if err := spec.Variables[SluiceSockVarCfgMaglevSize].Set(d.Config.MaglevSize); err != nil {
		return nil, fmt.Errorf("set %s: %w", SluiceSockVarCfgMaglevSize, err)
	}
	// Refusing a connect() to a frontend with no endpoint needs bpf_set_retval (5.18).
	refuse := uint8(0)
	if canSetRetval() {
		refuse = 1
	}
	if err := spec.Variables[SluiceSockVarCfgSetRetval].Set(refuse); err != nil {
		return nil, fmt.Errorf("set %s: %w", SluiceSockVarCfgSetRetval, err)
	}
	s := &SocketLB{vars: map[string]any{SluiceSockVarCfgMaglevSize: d.Config.MaglevSize, SluiceSockVarCfgSetRetval: refuse}}
	if c.LocalhostNodePorts || c.HostNamespaceOnly {
		cookie, err := netnsCookie()
		if err != nil {
			return nil, err
		}
		if cookie == 0 && c.HostNamespaceOnly {
			return nil, errors.New("load socket programs: balancing the host namespace only needs Linux 5.14 (SO_NETNS_COOKIE) to tell it from pods'")
		}
		s.Localhost = cookie != 0 && c.LocalhostNodePorts
		for name, v := range map[string]any{SluiceSockVarCfgHostNetnsCookie: cookie,
			SluiceSockVarCfgLocalhost: boolU8(s.Localhost), SluiceSockVarCfgHostnsOnly: boolU8(c.HostNamespaceOnly)} {
			if err := spec.Variables[name].Set(v); err != nil {
				return nil, fmt.Errorf("set %s: %w", name, err)
			}
			s.vars[name] = v
		}
	}
	opts := &ebpf.CollectionOptions{
		Maps:            ebpf.MapOptions{PinPath: d.Config.PinPath},
		MapReplacements: d.sockShared(),
	}
	if err := spec.LoadAndAssign(&s.objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load socket programs: %+v", ve)
		}
		return nil, fmt.Errorf("load socket programs: %w", err)
	}
	return s, nil
}

// LoadSocketLB6 loads the IPv6 socket programs into s, on the IPv6 datapath's frontends and
// backends and s's session affinity, with s's settings: AttachSocketLB then attaches them too.
// Without the IPv6 datapath (LoadIPv6), on an IPv4-only node, they balance IPv4-mapped
// addresses only: an IPv6 socket reaching an IPv4 service (Java's, by default) must be
// balanced there too, and the IPv6 maps they would read are empty stubs.
func (d *Datapath) LoadSocketLB6(s *SocketLB) error {
	spec, err := LoadSluiceSock6()
	if err != nil {
		return fmt.Errorf("load IPv6 socket spec: %w", err)
	}
	sizeMaps(spec, d.Config)
	if d.Config.PinPath == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	if d.v6 == nil {
		for name, m := range spec.Maps {
			// Not pinned: a pin named like the IPv6 datapath's would say it is loaded
			// (sluicectl, the next agent). The reverse table is the socket programs' own.
			if strings.HasSuffix(name, "6") && name != SluiceSock6MapSluiceSockRevnat6 {
				m.Pinning, m.MaxEntries = ebpf.PinNone, 1
			}
		}
	}
	for name, v := range s.vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	shared := d.sockShared()
	delete(shared, SluiceMapSluiceFrontends)
	delete(shared, SluiceMapSluiceBackends)
	if d.v6 != nil {
		shared[Sluice6MapSluiceFrontends6] = d.v6.Objs.SluiceFrontends6
		shared[Sluice6MapSluiceBackends6] = d.v6.Objs.SluiceBackends6
	}
	shared[SluiceSockMapSluiceSockAffinity] = s.objs.Affinity // keyed by service ID: both families'
	// IPv4-mapped addresses on IPv6 sockets are balanced on IPv4's entries (bpf/lib/sock4in6.h).
	shared[SluiceSock6MapSluiceFrontends4] = d.Objs.SluiceFrontends
	shared[SluiceSock6MapSluiceBackends4] = d.Objs.SluiceBackends
	for name, m := range shared {
		if ms := spec.Maps[name]; ms != nil {
			ms.MaxEntries = m.MaxEntries()
		}
	}
	var o sock6Objects
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: d.Config.PinPath}, MapReplacements: shared}
	if err := spec.LoadAndAssign(&o, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("load IPv6 socket programs: %+v", ve)
		}
		return fmt.Errorf("load IPv6 socket programs: %w", err)
	}
	s.objs6 = &o
	return nil
}

type sockHook struct {
	name string
	typ  ebpf.AttachType
	prog *ebpf.Program
}

// sockHooks are the attach types, in the order they are attached: the reverse hooks first,
// so that no socket is pointed at a backend before its replies can be shown as the frontend.
func (s *SocketLB) sockHooks() []sockHook {
	hooks := []sockHook{
		{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, s.objs.Recvmsg4},
		{"getpeername4", ebpf.AttachCgroupInet4GetPeername, s.objs.Getpeername4},
		{"connect4", ebpf.AttachCGroupInet4Connect, s.objs.Connect4},
		{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, s.objs.Sendmsg4},
		{"post_bind4", ebpf.AttachCGroupInet4PostBind, s.objs.PostBind4},
	}
	if o := s.objs6; o != nil {
		hooks = append(hooks, sock6Hooks(o)...)
	}
	return hooks
}

func sock6Hooks(o *sock6Objects) []sockHook {
	return []sockHook{
		{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, o.Recvmsg6},
		{"getpeername6", ebpf.AttachCgroupInet6GetPeername, o.Getpeername6},
		{"connect6", ebpf.AttachCGroupInet6Connect, o.Connect6},
		{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, o.Sendmsg6},
		{"post_bind6", ebpf.AttachCGroupInet6PostBind, o.PostBind6},
	}
}

// AttachSocketLB attaches the programs to the cgroup v2 at cgroup: every socket created by a process
// in it or below is balanced. The links are pinned (links/cgroup_<hook>) and taken over by the
// next agent, as the devices' are, so sockets are balanced across restarts and upgrades.
func (d *Datapath) AttachSocketLB(s *SocketLB, cgroup string) error {
	for _, h := range s.sockHooks() {
		h := h
		l, err := attachLink(d.linkPath("cgroup", h.name), h.prog, func() (link.Link, error) {
			return link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: h.typ, Program: h.prog})
		})
		if err != nil {
			return fmt.Errorf("attach %s to cgroup %s: %w", h.name, cgroup, err)
		}
		if d.Config.PinPath != "" {
			l.Close() // the pin holds it
		} else {
			d.sockLinks = append(d.sockLinks, l)
		}
	}
	return nil
}

// DetachSocketLB removes the socket programs' links (pinned, by a previous agent too, or not).
func (d *Datapath) DetachSocketLB() {
	for _, h := range (&SocketLB{objs6: &sock6Objects{}}).sockHooks() {
		unpinLink(d.linkPath("cgroup", h.name))
	}
	for _, l := range d.sockLinks {
		l.Close()
	}
	d.sockLinks = nil
}

// Revnat is the reverse map: which frontend each translated socket asked for, by cookie and
// backend (sockterm finds the sockets to end in it).
func (s *SocketLB) Revnat() *ebpf.Map { return s.objs.Revnat }

// Revnat6 is the IPv6 socket programs' reverse map (IPv6 and IPv4-mapped backends), nil
// unless LoadSocketLB6 loaded them.
func (s *SocketLB) Revnat6() *ebpf.Map {
	if s.objs6 == nil {
		return nil
	}
	return s.objs6.Revnat6
}

// Close releases the programs' and maps' descriptors; attached links and pins stay.
func (s *SocketLB) Close() error {
	err := errors.Join(s.objs.Connect4.Close(), s.objs.Sendmsg4.Close(), s.objs.Recvmsg4.Close(),
		s.objs.Getpeername4.Close(), s.objs.PostBind4.Close(), s.objs.Revnat.Close(), s.objs.Affinity.Close())
	if o := s.objs6; o != nil {
		err = errors.Join(err, o.Connect6.Close(), o.Sendmsg6.Close(), o.Recvmsg6.Close(), o.Getpeername6.Close(),
			o.PostBind6.Close(), o.Revnat6.Close())
	}
	return err
}

// DetachSocketLB6 removes the IPv6 socket programs' links only (an agent with IPv6 off).
func (d *Datapath) DetachSocketLB6() {
	for _, h := range sock6Hooks(&sock6Objects{}) {
		unpinLink(d.linkPath("cgroup", h.name))
	}
}

// canSetRetval says whether cgroup sock_addr programs may call bpf_set_retval (Linux 5.18).
func canSetRetval() bool {
	return features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSetRetval) == nil
}

// netnsCookie is the calling thread's network namespace's cookie, or 0 where the kernel cannot
// tell it (SO_NETNS_COOKIE: Linux 5.14).
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("read network namespace cookie: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if errors.Is(err, unix.ENOPROTOOPT) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read network namespace cookie: %w", err)
	}
	return c, nil
}

func boolU8(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}
