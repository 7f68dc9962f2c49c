/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* hostnat.h: the kernel's own NAT beside sluice's SNAT. A flow the kernel masquerades to a
 * backend from a node address (MASQUERADE --random-fully picks any port in 1024-65535; CNIs and
 * kube-proxy use it) can take a source port sluice's SNAT range also hands out, and a kernel
 * flow and a sluice flow with one tuple would be one connection at the backend. The kernel
 * cannot see sluice's flows, so sluice tracks the kernel's: tc egress enters each such flow in
 * the connection table under the port it leaves with (no sluice flow then claims that port),
 * and moves one that leaves with a port a sluice flow already holds to a free port, moving its
 * replies back at ingress before the kernel's conntrack sees them. Linux 5.10 has no way to
 * read the kernel's conntrack from BPF; this needs none. */
#ifndef SLUICE_HOSTNAT_H
#define SLUICE_HOSTNAT_H

#include "ct.h"
#include "nat.h"
#include "stats.h"
#ifdef SLUICE_IPV6
#include "calls6.h"
#endif

/* Could p, leaving, be such a flow? TCP or UDP from a port in the SNAT range to a backend
 * port: the node's own connections (ephemeral ports above the range) and everything else pay
 * two array reads. */
static __always_inline bool hostnat_candidate(const struct pkt *p)
{
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return false;
	__u16 sport = bpf_ntohs(p->sport);
	return sport >= cfg_snat_port_min && sport <= cfg_snat_port_max &&
	       port_bit(&sluice_backend_ports, p->dport);
}

/* Did sluice send skb? Its translated packets arrived on a device it runs on, or came out of
 * sluice0 (those it hands the kernel to fragment). A moved kernel flow and the sluice flow it
 * was moved off leave with the same tuple: only this tells them apart. */
static __always_inline bool hostnat_from_sluice(struct __sk_buff *skb)
{
	__u32 iif = skb->ingress_ifindex;
	if (!iif)
		return false;
	if (bpf_map_lookup_elem(&sluice_device_addrs, &iif))
		return true;
	__u32 zero = 0;
	struct stack_dev *sd = bpf_map_lookup_elem(&sluice_stack_dev, &zero);
	return sd && sd->ifindex == iif;
}

/* p leaves by this device with no connection-table entry: if it is the kernel's flow from this
 * device's address (the address sluice SNATs flows leaving here to), track it under its port,
 * or move it. Returns the verdict. */
static __always_inline int hostnat_track(struct __sk_buff *skb, const struct pkt *p, __u64 now)
{
	if (hostnat_from_sluice(skb))
		return TC_ACT_OK;
	__u32 oif = skb->ifindex;
	addr_t *addr = bpf_map_lookup_elem(&sluice_device_addrs, &oif);
	if (!addr || !ADDR_EQ(*addr, p->saddr))
		return TC_ACT_OK;

	__u8 state = (p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_F_SYN | TCP_F_ACK)) == TCP_F_SYN) ? CT_F_SYN : 0;
	struct ct_key rk = {.saddr = p->daddr, .daddr = p->saddr, .sport = p->dport, .dport = p->sport, .proto = p->proto};
	struct ct_entry rv = {.nat_saddr = p->daddr, .nat_daddr = p->saddr, .nat_sport = p->dport, .nat_dport = p->sport,
			      .flags = CT_F_INGRESS | CT_F_REPLY | CT_F_KERNEL | state, .last_seen = now};
	__u16 port = 0;
	/* Its own reply entry, left when the LRU evicted the other (or a closed flow's on a
	 * reused tuple): keep the port. */
	struct ct_entry *old = bpf_map_lookup_elem(&sluice_ct, &rk);
	if (old && (old->flags & CT_F_KERNEL) && old->nat_dport == p->sport &&
	    bpf_map_update_elem(&sluice_ct, &rk, &rv, BPF_EXIST) == 0)
		port = bpf_ntohs(p->sport);
	if (!port)
		port = ct_snat_claim(&rk, &rv, now, bpf_ntohs(p->sport));
	if (!port) {
		count_reason(REASON_KERNEL_FLOW_UNTRACKED);
		return TC_ACT_OK;
	}
	struct ct_key fk;
	ct_key_of(&fk, p);
	struct ct_entry fv = {.nat_saddr = p->saddr, .nat_daddr = p->daddr, .nat_sport = bpf_htons(port),
			      .nat_dport = p->dport, .flags = CT_F_EGRESS | CT_F_KERNEL | state, .last_seen = now};
	bpf_map_update_elem(&sluice_ct, &fk, &fv, BPF_ANY);
	if (port == bpf_ntohs(p->sport))
		return TC_ACT_OK;
	count_reason(REASON_KERNEL_FLOW_MOVED);
	struct tuple to = {.saddr = p->saddr, .daddr = p->daddr, .sport = bpf_htons(port), .dport = p->dport};
	if (nat_rewrite_for(skb, false, p, &to, false, false)) /* (TCP or UDP) */
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

#ifdef SLUICE_IPV6
/* IPv6's in a program of its own (calls6.h): its entries and keys do not fit tc egress's stack
 * with the rest. p is the scratch's. */
static __always_inline int hostnat_track_call(struct __sk_buff *skb, const struct pkt *p, __u64 now)
{
	bpf_tail_call(skb, &sluice_calls_tc6, CALL_HOSTNAT);
	count_reason(REASON_KERNEL_FLOW_UNTRACKED);
	return TC_ACT_OK;
}

/* The program's body (sluice6.c). */
static __always_inline int hostnat_track6(struct __sk_buff *skb)
{
	struct scratch *s = scratch();
	if (!s)
		return TC_ACT_OK;
	return hostnat_track(skb, &s->in, bpf_ktime_get_ns());
}
#else
#define hostnat_track_call hostnat_track
#endif

#endif
