/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* maps.h: every map and every struct shared with Go. bpf2go generates the Go mirror of each
 * struct (sluice<Name> in internal/datapath); internal/maps wraps them in typed Go values.
 * Sizes here are defaults: the agent sets max_entries from its flags before load.
 * All maps are pinned by name under the agent's --bpffs directory. */
#ifndef SLUICE_MAPS_H
#define SLUICE_MAPS_H

#include "addr.h"

/* Frontend: an address (a node's, a ClusterIP, an external or load-balancer IP) and port.
 * Go: datapath.SluiceFrontendKey */
struct frontend_key {
	addr_t addr;
	__be16 port;
	__u8 proto;
	__u8 scope; /* FE_SCOPE_*: which clients the entry is for */
};

/* FE_SCOPE_ALL entries serve every client. Where clients on the node (its processes and its
 * pods) must get other backends than packets from outside (a NodePort with
 * externalTrafficPolicy Local: kube-proxy gives traffic that starts on the node all of the
 * service's endpoints), a FE_SCOPE_SOCK entry for the same address says which service they
 * get: the socket hooks and the pod devices' path look it up first (lb_frontend_node), the
 * NICs' path never. Agents before this byte had a name left it 0. */
#define FE_SCOPE_ALL 0
#define FE_SCOPE_SOCK 1

#define FE_F_AFFINITY 0x01      /* sessionAffinity ClientIP: see sluice_affinity */
#define FE_F_DROP_EMPTY 0x02    /* count == 0 drops instead of rejecting (externalTrafficPolicy
				 * Local with endpoints only on other nodes, as kube-proxy) */
#define FE_F_SOURCE_RANGES 0x04 /* loadBalancerSourceRanges: new flows only from
				 * sluice_source_ranges prefixes */
#define FE_F_MAGLEV 0x08        /* pick with the service's Maglev table, not a random slot */

/* Go: datapath.SluiceFrontend. count == 0 means "no usable endpoint": reject (or drop). */
struct frontend {
	__u32 svc_id;     /* one per service port; keys slots and stats */
	__u16 count;      /* backends in slots 1..count */
	__u16 flags;      /* FE_F_* */
	__u32 affinity_timeout_s; /* FE_F_AFFINITY: sessionAffinityConfig.clientIP.timeoutSeconds */
	addr_t snat_addr; /* the node address remote backends see (0: the frontend's own). A
			   * load-balancer or external IP may not route back to this node. */
};

/* A service's slot: slots 1..count each name one backend. Go: datapath.SluiceSlotKey */
struct slot_key {
	__u32 svc_id;
	__u32 slot;
};

#define BACKEND_F_LOCAL 0x01       /* a pod on this node: DNAT only, delivered by the stack */
#define BACKEND_F_TERMINATING 0x02 /* serving but terminating (for tools; not read here) */

/* Go: datapath.SluiceBackend */
struct backend {
	addr_t addr;
	__be16 port;
	__u8 flags;
	__u8 pad;
};

/* A connection table key: the packet's tuple as it is seen at that hook. Go: datapath.SluiceCtKey */
struct ct_key {
	addr_t saddr;
	addr_t daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

#define CT_F_INGRESS 0x01  /* applies to packets arriving on a device (XDP, tc ingress) */
#define CT_F_EGRESS 0x02   /* applies to packets leaving a device (tc egress) */
#define CT_F_LOCAL 0x04    /* a flow to a local backend: translated packets go to the stack */
#define CT_F_REPLY 0x08    /* the reverse entry of a flow */
#define CT_F_CLOSING 0x10  /* TCP: RST, or FIN both ways: short timeout (both entries) */
#define CT_F_SYN 0x20      /* TCP: not answered yet: SYN timeout (both entries) */
#define CT_F_FIN 0x40      /* TCP: this direction sent FIN */
#define CT_F_KERNEL 0x80   /* a flow the kernel NATs, tracked so that its port stays its own
			    * (hostnat.h): replies go to the stack */
#define CT_F_STATE (CT_F_CLOSING | CT_F_SYN) /* kept equal on both entries */

/* A connection table entry: the tuple the packet gets. Go: datapath.SluiceCtEntry */
struct ct_entry {
	addr_t nat_saddr;
	addr_t nat_daddr;
	__be16 nat_sport;
	__be16 nat_dport;
	__u32 svc_id;
	__u32 backend_id;
	__u8 flags;
	__u8 pad[3];
	__u64 last_seen; /* bpf_ktime_get_ns() */
};

/* Per-service counters (per CPU). Go: datapath.SluiceSvcStats */
struct svc_stats {
	__u64 packets;        /* client -> service */
	__u64 bytes;
	__u64 reply_packets;  /* backend -> client */
	__u64 reply_bytes;
	__u64 rejected;       /* no endpoint: RST / ICMP sent */
};

/* Why a packet was not simply translated. Indexes the per-CPU counters map. The PASS_ reasons
 * are packets left to the kernel untouched; the DROP_ reasons are packets dropped. */
enum reason {
	REASON_PASS_MALFORMED = 0,  /* truncated or bad IPv4/TCP/UDP header */
	REASON_PASS_FRAGMENT,       /* IPv4 fragment of no flow we know (its first fragment not
				     * seen or not ours), or of SCTP: passed untouched */
	REASON_PASS_TO_TC,          /* XDP left it to tc: next hop unresolved, VLAN tag, or an
				     * egress device XDP cannot transmit on */
	REASON_PASS_NO_FLOW,        /* TCP segment other than SYN (SCTP packet without INIT) to a
				     * frontend, no flow: the kernel answers it (only a SYN opens
				     * a flow) */
	REASON_REJECT_TCP_RST,          /* no endpoint: TCP RST sent */
	REASON_REJECT_ICMP_UNREACHABLE,          /* no endpoint: ICMP port unreachable sent (UDP, SCTP) */
	REASON_DROP_SNAT_EXHAUSTED, /* no free SNAT port to this backend */
	REASON_DROP_NO_BACKEND,     /* slot or backend missing (agent mid-update) */
	REASON_DROP_NO_ROUTE,            /* no route to the backend or client */
	REASON_DROP_FRAG_NEEDED,    /* larger than the next hop's MTU, DF clear, and no sluice0 to
				     * hand it to the kernel through (REASON_FRAG_BY_STACK) */
	REASON_DROP_TTL_EXCEEDED,            /* TTL would reach 0 */
	REASON_DROP_REJECT_FAILED,  /* could not build the RST / ICMP reply */
	REASON_DROP_CT_COLLISION,   /* a local backend's reply tuple is held by another flow */
	REASON_DROP_SOURCE_RANGE,   /* source outside the service's loadBalancerSourceRanges */
	REASON_DROP_NO_LOCAL_ENDPOINT,       /* externalTrafficPolicy Local, no endpoint on this node */
	REASON_CT_PEER_LOST,        /* not a verdict: a live flow's other entry was gone (the
				     * LRU evicted it from a full table) and was recreated */
	REASON_ICMP_RELATED,        /* not a drop: an ICMP error about a translated flow,
				     * translated for the flow's other end (conntrack's RELATED) */
	REASON_ICMP_FRAG_NEEDED_SENT,    /* larger than the next hop's MTU with DF set: "fragmentation
				     * needed" with that MTU sent back to the sender, as a router */
	REASON_FRAG_BY_STACK,       /* not a drop: larger than the next hop's MTU without DF:
				     * translated and handed to the kernel (through sluice0), which
				     * fragments it as it forwards */
	REASON_KERNEL_FLOW_MOVED,   /* not a drop: a flow the kernel NATs to a backend left by a port
				     * a sluice flow to it holds; moved to a free one (hostnat.h) */
	REASON_KERNEL_FLOW_UNTRACKED, /* such a flow found no free port to be tracked under: left
				       * as it is, it may meet a sluice flow's tuple */
	REASON_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct frontend_key);
	__type(value, struct frontend);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct slot_key);
	__type(value, __u32);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct backend);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_backends SEC(".maps");

static __always_inline bool port_bit(void *map, __be16 port_be)
{
	__u16 port = bpf_ntohs(port_be);
	__u32 word = port >> 5;
	__u32 *w = bpf_map_lookup_elem(map, &word);
	return w && (*w & (1U << (port & 31)));
}

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 524288);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ct SEC(".maps");

/* The IPv4 datagrams of translated flows that arrive in fragments: the ports their first
 * fragment carried, so that the later ones (no L4 header) follow the same flow. Keyed as the
 * kernel's reassembly (RFC 791): source, destination, protocol, identification.
 * Go: datapath.SluiceFragKey */
struct frag_key {
	addr_t saddr;
	addr_t daddr;
#ifdef SLUICE_IPV6
	__be32 id; /* the fragment header's */
	__u8 proto;
	__u8 pad[3];
#else
	__be16 id;
	__u8 proto;
	__u8 pad;
#endif
};

/* Go: datapath.SluiceFragPorts */
struct frag_ports {
	__be16 sport;
	__be16 dport;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_ports);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_frags SEC(".maps");

/* Session affinity (ClientIP): a client's backend per service. Go: datapath.SluiceAffinityKey */
struct affinity_key {
	__u32 svc_id;
	addr_t client;
};

/* Go: datapath.SluiceAffinity */
struct affinity {
	__u32 backend_id;
	__u32 pad;
	__u64 last_seen; /* bpf_ktime_get_ns() of the client's last new flow, as kube-proxy's
			  * `recent` match: the timeout counts from the last connection */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct affinity_key);
	__type(value, struct affinity);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_affinity SEC(".maps");

/* The backends of each affinity service, so a remembered backend that left the service is not
 * used again (backend IDs are shared between services). Go: datapath.SluiceAffinityMatch */
struct affinity_match {
	__u32 svc_id;
	__u32 backend_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct affinity_match);
	__type(value, __u8);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_affinity_match SEC(".maps");

/* loadBalancerSourceRanges: prefixes allowed per service. The LPM key is the service ID
 * followed by the address, so prefixlen = 32 + the CIDR's bits. Go: datapath.SluiceSourceRange */
struct source_range {
	__u32 prefixlen;
	__u32 svc_id; /* big endian: compared bytewise as the prefix's first 32 bits */
	addr_t addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct source_range);
	__type(value, __u8);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_source_ranges SEC(".maps");

/* Maglev: per service, an array of cfg_maglev_size backend IDs, swapped in whole by the agent
 * (a new inner map per change), so a packet sees either the old table or the new one. */
struct maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 16381);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct maglev_inner);
} sluice_maglev SEC(".maps");

/* What the agent tells inspection tools about a service ID; the datapath never reads it.
 * Go: datapath.SluiceSvcInfo */
struct svc_info {
	char name[144];       /* namespace/name:port, NUL-terminated: Kubernetes' limits (63 + 1 +
			       * 63 + 1 + 15) fit whole (112 bytes until v0.3 cut long names into one) */
	__u16 node_port;
	__u8 proto;
	__u8 flags;           /* bit 0 policy Local, bits 1-2 scope, bit 3 IPv6 (Go: maps.ServiceInfo) */
	__u32 pad;
	__u64 updated_ns;     /* unix time of the last change */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct svc_info);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_svc_info SEC(".maps");

#define AGENT_MAX_DEVICES 8

/* A device the agent attached to. Go: datapath.SluiceDeviceInfo */
struct device_info {
	__u32 ifindex;
	__u32 xdp_prog_id;      /* 0: no XDP */
	__u32 tc_ingress_prog_id;
	__u32 tc_egress_prog_id;
	__u8 xdp_mode;          /* 0 off, 1 native, 2 generic */
	__u8 tc_mode;           /* 1 tcx, 2 clsact */
	__u8 xdp_reason;        /* why that XDP mode: Go datapath.ModeReason */
	__u8 pad;
	char name[16];
};

/* The running agent, for `sluicectl prog show`. Go: datapath.SluiceAgentInfo */
struct agent_info {
	char version[32];
	char object[16];        /* short hash of the BPF object the agent loaded */
	__u64 started_ns;       /* unix time */
	__u32 pid;
	__u32 ndevices;
	struct device_info devices[AGENT_MAX_DEVICES];
	/* The settings the programs were loaded with, so a trace copy behaves the same. */
	__u16 snat_port_min;
	__u16 snat_port_max;
	__u32 ct_tcp_timeout_s;
	__u32 ct_close_timeout_s;
	__u32 ct_syn_timeout_s;
	__u32 ct_udp_timeout_s;
	__u32 snat_reuse_s;
	__u32 max_services;
	__u32 maglev_size;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct agent_info);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_agent SEC(".maps");

/* What a trace run decided, written only by a program loaded with cfg_trace (each load has
 * its own, unpinned). Go: datapath.SluiceTraceRecord */
enum trace_stage {
	TRACE_NONE = 0,
	TRACE_NOT_OURS,        /* not IPv4 TCP/UDP, or a port that is no NodePort / SNAT port */
	TRACE_PARSE,           /* malformed or fragment: see reason */
	TRACE_TO_TC,           /* XDP leaves it to tc: see reason */
	TRACE_ESTABLISHED,     /* a flow's forward entry */
	TRACE_REPLY,           /* a flow's reverse entry */
	TRACE_NO_FRONTEND,     /* no frontend for the address and port: the node's */
	TRACE_REJECT,          /* no endpoint: RST / ICMP */
	TRACE_NO_FLOW,         /* TCP non-SYN without a flow: the kernel's */
	TRACE_NEW_FLOW,        /* a new flow: backend picked */
	TRACE_DROP,            /* see reason */
	TRACE_RELATED,         /* an ICMP error about a flow: translated for it */
	TRACE_TOO_BIG,         /* over the next hop's MTU: "fragmentation needed" sent (DF), or
			        * handed to the kernel to fragment */
};

struct trace_record {
	__u32 stage;
	__u32 reason;          /* enum reason + 1, 0 if none */
	__u32 svc_id;
	__u32 backend_id;
	addr_t nat_saddr;
	addr_t nat_daddr;
	__be16 nat_sport;
	__be16 nat_dport;
	__u32 flags;           /* CT_F_* of the entry or new flow */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, enum trace_stage); /* puts the enum in BTF; only key 0 is used */
	__type(value, struct trace_record);
	__uint(max_entries, 1);
} sluice_trace SEC(".maps");

static __always_inline struct trace_record *trace_rec(void)
{
	__u32 zero = 0;
	if (!cfg_trace)
		return 0;
	return bpf_map_lookup_elem(&sluice_trace, &zero);
}

static __always_inline void trace_stage(__u32 stage)
{
	struct trace_record *t = trace_rec();
	if (t)
		t->stage = stage;
}

static __always_inline void trace_flow(__u32 stage, const struct ct_entry *e)
{
	struct trace_record *t = trace_rec();
	if (!t)
		return;
	t->stage = stage;
	t->svc_id = e->svc_id;
	t->backend_id = e->backend_id;
	t->nat_saddr = e->nat_saddr;
	t->nat_daddr = e->nat_daddr;
	t->nat_sport = e->nat_sport;
	t->nat_dport = e->nat_dport;
	t->flags = e->flags;
}

/* Port bitmaps, one bit per port, so traffic that cannot be ours is passed after one array
 * lookup instead of a clock read and two hash lookups. Written by the agent, set-only while it
 * runs (a bit outliving its service keeps established flows translated; it only costs speed). */
#define PORT_WORDS (65536 / 32)

/* Destination ports of frontends (NodePorts). SNAT ports are a range checked in code. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, PORT_WORDS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_frontend_ports SEC(".maps");

/* Source ports of backends: local ones' replies are restored at tc egress, remote ones' replies
 * at ingress (to a SNAT port). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, PORT_WORDS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_backend_ports SEC(".maps");

/* The device through which tc hands the kernel a translated packet the kernel must fragment
 * (sluice0, a veth the agent creates with accept_local: the packet's source is a node
 * address). ifindex 0: none. Go: datapath.SluiceStackDev */
struct stack_dev {
	__u32 ifindex;
	__u8 mac[6];
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct stack_dev);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_stack_dev SEC(".maps");

/* The IPv4 address of each device sluice runs on, by ifindex: a flow to a remote backend that
 * leaves by that device is SNATed to it, so the backend's replies come back by a device
 * sluice translates on. Go: ifindex uint32 -> address (network order) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, addr_t);
	__uint(max_entries, 256);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_device_addrs SEC(".maps");

#define DEVICE_F_XDP_NATIVE 0x01 /* XDP runs natively there: a valid XDP redirect target */
#define DEVICE_F_L3 0x02 /* no link-layer header (tunl0, wg0, a tun): leave the next hop to the kernel */

/* The devices the agent attached to, and the node's L3 devices, by ifindex. Go: flags as
 * uint32 (datapath.deviceXDPNative, deviceL3). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 256);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_devices SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct svc_stats);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_svc_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, enum reason); /* 4 bytes, as an array key must be; puts the enum in BTF */
	__type(value, __u64);
	__uint(max_entries, REASON_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_reasons SEC(".maps");

#endif
