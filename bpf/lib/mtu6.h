/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* mtu6.h: mtu.h's answers for IPv6 (included by mtu.h under SLUICE_IPV6). IPv6 routers never
 * fragment: a translated packet too big for its next hop gets ICMPv6 packet too big (RFC 4443
 * 3.2) with the hop's MTU, quoting the packet as the sender sent it, whatever it is. Fragments
 * the sender made are forwarded as they come, each following its first (frag.h). */
#ifndef SLUICE_MTU6_H
#define SLUICE_MTU6_H

#include "calls6.h"

#define ICMPV6_PKT_TOOBIG 2

/* The packet too big program's body (sluice6.c): the translated tuple and the length the FIB
 * refused wait in the scratch. */
static __always_inline int fwd_too_big6(struct __sk_buff *skb)
{
	struct scratch *s = scratch();
	if (!s)
		return TC_ACT_SHOT;
	__u16 len = s->len;
	struct pkt *p = &s->p;
	__builtin_memset(p, 0, sizeof(*p));
	int res = parse_pkt(skb, false, p);
	if (res == PARSE_FRAGMENT)
		frag_resolve(p);
	else if (res != PARSE_OK)
		return TC_ACT_SHOT;
	struct bpf_fib_lookup *fib = (struct bpf_fib_lookup *)s->fib;
	if (fwd_lookup(skb, false, fib, &s->to, p->proto, p->tos, len) != BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		count_reason(REASON_DROP_FRAG_NEEDED);
		return TC_ACT_SHOT;
	}
	__u16 mtu = mtu_of_next_hop(skb, fib, &s->to, p->proto, p->tos, len);
	if (icmp_error_reply(skb, false, p, ICMPV6_PKT_TOOBIG, 0, bpf_htonl(mtu))) {
		count_reason(REASON_DROP_REJECT_FAILED);
		return TC_ACT_SHOT;
	}
	count_reason(REASON_ICMP_FRAG_NEEDED_SENT);
	return ctx_bounce(skb, false);
}

/* Answer in a program of its own (calls6.h): the quote's checksum loop does not fit the
 * forwarding path's stack. */
static __always_inline int fwd_too_big_to(struct __sk_buff *skb, const struct tuple *to, __u16 len)
{
	struct scratch *s = scratch();
	if (!s)
		return TC_ACT_SHOT;
	s->to = *to;
	s->len = len;
	bpf_tail_call(skb, &sluice_calls_tc6, CALL_TOO_BIG);
	count_reason(REASON_DROP_FRAG_NEEDED);
	return TC_ACT_SHOT;
}

/* Only a fragment gets here (a whole packet has "DF" in IPv6: fwd_too_big_to): the sender's
 * fragments go on as they are. */
static __always_inline int fwd_to_kernel_to(struct __sk_buff *skb, const struct tuple *to, __u32 fits)
{
	if (fits)
		return FWD_NO_STACK;
	count_reason(REASON_DROP_FRAG_NEEDED);
	return TC_ACT_SHOT;
}

#endif
