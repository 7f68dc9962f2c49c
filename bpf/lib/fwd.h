/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* fwd.h: send a translated packet on its way. Local backends: hand it to the stack, which routes
 * it into the pod's veth. Everything else: bpf_fib_lookup for the next hop, rewrite the MACs and
 * XDP_TX / redirect. When the next hop has no neighbour entry yet, XDP leaves the untranslated
 * packet to the tc ingress program (which finds the same conntrack entry) because only tc has
 * bpf_redirect_neigh to resolve it. */
#ifndef SLUICE_FWD_H
#define SLUICE_FWD_H

#include "ct.h"
#include "nat.h"
#include "stats.h"

#define FWD_PASS_UNTOUCHED 1

/* Can XDP transmit on ifindex? Only on the device it runs on (XDP_TX) or on another device
 * where the agent attached XDP natively: redirecting to anything else drops silently. */
static __always_inline bool fwd_xdp_target(void *ctx, const bool xdp, __u32 ifindex)
{
	if (ifindex == ctx_ifindex(ctx, xdp))
		return true;
	__u32 *flags = bpf_map_lookup_elem(&sluice_devices, &ifindex);
	return flags && (*flags & DEVICE_F_XDP_NATIVE);
}

static __always_inline bool mac_zero(const __u8 *mac)
{
	return !(mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]);
}

/* Translate p to `to` and forward; svc_id/reply say which counter the packet goes to. Returns
 * the program's verdict. */
static __always_inline int fwd_translated(void *ctx, const bool xdp, const struct pkt *p,
					  const struct tuple *to, bool local, __u32 svc_id,
					  bool reply)
{
	if (local) {
		count_svc(svc_id, reply, p->len);
		if (nat_rewrite(ctx, xdp, p, to, false))
			return VERDICT_DROP(xdp);
		return VERDICT_PASS(xdp);
	}

	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = p->tos;
	fib.l4_protocol = p->proto;
	fib.sport = to->sport;
	fib.dport = to->dport;
	/* At tc, 0: the kernel then checks the sk_buff itself (is_skb_forwardable), which knows a
	 * GRO-merged packet is sent as segments; its length would read as "fragmentation needed". */
	fib.tot_len = xdp ? p->ip_len : 0;
	fib.ipv4_src = to->saddr;
	fib.ipv4_dst = to->daddr;
	fib.ifindex = ctx_ifindex(ctx, xdp);

	int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	/* 5.10 kernels without the NUD_FAILED fix report success with a zero MAC. */
	if (rc == BPF_FIB_LKUP_RET_SUCCESS && mac_zero(fib.dmac))
		rc = BPF_FIB_LKUP_RET_NO_NEIGH;
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		/* XDP judges by the IP length, which in generic mode is a GRO-merged packet's (it
		 * leaves as segments that fit): tc, which finds the same flow and lets the kernel
		 * judge the sk_buff itself, decides. */
		if (xdp) {
			count_reason(REASON_PASS_TO_TC);
			return XDP_PASS;
		}
		count_reason(REASON_DROP_FRAG_NEEDED);
		return VERDICT_DROP(xdp);
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		count_reason(REASON_DROP_FIB);
		return VERDICT_DROP(xdp);
	}
	/* What XDP cannot send, it leaves untranslated to tc ingress, which finds the same flow. */
	if (xdp && (rc == BPF_FIB_LKUP_RET_NO_NEIGH || !fwd_xdp_target(ctx, xdp, fib.ifindex))) {
		count_reason(REASON_PASS_TO_TC);
		return XDP_PASS;
	}

	{
		void *data = ctx_data(ctx, xdp);
		void *data_end = ctx_data_end(ctx, xdp);
		struct iphdr *iph = data + (p->l3_off & 0x1f);
		if ((void *)(iph + 1) > data_end)
			return VERDICT_DROP(xdp);
		if (iph->ttl <= 1) {
			count_reason(REASON_DROP_TTL);
			return VERDICT_DROP(xdp);
		}
	}
	if (nat_rewrite(ctx, xdp, p, to, true))
		return VERDICT_DROP(xdp);
	count_svc(svc_id, reply, p->len);

	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* tc only: let the kernel resolve the next hop and fill in the MACs. */
		struct bpf_redir_neigh nh = {};
		nh.nh_family = AF_INET;
		nh.ipv4_nh = fib.ipv4_dst;
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}

	void *data = ctx_data(ctx, xdp);
	void *data_end = ctx_data_end(ctx, xdp);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return VERDICT_DROP(xdp);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return ctx_redirect(ctx, xdp, fib.ifindex);
}

#endif
