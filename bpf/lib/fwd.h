/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* fwd.h: send a translated packet on its way. Local backends: hand it to the stack, which routes
 * it into the pod's veth. Everything else: bpf_fib_lookup for the next hop, rewrite the MACs and
 * XDP_TX / redirect. When the next hop has no neighbour entry yet, XDP leaves the untranslated
 * packet to the tc ingress program (which finds the same conntrack entry) because only tc has
 * bpf_redirect_neigh to resolve it. */
#ifndef SLUICE_FWD_H
#define SLUICE_FWD_H

#include "ct.h"
#include "fib.h"
#include "mtu.h"
#include "nat.h"
#include "stats.h"

/* Can XDP transmit on ifindex? Only on the device it runs on (XDP_TX) or on another device
 * where the agent attached XDP natively: redirecting to anything else drops silently. */
static __always_inline bool fwd_xdp_target(void *ctx, const bool xdp, __u32 ifindex)
{
	if (ifindex == ctx_ifindex(ctx, xdp))
		return true;
	__u32 *flags = bpf_map_lookup_elem(&sluice_devices, &ifindex);
	return flags && (*flags & DEVICE_F_XDP_NATIVE);
}

/* Translate p to `to` and forward; svc_id/reply say which counter the packet goes to. Returns
 * the program's verdict. */
static __always_inline int fwd_translated(void *ctx, const bool xdp, const struct pkt *p,
					  const struct tuple *to, bool local, __u32 svc_id,
					  bool reply)
{
	if (local) {
		count_svc(svc_id, reply, p->len);
		/* (A kernel flow's reply under its own port needs nothing.) */
		if (!tuple_is(to, p) && nat_rewrite(ctx, xdp, p, to, false))
			return VERDICT_DROP(xdp);
		return VERDICT_PASS(xdp);
	}

	struct scratch *s = scratch();
	if (!s)
		return VERDICT_DROP(xdp);
	struct bpf_fib_lookup *fib = (struct bpf_fib_lookup *)s->fib;
	__builtin_memset(fib, 0, sizeof(*fib));
	__u16 mtu_len = fwd_mtu_len(ctx, xdp, p);
	int rc = fwd_lookup(ctx, xdp, fib, to, p->proto, p->tos, mtu_len);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		/* XDP judges by the IP length, which in generic mode is a GRO-merged packet's (it
		 * leaves as segments that fit): tc, which finds the same flow and knows the
		 * segments' length, decides. */
		if (xdp) {
			count_reason(REASON_PASS_TO_TC);
			return XDP_PASS;
		}
		if (p->df)
			return fwd_too_big_to((struct __sk_buff *)ctx, to, mtu_len);
		return fwd_to_kernel_to((struct __sk_buff *)ctx, to, 0);
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		count_reason(REASON_DROP_NO_ROUTE);
		return VERDICT_DROP(xdp);
	}
	/* What XDP cannot send, it leaves untranslated to tc ingress, which finds the same flow;
	 * that includes fragments, which go through the kernel (fwd_to_kernel). */
	if (xdp && (rc == BPF_FIB_LKUP_RET_NO_NEIGH || p->frag || !fwd_xdp_target(ctx, xdp, fib->ifindex))) {
		count_reason(REASON_PASS_TO_TC);
		return XDP_PASS;
	}
	if (!xdp && p->frag) {
		int verdict = fwd_to_kernel_to((struct __sk_buff *)ctx, to, 1);
		if (verdict != FWD_NO_STACK)
			return verdict;
	}

	int ttl = pkt_ttl(ctx, xdp, p);
	if (ttl < 0)
		return VERDICT_DROP(xdp);
	if (ttl <= 1) {
		count_reason(REASON_DROP_TTL_EXCEEDED);
		return VERDICT_DROP(xdp);
	}
	if (nat_rewrite(ctx, xdp, p, to, true))
		return VERDICT_DROP(xdp);
	count_svc(svc_id, reply, p->len);
	return fwd_send(ctx, xdp, rc, fib);
}

#endif
