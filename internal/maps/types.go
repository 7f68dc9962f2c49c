// Package maps gives the agent and the CLI typed, Go-native access to the datapath's maps
// (netip addresses, host-order ports) over the structs bpf2go generates, behind an interface
// with a real implementation on the kernel's maps and a fake one for unit tests.
package maps

import (
	"net/netip"

	"github.com/sluicelb/sluice/internal/datapath"
	"github.com/sluicelb/sluice/internal/lb"
)

// AffinityMatch says backend BackendID serves service ServiceID, so that a client's
// remembered backend is used only while it does.
type AffinityMatch struct {
	ServiceID, BackendID uint32
}

// SourceRange is a prefix allowed to open flows to a service (loadBalancerSourceRanges).
type SourceRange struct {
	ServiceID uint32
	Prefix    netip.Prefix
}

// SlotKey names slot n (1-based) of a service.
type SlotKey struct {
	ServiceID uint32
	Slot      uint32
}

// ServiceStats are a service's counters summed over CPUs.
type ServiceStats struct {
	Packets, Bytes           uint64
	ReplyPackets, ReplyBytes uint64
	Rejected                 uint64
}

// Reason is a datapath counter of packets not simply translated.
type Reason = datapath.SluiceReason

// ReasonNames names each counter, in the datapath's order.
var ReasonNames = map[Reason]string{
	datapath.SluiceReasonREASON_PASS_MALFORMED:          "pass_malformed",
	datapath.SluiceReasonREASON_PASS_FRAGMENT:           "pass_fragment",
	datapath.SluiceReasonREASON_PASS_TO_TC:              "pass_to_tc",
	datapath.SluiceReasonREASON_PASS_NO_FLOW:            "pass_no_flow",
	datapath.SluiceReasonREASON_REJECT_TCP_RST:          "reject_tcp_rst",
	datapath.SluiceReasonREASON_REJECT_ICMP_UNREACHABLE: "reject_icmp_unreachable",
	datapath.SluiceReasonREASON_DROP_SNAT_EXHAUSTED:     "drop_snat_exhausted",
	datapath.SluiceReasonREASON_DROP_NO_BACKEND:         "drop_no_backend",
	datapath.SluiceReasonREASON_DROP_NO_ROUTE:           "drop_no_route",
	datapath.SluiceReasonREASON_DROP_FRAG_NEEDED:        "drop_frag_needed",
	datapath.SluiceReasonREASON_DROP_CT_COLLISION:       "drop_ct_collision",
	datapath.SluiceReasonREASON_DROP_TTL_EXCEEDED:       "drop_ttl_exceeded",
	datapath.SluiceReasonREASON_DROP_REJECT_FAILED:      "drop_reject_failed",
	datapath.SluiceReasonREASON_DROP_SOURCE_RANGE:       "drop_source_range",
	datapath.SluiceReasonREASON_DROP_NO_LOCAL_ENDPOINT:  "drop_no_local_endpoint",
	datapath.SluiceReasonREASON_CT_PEER_LOST:            "ct_peer_lost",
	datapath.SluiceReasonREASON_ICMP_RELATED:            "icmp_related",
	datapath.SluiceReasonREASON_ICMP_FRAG_NEEDED_SENT:   "icmp_frag_needed_sent",
	datapath.SluiceReasonREASON_FRAG_BY_STACK:           "frag_by_stack",
	datapath.SluiceReasonREASON_KERNEL_FLOW_MOVED:       "kernel_flow_moved",
	datapath.SluiceReasonREASON_KERNEL_FLOW_UNTRACKED:   "kernel_flow_untracked",
}

// Maps is what the reconciler writes and restores from. Every write is idempotent.
type Maps interface {
	UpdateFrontend(lb.FrontendKey, lb.Frontend) error
	DeleteFrontend(lb.FrontendKey) error
	UpdateSlot(SlotKey, uint32) error
	DeleteSlot(SlotKey) error
	UpdateBackend(uint32, lb.Backend) error
	DeleteBackend(uint32) error
	// SetFrontendPort and SetBackendPort mark a port in the datapath's prefilter bitmaps: the
	// destination port of a frontend, the source port of a local backend's replies. Bits are
	// never cleared while the agent runs: a bit outliving its service keeps that service's
	// established flows translated, and costs nothing but the full lookup.
	SetFrontendPort(uint16) error
	SetBackendPort(uint16) error
	// UpdateServiceInfo and DeleteServiceInfo keep the names sluicectl shows.
	UpdateServiceInfo(uint32, ServiceInfo) error
	DeleteServiceInfo(uint32) error
	// ResetServiceStats zeroes a service ID's counters when the ID is given to a new service.
	ResetServiceStats(uint32) error

	// Policy: session affinity's backend sets, loadBalancerSourceRanges and Maglev tables.
	UpdateAffinityMatch(AffinityMatch) error
	DeleteAffinityMatch(AffinityMatch) error
	UpdateSourceRange(SourceRange) error
	DeleteSourceRange(SourceRange) error
	// UpdateMaglev swaps in a service's whole table (backend IDs), atomically.
	UpdateMaglev(svcID uint32, table []uint32) error
	DeleteMaglev(svcID uint32) error
	// FlushFlows deletes the flows of proto to each (service, endpoint) pair in gone.
	FlushFlows(proto lb.Proto, gone map[FlowTarget]bool) (int, error)

	Frontends() (map[lb.FrontendKey]lb.Frontend, error)
	Slots() (map[SlotKey]uint32, error)
	Backends() (map[uint32]lb.Backend, error)
	ServiceInfos() (map[uint32]ServiceInfo, error)
	AffinityMatches() (map[AffinityMatch]bool, error)
	SourceRanges() (map[SourceRange]bool, error)
	// MaglevTables returns each service's Maglev table.
	MaglevTables() (map[uint32][]uint32, error)
}
