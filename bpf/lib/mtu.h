/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* mtu.h: a translated packet too big for its next hop, answered as a router answers it. With DF
 * set, "fragmentation needed" goes back to the sender with the next hop's MTU, quoting the
 * packet as the sender sent it (so its path MTU discovery finds its socket); the sender then
 * sends smaller packets. Without DF it must be fragmented: translated, it is handed to the
 * kernel, which fragments what it forwards (and fills in a checksum a veth sender left to it,
 * which a BPF program cannot tell it must). It enters through sluice0, a veth the agent
 * creates with accept_local: its source is a node address, which the kernel takes for a
 * martian on any other device. Only tc gets here: XDP leaves such packets to tc (in generic
 * mode its packet may be a GRO-merged one whose segments fit). */
#ifndef SLUICE_MTU_H
#define SLUICE_MTU_H

#include "fib.h"
#include "frag.h"
#include "reject.h"
#include "stats.h"

/* The smallest MTU an IPv4 link may have (RFC 791). */
#define MTU_MIN 68
#define MTU_SEARCH_STEPS 16

/* The MTU of the next hop that refused `len` bytes. Linux 5.12+ writes it to the lookup's
 * mtu_result (which shares tot_len's place); 5.10 does not, and there the largest length the
 * FIB accepts is found by bisection (16 lookups at most, once per refused packet). */
static __always_inline __u16 mtu_of_next_hop(struct __sk_buff *skb, struct bpf_fib_lookup *fib,
					     const struct tuple *to, __u8 proto, __u8 tos, __u16 len)
{
	if (fib->tot_len < len)
		return fib->tot_len;
	__u32 lo = MTU_MIN, hi = (__u32)len - 1;
	for (int i = 0; i < MTU_SEARCH_STEPS; i++) {
		if (lo >= hi)
			break;
		__u32 mid = lo + (hi - lo + 1) / 2;
		if (fwd_lookup(skb, false, fib, to, proto, tos, (__u16)mid) == BPF_FIB_LKUP_RET_FRAG_NEEDED)
			hi = mid - 1;
		else
			lo = mid;
	}
	return (__u16)lo;
}

/* Translate p to `to` and hand it to the kernel through sluice0 to forward and fragment (it
 * decrements the TTL). */
static __always_inline int fwd_via_stack(struct __sk_buff *skb, const struct pkt *p, const struct tuple *to)
{
	__u32 zero = 0;
	struct stack_dev *dev = bpf_map_lookup_elem(&sluice_stack_dev, &zero);
	if (!dev || !dev->ifindex) {
		count_reason(REASON_DROP_FRAG_NEEDED);
		return TC_ACT_SHOT;
	}
	__u32 ifindex = dev->ifindex;
	/* The device takes only frames addressed to it (any other MAC: PACKET_OTHERHOST). */
	if (nat_rewrite(skb, false, p, to, false) || bpf_skb_store_bytes(skb, 0, dev->mac, ETH_ALEN, 0)) {
		count_reason(REASON_DROP_FRAG_NEEDED);
		return TC_ACT_SHOT;
	}
	count_reason(REASON_FRAG_BY_STACK);
	return bpf_redirect(ifindex, BPF_F_INGRESS);
}

/* What fwd_too_big returns for a fragment (len 0) when there is no sluice0: send it yourself. */
#define FWD_NO_STACK -1

/* A global function, so the verifier walks it once and not once per path that forwards. Its
 * arguments are scalars (5.10 takes no pointers but the context): the packet is parsed again,
 * `to` is the translated tuple (ports: source << 16 | destination, network order) and len the
 * length the FIB refused, or 0 for a fragment that fits: every fragment of a datagram goes
 * through the kernel, because a node with conntrack reassembles a datagram's fragments before
 * it forwards them, and those sent past it would never join the rest. Returns the verdict, or
 * FWD_NO_STACK. */
__noinline int fwd_too_big(struct __sk_buff *skb, __u32 saddr, __u32 daddr, __u32 ports, __u32 len)
{
	struct scratch *s = scratch();
	if (!s)
		return TC_ACT_SHOT;
	struct pkt *p = &s->p;
	__builtin_memset(p, 0, sizeof(*p));
	int res = parse_pkt(skb, false, p);
	if (res == PARSE_FRAGMENT)
		frag_resolve(p); /* a later fragment of a flow: ports from its first */
	else if (res != PARSE_OK)
		return TC_ACT_SHOT;
	s->to.saddr = saddr;
	s->to.daddr = daddr;
	s->to.sport = (__be16)(ports >> 16);
	s->to.dport = (__be16)ports;
	if (!len) {
		__u32 zero = 0;
		struct stack_dev *dev = bpf_map_lookup_elem(&sluice_stack_dev, &zero);
		if (!dev || !dev->ifindex)
			return FWD_NO_STACK;
		return fwd_via_stack(skb, p, &s->to);
	}
	/* A fragment never has DF. */
	if (!p->df)
		return fwd_via_stack(skb, p, &s->to);
	struct bpf_fib_lookup *fib = (struct bpf_fib_lookup *)s->fib;
	if (fwd_lookup(skb, false, fib, &s->to, p->proto, p->tos, (__u16)len) != BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		count_reason(REASON_DROP_FRAG_NEEDED);
		return TC_ACT_SHOT;
	}
	__u16 mtu = mtu_of_next_hop(skb, fib, &s->to, p->proto, p->tos, (__u16)len);
	if (icmp_error_reply(skb, false, p, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, bpf_htonl(mtu))) {
		count_reason(REASON_DROP_REJECT_FAILED);
		return TC_ACT_SHOT;
	}
	count_reason(REASON_ICMP_FRAG_NEEDED);
	return ctx_bounce(skb, false);
}

#endif
