package datapath

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Config holds the settings the object is loaded with: map sizes and the program constants.
// The zero value of a field means its default (Defaults()).
type Config struct {
	// PinPath is the bpffs directory the maps are pinned in; empty loads unpinned maps
	// (tests, and `trace`, which passes live maps in through Replacements).
	PinPath string

	MaxFrontends uint32
	MaxServices  uint32 // also the size of the per-service stats array: svc_id < MaxServices
	MaxSlots     uint32
	MaxBackends  uint32
	MaxConntrack uint32
	MaxAffinity  uint32 // session affinity entries (an LRU: the oldest clients go first)
	// MaglevSize is the entries of each Maglev table: a prime (maglev.ValidTableSize).
	MaglevSize uint32

	SNATPortMin, SNATPortMax uint16

	CTTCPTimeout   time.Duration
	CTCloseTimeout time.Duration
	CTSYNTimeout   time.Duration
	CTUDPTimeout   time.Duration
	// SNATReuse is how long a closed TCP flow's SNAT port stays unused (the backend's
	// TIME_WAIT).
	SNATReuse time.Duration

	// Trace loads the programs so that they write no conntrack entry.
	Trace bool
	// PodPrograms loads the pods' devices' programs (AttachPod); off, stubs stand in.
	PodPrograms bool
	// XDPIfindex fixes the ingress device the XDP program assumes, for BPF_PROG_TEST_RUN on
	// kernels before 5.14, which take no xdp_md (RunOnce); 0 for programs that are attached.
	XDPIfindex uint32
}

// Defaults are the agent's default flag values.
func Defaults() Config {
	return Config{
		MaxFrontends:   65536,
		MaxServices:    65536,
		MaxSlots:       262144,
		MaxBackends:    262144,
		MaxConntrack:   524288,
		MaxAffinity:    262144,
		MaglevSize:     16381,
		SNATPortMin:    1024,
		SNATPortMax:    29999,
		CTTCPTimeout:   6 * time.Hour,
		CTCloseTimeout: 10 * time.Second,
		CTSYNTimeout:   60 * time.Second,
		CTUDPTimeout:   60 * time.Second,
		SNATReuse:      60 * time.Second,
	}
}

func (c *Config) fill() {
	d := Defaults()
	set32 := func(v *uint32, def uint32) {
		if *v == 0 {
			*v = def
		}
	}
	set32(&c.MaxFrontends, d.MaxFrontends)
	set32(&c.MaxServices, d.MaxServices)
	set32(&c.MaxSlots, d.MaxSlots)
	set32(&c.MaxBackends, d.MaxBackends)
	set32(&c.MaxConntrack, d.MaxConntrack)
	set32(&c.MaxAffinity, d.MaxAffinity)
	set32(&c.MaglevSize, d.MaglevSize)
	if c.SNATPortMin == 0 && c.SNATPortMax == 0 {
		c.SNATPortMin, c.SNATPortMax = d.SNATPortMin, d.SNATPortMax
	}
	if c.CTTCPTimeout == 0 {
		c.CTTCPTimeout = d.CTTCPTimeout
	}
	if c.CTCloseTimeout == 0 {
		c.CTCloseTimeout = d.CTCloseTimeout
	}
	if c.CTUDPTimeout == 0 {
		c.CTUDPTimeout = d.CTUDPTimeout
	}
	if c.CTSYNTimeout == 0 {
		c.CTSYNTimeout = d.CTSYNTimeout
	}
	if c.SNATReuse == 0 {
		c.SNATReuse = d.SNATReuse
	}
}

// Validate reports settings the datapath cannot work with.
func (c Config) Validate() error {
	c.fill()
	if c.SNATPortMin == 0 || c.SNATPortMin > c.SNATPortMax {
		return fmt.Errorf("validate config: SNAT port range %d-%d is empty", c.SNATPortMin, c.SNATPortMax)
	}
	// The datapath counts in whole seconds.
	for name, d := range map[string]time.Duration{"TCP timeout": c.CTTCPTimeout, "close timeout": c.CTCloseTimeout,
		"SYN timeout": c.CTSYNTimeout, "UDP timeout": c.CTUDPTimeout, "SNAT reuse delay": c.SNATReuse} {
		if d < time.Second || d > 1<<31*time.Second {
			return fmt.Errorf("validate config: %s %v: want 1s or more", name, d)
		}
	}
	return nil
}

// Datapath is the loaded object.
type Datapath struct {
	Objs   SluiceObjects
	Config Config
	// Migration is set when pinned maps of another layout or size were copied into new ones:
	// call its Commit once the programs are attached.
	Migration *Migration
	// sockLinks hold an unpinned datapath's socket programs attached (tests).
	sockLinks []link.Link
	// v6 is the IPv6 datapath once loaded (LoadIPv6).
	v6 *IPv6
}

// Spec returns the collection spec configured by cfg, ready to load.
func Spec(cfg Config) (*ebpf.CollectionSpec, error) {
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	spec, err := LoadSluice()
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	if err := configure(spec, cfg); err != nil {
		return nil, err
	}
	if !cfg.PodPrograms {
		// Not followed: a stub under each name (TC_ACT_OK), so that the verifier, which
		// takes as long again for the pod path as for a NIC's ingress, is spared it.
		stubPrograms(spec, "sluice_tc_from_pod", "sluice_tc_to_pod")
	}
	return spec, nil
}

// configure sets what cfg says in a spec of either family's object: map sizes, pinning and the
// settings the programs read.
func configure(spec *ebpf.CollectionSpec, cfg Config) error {
	sizeMaps(spec, cfg)
	if cfg.PinPath == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	trace := uint8(0)
	if cfg.Trace {
		trace = 1
	}
	vars := map[string]any{
		SluiceVarCfgSnatPortMin:     cfg.SNATPortMin,
		SluiceVarCfgSnatPortMax:     cfg.SNATPortMax,
		SluiceVarCfgCtTcpTimeoutS:   uint32(cfg.CTTCPTimeout / time.Second),
		SluiceVarCfgCtCloseTimeoutS: uint32(cfg.CTCloseTimeout / time.Second),
		SluiceVarCfgCtUdpTimeoutS:   uint32(cfg.CTUDPTimeout / time.Second),
		SluiceVarCfgCtSynTimeoutS:   uint32(cfg.CTSYNTimeout / time.Second),
		SluiceVarCfgSnatReuseS:      uint32(cfg.SNATReuse / time.Second),
		SluiceVarCfgMaxServices:     cfg.MaxServices,
		SluiceVarCfgMaglevSize:      cfg.MaglevSize,
		SluiceVarCfgTrace:           trace,
		SluiceVarCfgXdpIfindex:      cfg.XDPIfindex,
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

// sizeMaps sets the maps' sizes from cfg, in any of the objects (the socket programs' shares
// the packet path's maps, which must be declared alike to be reused).
func sizeMaps(spec *ebpf.CollectionSpec, cfg Config) {
	sizes := map[string]uint32{
		SluiceMapSluiceFrontends: cfg.MaxFrontends,
		SluiceMapSluiceSvcStats:  cfg.MaxServices,
		SluiceMapSluiceSvcInfo:   cfg.MaxServices,
		SluiceMapSluiceSlots:     cfg.MaxSlots,
		SluiceMapSluiceBackends:  cfg.MaxBackends,
		SluiceMapSluiceCt:        cfg.MaxConntrack,
		SluiceMapSluiceAffinity:  cfg.MaxAffinity,
		// One entry per backend of each affinity service, like the slots.
		SluiceMapSluiceAffinityMatch: cfg.MaxSlots,
		SluiceMapSluiceMaglev:        cfg.MaxServices,
		// A socket client is a namespace: no more of them than of packet clients.
		SluiceSockMapSluiceSockAffinity: cfg.MaxAffinity,
		// IPv6's own (ipv6.go).
		Sluice6MapSluiceFrontends6: cfg.MaxFrontends,
		Sluice6MapSluiceBackends6:  cfg.MaxBackends,
		Sluice6MapSluiceCt6:        cfg.MaxConntrack,
		Sluice6MapSluiceAffinity6:  cfg.MaxAffinity,
	}
	for name, n := range sizes {
		if m := spec.Maps[name]; m != nil {
			m.MaxEntries = n
		}
	}
	if m := spec.Maps[SluiceMapSluiceMaglev]; m != nil {
		m.InnerMap.MaxEntries = cfg.MaglevSize
	}
}

// Load loads the object into the kernel, creating or reusing the pinned maps. replacements
// (optional) are live maps used instead of the object's own.
func Load(cfg Config, replacements map[string]*ebpf.Map) (*Datapath, error) {
	cfg.fill()
	// Before 5.11 BPF maps count against RLIMIT_MEMLOCK (often 64 KiB or 8 MiB), far below the
	// connection table's size; later kernels charge the memory cgroup and this does nothing.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise the memlock limit for BPF maps (Linux before 5.11): %w", err)
	}
	spec, err := Spec(cfg)
	if err != nil {
		return nil, err
	}
	dp := &Datapath{Config: cfg}
	if cfg.PinPath != "" && replacements == nil {
		if err := EnsureBPFFS(cfg.PinPath); err != nil {
			return nil, err
		}
		if dp.Migration, err = prepareMigration(spec, cfg.PinPath); err != nil {
			return nil, fmt.Errorf("load datapath: %w", err)
		}
	}
	opts := &ebpf.CollectionOptions{
		Maps:            ebpf.MapOptions{PinPath: cfg.PinPath},
		MapReplacements: replacements,
	}
	if err := spec.LoadAndAssign(&dp.Objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load datapath: %+v", ve)
		}
		if dp.Migration != nil {
			dp.Migration.close()
		}
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	if dp.Migration != nil {
		if err := dp.Migration.copyAll(&dp.Objs.SluiceMaps); err != nil {
			dp.Migration.close()
			dp.Objs.Close()
			return nil, fmt.Errorf("load datapath: %w", err)
		}
	}
	return dp, nil
}

// Close releases the object's file descriptors. Pinned maps stay.
func (d *Datapath) Close() error { return d.Objs.Close() }

// EnsureBPFFS makes sure dir lives on a mounted bpffs, mounting /sys/fs/bpf if needed.
func EnsureBPFFS(dir string) error {
	root := "/sys/fs/bpf"
	if rel, err := filepath.Rel(root, dir); err == nil && !filepath.IsAbs(rel) && rel != ".." && !startsWithDotDot(rel) {
		var st unix.Statfs_t
		if err := unix.Statfs(root, &st); err != nil {
			return fmt.Errorf("stat %s: %w", root, err)
		}
		if st.Type != unix.BPF_FS_MAGIC {
			if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
				return fmt.Errorf("mount bpffs on %s: %w", root, err)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("stat %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("check pin directory: %s is not on a bpf filesystem", dir)
	}
	return nil
}

func startsWithDotDot(rel string) bool {
	return len(rel) >= 3 && rel[:3] == "../"
}

// ObjectHash names the compiled BPF object: the agent records it, and sluicectl compares it
// with its own to tell a datapath built from other sources.
func ObjectHash() string {
	sum := sha256.Sum256(_SluiceBytes)
	return hex.EncodeToString(sum[:6])
}

// OpenPinned opens the maps an agent pinned in dir, for reading (sluicectl) or writing.
func OpenPinned(dir string, readOnly bool) (*SluiceMaps, error) {
	spec, err := LoadSluice()
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	m := &SluiceMaps{}
	opened := map[string]*ebpf.Map{}
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue // per-load maps (the trace record) are not pinned
		}
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), &ebpf.LoadPinOptions{ReadOnly: readOnly})
		if err != nil {
			for _, o := range opened {
				o.Close()
			}
			return nil, fmt.Errorf("open pinned map %s: %w", filepath.Join(dir, name), err)
		}
		opened[name] = mp
	}
	m.SluiceFrontends = opened[SluiceMapSluiceFrontends]
	m.SluiceSlots = opened[SluiceMapSluiceSlots]
	m.SluiceBackends = opened[SluiceMapSluiceBackends]
	m.SluiceCt = opened[SluiceMapSluiceCt]
	m.SluiceSvcStats = opened[SluiceMapSluiceSvcStats]
	m.SluiceReasons = opened[SluiceMapSluiceReasons]
	m.SluiceFrontendPorts = opened[SluiceMapSluiceFrontendPorts]
	m.SluiceBackendPorts = opened[SluiceMapSluiceBackendPorts]
	m.SluiceDevices = opened[SluiceMapSluiceDevices]
	m.SluiceSvcInfo = opened[SluiceMapSluiceSvcInfo]
	m.SluiceAgent = opened[SluiceMapSluiceAgent]
	m.SluiceAffinity = opened[SluiceMapSluiceAffinity]
	m.SluiceAffinityMatch = opened[SluiceMapSluiceAffinityMatch]
	m.SluiceSourceRanges = opened[SluiceMapSluiceSourceRanges]
	m.SluiceMaglev = opened[SluiceMapSluiceMaglev]
	return m, nil
}

// Pinned returns the live maps by name, to load a trace copy of the programs on them.
func (m *SluiceMaps) Pinned() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		SluiceMapSluiceFrontends: m.SluiceFrontends, SluiceMapSluiceSlots: m.SluiceSlots,
		SluiceMapSluiceBackends: m.SluiceBackends, SluiceMapSluiceCt: m.SluiceCt,
		SluiceMapSluiceSvcStats: m.SluiceSvcStats, SluiceMapSluiceReasons: m.SluiceReasons,
		SluiceMapSluiceFrontendPorts: m.SluiceFrontendPorts, SluiceMapSluiceBackendPorts: m.SluiceBackendPorts,
		SluiceMapSluiceDevices: m.SluiceDevices, SluiceMapSluiceSvcInfo: m.SluiceSvcInfo, SluiceMapSluiceAgent: m.SluiceAgent,
		SluiceMapSluiceAffinity: m.SluiceAffinity, SluiceMapSluiceAffinityMatch: m.SluiceAffinityMatch,
		SluiceMapSluiceSourceRanges: m.SluiceSourceRanges, SluiceMapSluiceMaglev: m.SluiceMaglev,
	}
}

// stubPrograms replaces the named programs of spec with TC_ACT_OK (see Spec).
func stubPrograms(spec *ebpf.CollectionSpec, names ...string) {
	for _, name := range names {
		if p := spec.Programs[name]; p != nil {
			p.Instructions = asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
		}
	}
}
