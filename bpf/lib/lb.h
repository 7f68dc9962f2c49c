/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* lb.h: find the frontend a packet is for, and pick a backend for a new flow: a remembered one
 * (session affinity), a Maglev table entry by the flow's hash, or one random slot among the
 * service's `count`. Every way costs a fixed number of lookups, whatever the backend count. */
#ifndef SLUICE_LB_H
#define SLUICE_LB_H

#include "maps.h"
#include "parse.h"

static __always_inline struct frontend *lb_frontend(const struct pkt *p)
{
	struct frontend_key k = {
		.addr = p->daddr,
		.port = p->dport,
		.proto = p->proto,
	};
	return bpf_map_lookup_elem(&sluice_frontends, &k);
}

/* Whether p's source may open a flow to fe (loadBalancerSourceRanges). */
static __always_inline bool lb_source_allowed(const struct frontend *fe, const struct pkt *p)
{
	if (!(fe->flags & FE_F_SOURCE_RANGES))
		return true;
	struct source_range k = {
		.prefixlen = 64,
		.svc_id = bpf_htonl(fe->svc_id),
		.addr = p->saddr,
	};
	return bpf_map_lookup_elem(&sluice_source_ranges, &k) != 0;
}

#define rol32(v, s) (((v) << (s)) | ((v) >> (32 - (s))))

/* Bob Jenkins' final mix (the kernel's jhash_3words): the Maglev index of a flow. Every node
 * computes the same, so a flow lands on the same backend whichever node it reaches. */
static __always_inline __u32 lb_hash(__u32 a, __u32 b, __u32 c)
{
	a += 0xdeadbeef + 12;
	b += 0xdeadbeef + 12;
	c += 0xdeadbeef + 12;
	c ^= b; c -= rol32(b, 14);
	a ^= c; a -= rol32(c, 11);
	b ^= a; b -= rol32(a, 25);
	c ^= b; c -= rol32(b, 16);
	a ^= c; a -= rol32(c, 4);
	b ^= a; b -= rol32(a, 14);
	c ^= b; c -= rol32(b, 24);
	return c;
}

static __always_inline __u32 *lb_pick_maglev(const struct frontend *fe, const struct pkt *p)
{
	void *table = bpf_map_lookup_elem(&sluice_maglev, &fe->svc_id);
	if (!table || !cfg_maglev_size)
		return 0;
	__u32 ports = ((__u32)p->sport << 16) | p->dport;
	__u32 idx = lb_hash(p->saddr, p->daddr, ports ^ p->proto) % cfg_maglev_size;
	return bpf_map_lookup_elem(table, &idx);
}

static __always_inline __u32 *lb_pick_slot(const struct frontend *fe)
{
	struct slot_key sk = {
		.svc_id = fe->svc_id,
		.slot = bpf_get_prandom_u32() % fe->count + 1,
	};
	return bpf_map_lookup_elem(&sluice_slots, &sk);
}

/* The client's remembered backend for fe, if it is recent and still one of the service's. */
static __always_inline __u32 lb_affinity_lookup(const struct frontend *fe,
						 const struct affinity_key *ak, __u64 now)
{
	struct affinity *a = bpf_map_lookup_elem(&sluice_affinity, ak);
	if (!a || now - a->last_seen > (__u64)fe->affinity_timeout_s * NSEC_PER_SEC)
		return 0;
	struct affinity_match m = { .svc_id = fe->svc_id, .backend_id = a->backend_id };
	if (!bpf_map_lookup_elem(&sluice_affinity_match, &m))
		return 0;
	return a->backend_id;
}

/* The backend for a new flow of p to fe, or NULL if the agent's maps are mid-update. */
static __always_inline struct backend *lb_pick(const struct frontend *fe, const struct pkt *p,
					       __u64 now, __u32 *backend_id)
{
	struct affinity_key ak = { .svc_id = fe->svc_id, .client = p->saddr };
	bool affinity = fe->flags & FE_F_AFFINITY;
	__u32 id = 0;
	if (affinity)
		id = lb_affinity_lookup(fe, &ak, now);
	if (!id) {
		__u32 *slot = (fe->flags & FE_F_MAGLEV) ? lb_pick_maglev(fe, p) : lb_pick_slot(fe);
		if (!slot)
			return 0;
		id = *slot;
	}
	struct backend *be = bpf_map_lookup_elem(&sluice_backends, &id);
	if (!be)
		return 0;
	if (affinity && !cfg_trace) {
		struct affinity a = { .backend_id = id, .last_seen = now };
		bpf_map_update_elem(&sluice_affinity, &ak, &a, BPF_ANY);
	}
	*backend_id = id;
	return be;
}

#endif
