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

/* The smallest MTU a link may have: IPv4's (RFC 791), IPv6's (RFC 8200). */
#ifdef SLUICE_IPV6
#define MTU_MIN 1280
#else
#define MTU_MIN 68
#endif
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

/* What fwd_to_kernel returns for a fragment that fits when there is no sluice0: send it
 * yourself. */
#define FWD_NO_STACK -1

#ifdef SLUICE_IPV6
#include "mtu6.h"
#else

/* Parse skb again into the scratch area, with `to` the translated tuple (ports: source << 16
 * | destination, network order): the global functions below take scalars only (5.10 takes no
 * pointers but the context). */
static __always_inline struct scratch *fwd_reparse(struct __sk_buff *skb, __u32 saddr, __u32 daddr, __u32 ports)
{
	struct scratch *s = scratch();
	if (!s)
		return 0;
	struct pkt *p = &s->p;
	__builtin_memset(p, 0, sizeof(*p));
	int res = parse_pkt(skb, false, p);
	if (res == PARSE_FRAGMENT)
		frag_resolve(p); /* a later fragment of a flow: ports from its first */
	else if (res != PARSE_OK)
		return 0;
	s->to.saddr = saddr;
	s->to.daddr = daddr;
	s->to.sport = (__be16)(ports >> 16);
	s->to.dport = (__be16)ports;
	return s;
}

/* Translate the packet and hand it to the kernel through sluice0 to forward (decrementing the
 * TTL) and fragment: one too big for its next hop without DF, or (fits) any fragment, because
 * a node with conntrack reassembles a datagram's fragments before it forwards them, and those
 * sent past it would never join the rest. Returns the verdict, or FWD_NO_STACK for a fragment
 * that fits when there is no sluice0. A global function (as fwd_too_big): the verifier walks
 * it once, and its frame stacks on the packet path's alone. */
__noinline int fwd_to_kernel(struct __sk_buff *skb, __u32 saddr, __u32 daddr, __u32 ports, __u32 fits)
{
	__u32 zero = 0;
	struct stack_dev *dev = bpf_map_lookup_elem(&sluice_stack_dev, &zero);
	if (!dev || !dev->ifindex) {
		if (fits)
			return FWD_NO_STACK;
		count_reason(REASON_DROP_FRAG_NEEDED);
		return TC_ACT_SHOT;
	}
	__u32 ifindex = dev->ifindex;
	struct scratch *s = fwd_reparse(skb, saddr, daddr, ports);
	/* SCTP sets DF (it discovers the path MTU itself); one without is not worth the CRC's
	 * function on this path's stack. */
	if (!s || s->p.proto == IPPROTO_SCTP) {
		count_reason(REASON_DROP_FRAG_NEEDED);
		return TC_ACT_SHOT;
	}
	/* The device takes only frames addressed to it (any other MAC: PACKET_OTHERHOST). */
	if (nat_rewrite_for(skb, false, &s->p, &s->to, false, false) ||
	    bpf_skb_store_bytes(skb, 0, dev->mac, ETH_ALEN, 0)) {
		count_reason(REASON_DROP_FRAG_NEEDED);
		return TC_ACT_SHOT;
	}
	count_reason(REASON_FRAG_BY_STACK);
	return bpf_redirect(ifindex, BPF_F_INGRESS);
}

/* A packet with DF too big for its next hop: "fragmentation needed" with the hop's MTU back to
 * the sender. len is the length the FIB refused. A global function, so the verifier walks it
 * once and not once per path that forwards. Returns the verdict. */
__noinline int fwd_too_big(struct __sk_buff *skb, __u32 saddr, __u32 daddr, __u32 ports, __u32 len)
{
	struct scratch *s = fwd_reparse(skb, saddr, daddr, ports);
	if (!s)
		return TC_ACT_SHOT;
	struct pkt *p = &s->p;
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
	count_reason(REASON_ICMP_FRAG_NEEDED_SENT);
	return ctx_bounce(skb, false);
}

/* fwd.h's calls, with the tuple as the global functions above take it (scalars). */
static __always_inline int fwd_too_big_to(struct __sk_buff *skb, const struct tuple *to, __u16 len)
{
	return fwd_too_big(skb, to->saddr, to->daddr, ((__u32)to->sport << 16) | to->dport, len);
}

static __always_inline int fwd_to_kernel_to(struct __sk_buff *skb, const struct tuple *to, __u32 fits)
{
	return fwd_to_kernel(skb, to->saddr, to->daddr, ((__u32)to->sport << 16) | to->dport, fits);
}

#endif /* SLUICE_IPV6 */

#endif
