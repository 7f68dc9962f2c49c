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

/* The frontend a client on this node reaches at k (k.scope FE_SCOPE_SOCK): the entry for
 * clients on the node where the service has one, else the one for every client. */
static __always_inline struct frontend *lb_frontend_node(struct frontend_key *k)
{
	k->scope = FE_SCOPE_SOCK;
	struct frontend *fe = bpf_map_lookup_elem(&sluice_frontends, k);
	if (fe)
		return fe;
	k->scope = FE_SCOPE_ALL;
	return bpf_map_lookup_elem(&sluice_frontends, k);
}

/* Whether p's source may open a flow to fe (loadBalancerSourceRanges). */
static __always_inline bool lb_source_allowed(const struct frontend *fe, const struct pkt *p)
{
	if (!(fe->flags & FE_F_SOURCE_RANGES))
		return true;
	struct source_range k = {
		.prefixlen = 32 + ADDR_BITS,
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

/* A backend remembered for session affinity that may still be used (0: none): recent, still
 * one of the service's, and still there. A backend deleted while the set still names it (the
 * agent mid-update, or a failed write) must not keep the client, refreshed after, pinned to
 * nothing. The packet and socket paths keep their own affinity maps, and share this. */
static __always_inline __u32 lb_remembered_in(const struct affinity *a, __u32 svc_id, __u32 timeout_s, __u64 now,
					       void *backends)
{
	if (!a || now - a->last_seen > (__u64)timeout_s * NSEC_PER_SEC)
		return 0;
	struct affinity_match m = { .svc_id = svc_id, .backend_id = a->backend_id };
	__u32 id = a->backend_id;
	if (!bpf_map_lookup_elem(&sluice_affinity_match, &m) || !bpf_map_lookup_elem(backends, &id))
		return 0;
	return id;
}

/* lb_remembered_in the object's own family's backends. */
static __always_inline __u32 lb_remembered(const struct affinity *a, __u32 svc_id, __u32 timeout_s, __u64 now)
{
	return lb_remembered_in(a, svc_id, timeout_s, now, &sluice_backends);
}

/* The backend a new flow gets from the service's Maglev table (by sel) or its slots 1..count
 * (by sel, or at random), 0 if none (the agent's maps mid-update). */
static __always_inline __u32 lb_slot_id(__u32 svc_id, __u16 count, __u16 flags, __u32 sel, bool random)
{
	__u32 *slot = 0;
	if (flags & FE_F_MAGLEV) {
		void *table = bpf_map_lookup_elem(&sluice_maglev, &svc_id);
		if (table && cfg_maglev_size) {
			__u32 idx = sel % cfg_maglev_size;
			slot = bpf_map_lookup_elem(table, &idx);
		}
	} else if (count) {
		struct slot_key sk = { .svc_id = svc_id, .slot = (random ? bpf_get_prandom_u32() : sel) % count + 1 };
		slot = bpf_map_lookup_elem(&sluice_slots, &sk);
	}
	return slot ? *slot : 0;
}

/* The backend ID for a new flow of service svc_id (0: none, the agent's maps are mid-update).
 * count_flags is the frontend's count | flags << 16; hash is the flow's lb_hash. A global
 * function, with only scalars, so the verifier checks its branches (affinity, Maglev or a slot)
 * once, not once per path of every caller: inlined, they multiplied tc ingress's verification
 * five-fold. */
/* The client address as a global function takes it: scalars only (Linux 5.10 takes no
 * pointer but the context), an IPv6 one in two halves. */
#ifdef SLUICE_IPV6
#define LB_CLIENT_PARAMS __u64 client_hi, __u64 client_lo
#define LB_CLIENT_ARGS(a) addr6_half(&(a), 0), addr6_half(&(a), 2)
#define LB_CLIENT_SET(k)                                            \
	do {                                                        \
		__builtin_memcpy(&(k).client.w[0], &client_hi, 8);  \
		__builtin_memcpy(&(k).client.w[2], &client_lo, 8);  \
	} while (0)

static __always_inline __u64 addr6_half(const union addr6 *a, int word)
{
	__u64 v;
	__builtin_memcpy(&v, &a->w[word], 8);
	return v;
}
#else
#define LB_CLIENT_PARAMS __be32 client
#define LB_CLIENT_ARGS(a) (a)
#define LB_CLIENT_SET(k) ((k).client = client)
#endif

/* fe_word: the frontend's count, flags << 16 and affinity timeout << 32. */
__noinline __u32 lb_pick_id(__u32 svc_id, __u64 fe_word, LB_CLIENT_PARAMS, __u32 hash)
{
	__u16 count = fe_word & 0xffff;
	__u16 flags = (fe_word >> 16) & 0xffff;
	__u32 affinity_timeout_s = fe_word >> 32;
	__u64 now = bpf_ktime_get_ns();
	struct affinity_key ak = { .svc_id = svc_id };
	LB_CLIENT_SET(ak);
	__u32 id = 0;

	if (flags & FE_F_AFFINITY)
		id = lb_remembered(bpf_map_lookup_elem(&sluice_affinity, &ak), svc_id, affinity_timeout_s, now);
	if (!id)
		id = lb_slot_id(svc_id, count, flags, hash, true);
	/* Remember only a backend that exists (a slot may name one being replaced). */
	if ((flags & FE_F_AFFINITY) && !cfg_trace && id && bpf_map_lookup_elem(&sluice_backends, &id)) {
		struct affinity a = { .backend_id = id, .last_seen = now };
		bpf_map_update_elem(&sluice_affinity, &ak, &a, BPF_ANY);
	}
	return id;
}

static __always_inline struct backend *lb_pick(const struct frontend *fe, const struct pkt *p,
					       __u32 *backend_id)
{
	__u32 ports = ((__u32)p->sport << 16) | p->dport;
	__u64 fe_word = fe->count | (__u32)fe->flags << 16 | (__u64)fe->affinity_timeout_s << 32;
	__u32 id = lb_pick_id(fe->svc_id, fe_word, LB_CLIENT_ARGS(p->saddr),
			      lb_hash(ADDR_HASH(p->saddr), ADDR_HASH(p->daddr), ports ^ p->proto));
	if (!id)
		return 0;
	struct backend *be = bpf_map_lookup_elem(&sluice_backends, &id);
	if (be)
		*backend_id = id;
	return be;
}

#endif
