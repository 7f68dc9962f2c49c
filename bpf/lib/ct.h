/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ct.h: sluice's own connection table. Each flow has two entries in one LRU hash, both keyed by
 * the tuple a packet carries at the hook that sees it and both holding the tuple to rewrite it
 * to: the forward entry (client -> frontend, seen at ingress) and the reverse entry (the reply,
 * seen at ingress for remote backends, at tc egress for local ones). One lookup per packet, no
 * matter the direction. */
#ifndef SLUICE_CT_H
#define SLUICE_CT_H

#include "maps.h"
#include "parse.h"

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
	if (flags & CT_F_CLOSING)
		return (__u64)cfg_ct_close_timeout_s * NSEC_PER_SEC;
	if (proto == IPPROTO_TCP)
		return (__u64)cfg_ct_tcp_timeout_s * NSEC_PER_SEC;
	return (__u64)cfg_ct_udp_timeout_s * NSEC_PER_SEC;
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

/* The reverse of a forward translation: the key the other direction's packets carry, and the
 * tuple to restore. */
static __always_inline void ct_reverse(const struct pkt *p, const struct ct_entry *fwd,
				       struct ct_key *rk, struct ct_entry *rv)
{
	rk->saddr = fwd->nat_daddr;
	rk->daddr = fwd->nat_saddr;
	rk->sport = fwd->nat_dport;
	rk->dport = fwd->nat_sport;
	rk->proto = p->proto;
	rk->pad[0] = rk->pad[1] = rk->pad[2] = 0;
	rv->nat_saddr = p->daddr;
	rv->nat_daddr = p->saddr;
	rv->nat_sport = p->dport;
	rv->nat_dport = p->sport;
	rv->svc_id = fwd->svc_id;
	rv->backend_id = fwd->backend_id;
	rv->pad[0] = rv->pad[1] = rv->pad[2] = 0;
	/* Local backends' replies leave through tc egress; remote ones come back in. */
	rv->flags = CT_F_REPLY | ((fwd->flags & CT_F_LOCAL) ? CT_F_EGRESS : CT_F_INGRESS);
	rv->last_seen = fwd->last_seen;
}

/* Track TCP teardown and keep both entries fresh. `e` is the entry the packet matched. */
static __always_inline void ct_touch(const struct pkt *p, struct ct_entry *e, __u64 now)
{
	if (cfg_trace)
		return;
	if (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_F_FIN | TCP_F_RST)) &&
	    !(e->flags & CT_F_CLOSING)) {
		e->flags |= CT_F_CLOSING;
		e->last_seen = now;
	}
	if (now - e->last_seen < CT_REFRESH_NS)
		return;
	e->last_seen = now;
	/* The forward direction also refreshes (and, if the LRU evicted it, recreates) the
	 * reverse entry, so a reply after a long one-way silence is still translated. */
	if (!(e->flags & CT_F_REPLY)) {
		struct ct_key rk;
		struct ct_entry rv;
		ct_reverse(p, e, &rk, &rv);
		struct ct_entry *cur = bpf_map_lookup_elem(&sluice_ct, &rk);
		if (cur) {
			cur->last_seen = now;
		} else {
			bpf_map_update_elem(&sluice_ct, &rk, &rv, BPF_ANY);
		}
	}
}

/* Is this reverse key free to take (absent, or a dead flow's)? */
static __always_inline bool ct_free(const struct ct_key *k, __u64 now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&sluice_ct, k);
	return !e || ct_expired(e, k->proto, now);
}

/* Choose the SNAT source port for a flow to a remote backend: start at a random port in the
 * range and probe up to SNAT_PROBES ports for a reverse tuple (backend, node address, port)
 * nobody holds. Claims it by inserting the reverse entry. Returns 0 when every probe failed:
 * the range is (nearly) exhausted for this backend; the caller drops and counts. */
static __always_inline __u16 ct_snat_claim(struct ct_key *rk, struct ct_entry *rv, __u64 now)
{
	__u32 range = (__u32)cfg_snat_port_max - cfg_snat_port_min + 1;
	__u32 off = bpf_get_prandom_u32() % range;

	for (int i = 0; i < SNAT_PROBES; i++) {
		__u16 port = cfg_snat_port_min + (__u16)((off + i) % range);
		rk->dport = bpf_htons(port);
		if (!ct_free(rk, now))
			continue;
		if (cfg_trace)
			return port;
		/* BPF_NOEXIST loses the race against another CPU claiming the same port; a dead
		 * entry is overwritten. */
		if (bpf_map_update_elem(&sluice_ct, rk, rv, BPF_NOEXIST) == 0)
			return port;
		struct ct_entry *old = bpf_map_lookup_elem(&sluice_ct, rk);
		if (old && ct_expired(old, rk->proto, now) &&
		    bpf_map_update_elem(&sluice_ct, rk, rv, BPF_EXIST) == 0)
			return port;
	}
	return 0;
}

#endif
