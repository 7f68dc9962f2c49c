/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ct.h: sluice's own connection table. Each flow has two entries in one LRU hash, both keyed by
 * the tuple a packet carries at the hook that sees it and both holding the tuple to rewrite it
 * to: the forward entry (client -> frontend, seen at ingress) and the reverse entry (the reply,
 * seen at ingress for remote backends, at tc egress for local ones). One lookup per packet, no
 * matter the direction.
 *
 * The two entries are peers: each one's key is the other's rewritten tuple turned around, so
 * either finds the other without extra state. TCP state (SYN unanswered, closing) is kept equal
 * on both, and each refreshes the other, so neither direction expires under a live flow. */
#ifndef SLUICE_CT_H
#define SLUICE_CT_H

#include "maps.h"
#include "parse.h"
#include "stats.h"

/* How often an entry's last_seen is rewritten: saves a cache-line write per packet. */
#define CT_REFRESH_NS NSEC_PER_SEC
#define SNAT_PROBES 32

static __always_inline void ct_key_of(struct ct_key *k, const struct pkt *p)
{
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
}

static __always_inline __u64 ct_lifetime_ns(__u8 proto, __u8 flags)
{
	if (proto != IPPROTO_TCP)
		return (__u64)cfg_ct_udp_timeout_s * NSEC_PER_SEC;
	if (flags & CT_F_CLOSING)
		return (__u64)cfg_ct_close_timeout_s * NSEC_PER_SEC;
	if (flags & CT_F_SYN)
		return (__u64)cfg_ct_syn_timeout_s * NSEC_PER_SEC;
	return (__u64)cfg_ct_tcp_timeout_s * NSEC_PER_SEC;
}

static __always_inline bool ct_expired(const struct ct_entry *e, __u8 proto, __u64 now)
{
	return now > e->last_seen && now - e->last_seen > ct_lifetime_ns(proto, e->flags);
}

/* The live entry for this key and hook (CT_F_INGRESS or CT_F_EGRESS), or NULL. */
static __always_inline struct ct_entry *ct_lookup(const struct ct_key *k, __u8 hook, __u64 now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&sluice_ct, k);
	if (!e || !(e->flags & hook) || ct_expired(e, k->proto, now))
		return 0;
	return e;
}

/* The peer of entry e matched by packet p: its key (e's rewritten tuple, turned around) and the
 * entry it should hold (restoring p's tuple). */
static __always_inline void ct_peer(const struct pkt *p, const struct ct_entry *e,
				    struct ct_key *pk, struct ct_entry *pv)
{
	pk->saddr = e->nat_daddr;
	pk->daddr = e->nat_saddr;
	pk->sport = e->nat_dport;
	pk->dport = e->nat_sport;
	pk->proto = p->proto;
	pk->pad[0] = pk->pad[1] = pk->pad[2] = 0;
	pv->nat_saddr = p->daddr;
	pv->nat_daddr = p->saddr;
	pv->nat_sport = p->dport;
	pv->nat_dport = p->sport;
	pv->svc_id = e->svc_id;
	pv->backend_id = e->backend_id;
	pv->pad[0] = pv->pad[1] = pv->pad[2] = 0;
	__u8 local = e->flags & CT_F_LOCAL;
	__u8 kernel = e->flags & CT_F_KERNEL;
	__u8 hook;
	if (e->flags & CT_F_REPLY) /* the peer is the forward entry: a kernel flow's leaves */
		hook = kernel ? CT_F_EGRESS : CT_F_INGRESS;
	else
		hook = CT_F_REPLY | (local ? CT_F_EGRESS : CT_F_INGRESS);
	pv->flags = hook | local | kernel | (e->flags & CT_F_STATE);
	pv->last_seen = e->last_seen;
}

/* Whether `cur`, found at the peer key, belongs to the same flow as the expected peer `want`
 * (and not to another flow that took the tuple after an eviction). */
static __always_inline bool ct_same_flow(const struct ct_entry *cur, const struct ct_entry *want)
{
	return ADDR_EQ(cur->nat_saddr, want->nat_saddr) && ADDR_EQ(cur->nat_daddr, want->nat_daddr) &&
	       cur->nat_sport == want->nat_sport && cur->nat_dport == want->nat_dport;
}

static __always_inline void ct_apply(struct ct_entry *e, __u8 set, __u8 clear, __u64 now)
{
	e->flags = (e->flags & ~clear) | set;
	if (set & CT_F_CLOSING)
		e->flags &= ~CT_F_SYN;
	e->last_seen = now;
}

/* Account packet p to its entry e: TCP state on both entries, and last_seen on both, at most
 * once a second (recreating the peer if the LRU evicted it). */
static __always_inline void ct_touch(const struct pkt *p, struct ct_entry *e, __u64 now)
{
	if (cfg_trace)
		return;
	__u8 set = 0, clear = 0;
	if (p->proto == IPPROTO_TCP) {
		if ((e->flags & CT_F_SYN) && (e->flags & CT_F_REPLY))
			clear |= CT_F_SYN; /* answered: established */
		if (p->tcp_flags & TCP_F_RST)
			set |= CT_F_CLOSING;
		if ((p->tcp_flags & TCP_F_FIN) && !(e->flags & CT_F_FIN))
			e->flags |= CT_F_FIN;
	}
	bool fin = (e->flags & CT_F_FIN) && !(e->flags & CT_F_CLOSING);
	bool state = ((e->flags & clear) || (set & ~e->flags)) != 0;
	if (!state && !fin && now - e->last_seen < CT_REFRESH_NS)
		return;

	struct ct_key pk;
	struct ct_entry pv;
	ct_peer(p, e, &pk, &pv);
	struct ct_entry *peer = bpf_map_lookup_elem(&sluice_ct, &pk);
	if (peer && ct_same_flow(peer, &pv)) {
		/* FIN both ways closes the flow. */
		if (fin && (peer->flags & CT_F_FIN))
			set |= CT_F_CLOSING;
		ct_apply(e, set, clear, now);
		peer->flags = (peer->flags & ~CT_F_STATE) | (e->flags & CT_F_STATE);
		peer->last_seen = now;
		return;
	}
	ct_apply(e, set, clear, now);
	if (peer)
		return; /* the tuple belongs to another flow now: leave it alone */
	pv.flags = (pv.flags & ~CT_F_STATE) | (e->flags & CT_F_STATE);
	pv.last_seen = now;
	if (bpf_map_update_elem(&sluice_ct, &pk, &pv, BPF_NOEXIST) == 0)
		count_reason(REASON_CT_PEER_LOST);
}

/* Whether a reverse tuple may be claimed for a new flow: nobody holds it, or its flow is dead
 * and, for a closed TCP flow, long enough ago that the backend has left TIME_WAIT. */
static __always_inline bool ct_claimable(const struct ct_entry *e, __u8 proto, __u64 now)
{
	if (!e)
		return true;
	if (!ct_expired(e, proto, now))
		return false;
	if (proto == IPPROTO_TCP && (e->flags & CT_F_CLOSING))
		return now - e->last_seen > (__u64)cfg_snat_reuse_s * NSEC_PER_SEC;
	return true;
}

/* Remove the dead entry `old` found at rk so that this CPU can claim its key, unless another CPU
 * is doing the same: two CPUs that both saw it dead must not both delete (the later delete
 * would remove the other's fresh claim). Linux 5.10 has no compare-and-swap for BPF, so the
 * claim is an atomic add of CT_CLAIM_BIT to last_seen and a re-read: the claim bits go
 * 00 -> 01 -> 10 with each add, so at most one CPU reads 01 after its own add (the one whose
 * add made them 01, if no other add came before its read); the others give the port up. A
 * claimed entry reads as live (last_seen far in the future), so later CPUs do not even try,
 * and it is deleted at once. */
#define CT_CLAIM_BIT (1ULL << 62)
#define CT_CLAIM_MASK (3ULL << 62)

static __always_inline bool ct_take_dead(struct ct_key *rk, struct ct_entry *old)
{
	if (old->last_seen & CT_CLAIM_MASK)
		return false;
	__sync_fetch_and_add(&old->last_seen, CT_CLAIM_BIT);
	if ((*(volatile __u64 *)&old->last_seen & CT_CLAIM_MASK) != CT_CLAIM_BIT)
		return false;
	/* Still the entry we claimed (not evicted and its slot reused meanwhile)? */
	if (bpf_map_lookup_elem(&sluice_ct, rk) != old)
		return false;
	bpf_map_delete_elem(&sluice_ct, rk);
	return true;
}

/* Choose the SNAT source port for a flow to a remote backend: probe `first` (if not 0), then up
 * to SNAT_PROBES random ports in the range, for a reverse tuple (backend, node address, port) that is claimable, and
 * claim it by inserting the reverse entry with BPF_NOEXIST (so two CPUs never get one port; a
 * dead entry in the way is taken with ct_take_dead).
 * Returns 0 when every probe failed: the range is (nearly) exhausted for this backend; the
 * caller drops and counts. */
static __always_inline __u16 ct_snat_claim(struct ct_key *rk, struct ct_entry *rv, __u64 now,
					   __u16 first)
{
	__u32 range = (__u32)cfg_snat_port_max - cfg_snat_port_min + 1;

	for (int i = 0; i < SNAT_PROBES; i++) {
		__u16 port = cfg_snat_port_min + (__u16)(bpf_get_prandom_u32() % range);
		if (i == 0 && first)
			port = first;
		rk->dport = bpf_htons(port);
		struct ct_entry *old = bpf_map_lookup_elem(&sluice_ct, rk);
		if (!ct_claimable(old, rk->proto, now))
			continue;
		if (cfg_trace)
			return port;
		if (old && !ct_take_dead(rk, old))
			continue;
		if (bpf_map_update_elem(&sluice_ct, rk, rv, BPF_NOEXIST) == 0)
			return port;
	}
	return 0;
}

#endif
