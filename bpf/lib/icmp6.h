/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* icmp6.h: icmp.h for IPv6 (included by icmp.h under SLUICE_IPV6): ICMPv6 errors (destination
 * unreachable, packet too big, time exceeded, parameter problem) about translated flows,
 * translated for the flow's other end as IPv4's are. The differences: no header checksums,
 * and the ICMPv6 checksum covers the pseudo-header, so the outer addresses' change goes into
 * it too. A quote whose packet has extension headers before L4 is left as it is (the kernel
 * gets the error untranslated, as before). It runs in a tail-called program of its own
 * (calls6.h): the quote, its tuple and the rewrite do not fit the packet path's stack. */
#ifndef SLUICE_ICMP6_H
#define SLUICE_ICMP6_H

#include "calls6.h"

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif
#define ICMPV6_ERROR_MAX 4 /* types 1-4 are errors; 128 and up are not (echo, NDP) */

/* Quote bytes read: the IPv6 header and TCP up to its checksum. */
#define ICMP_QUOTE_READ (8 + sizeof(struct ipv6hdr) + 20)

static __always_inline int icmp_quote_parse(struct __sk_buff *skb, const struct pkt *p,
					    struct icmp_quote *q)
{
	__u32 quoted = p->ip_len - (p->l4_off - p->l3_off) - 8;
	if (p->ip_len < (p->l4_off - p->l3_off) + 8 + sizeof(struct ipv6hdr) + 8)
		return -1;
	ctx_pull(skb, false, p->l4_off + ICMP_QUOTE_READ);
	void *data = ctx_data(skb, false);
	void *data_end = ctx_data_end(skb, false);
	__u8 *ih = data + (p->l4_off & L4_OFF_MASK);
	if ((void *)(ih + 8) > data_end)
		return -1;
	if (ih[0] == 0 || ih[0] > ICMPV6_ERROR_MAX)
		return -1;
	struct ipv6hdr *in = (void *)(ih + 8);
	if ((void *)(in + 1) > data_end)
		return -1;
	if (in->version != 6)
		return -1;
	if (in->nexthdr != IPPROTO_TCP && in->nexthdr != IPPROTO_UDP && in->nexthdr != IPPROTO_SCTP)
		return -1;
	q->in_l3 = p->l4_off + 8;
	q->in_l4 = q->in_l3 + sizeof(struct ipv6hdr);
	q->in_l4_len = quoted - sizeof(struct ipv6hdr);
	q->proto = in->nexthdr;
	__builtin_memcpy(&q->saddr, &in->saddr, sizeof(q->saddr));
	__builtin_memcpy(&q->daddr, &in->daddr, sizeof(q->daddr));

	__be16 *ports = data + (q->in_l4 & 0x1ff);
	if ((void *)(ports + 2) > data_end)
		return -1;
	q->sport = ports[0];
	q->dport = ports[1];
	/* As IPv4's: SCTP's CRC is left as it is; a quoted TCP or UDP checksum follows. */
	__u8 off = q->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check) :
		   q->proto == IPPROTO_UDP ? offsetof(struct udphdr, check) : 0;
	if (off && q->in_l4_len >= off + 2) {
		__u16 *c = data + ((q->in_l4 + off) & 0x1ff);
		if ((void *)(c + 1) <= data_end) {
			q->l4_check = *c;
			q->l4_check_off = off;
		}
	}
	return 0;
}

/* Give the error the outer addresses `out` (hop limit decremented when we forward it) and the
 * quote the tuple `in`, with the checksums that cover them: the quote's L4 one (when quoted)
 * and the ICMPv6 checksum, over the outer pseudo-header and the quote. */
static __always_inline int icmp_rewrite(struct __sk_buff *skb, const struct pkt *p,
					const struct icmp_quote *q, const struct tuple *in,
					const struct tuple *out, bool dec_ttl)
{
	__u32 l3 = p->l3_off;
	if (dec_ttl) {
		__u8 hl;
		if (bpf_skb_load_bytes(skb, l3 + offsetof(struct ipv6hdr, hop_limit), &hl, 1))
			return -1;
		hl--;
		if (bpf_skb_store_bytes(skb, l3 + offsetof(struct ipv6hdr, hop_limit), &hl, 1, 0))
			return -1;
	}
	__u32 outer_diff = csum_diff_addr6(0, &p->saddr, &out->saddr);
	outer_diff = csum_diff_addr6(outer_diff, &p->daddr, &out->daddr);
	if (bpf_skb_store_bytes(skb, l3 + offsetof(struct ipv6hdr, saddr), &out->saddr, 32, 0))
		return -1;

	__u32 addr_diff = csum_diff_addr6(0, &q->saddr, &in->saddr);
	addr_diff = csum_diff_addr6(addr_diff, &q->daddr, &in->daddr);
	__u32 port_diff = csum_diff2(0, q->sport, in->sport);
	port_diff = csum_diff2(port_diff, q->dport, in->dport);
	/* The ICMPv6 checksum covers every quoted word we change, checksums included. */
	__u32 icmp_diff = csum_fold((__u64)addr_diff + port_diff);
	__be16 in_ports[2] = {in->sport, in->dport};
	if (bpf_skb_store_bytes(skb, q->in_l3 + offsetof(struct ipv6hdr, saddr), &in->saddr, 32, 0) ||
	    bpf_skb_store_bytes(skb, q->in_l4, in_ports, 4, 0))
		return -1;
	if (q->l4_check_off) {
		__u16 c = csum_apply(q->l4_check, csum_fold((__u64)addr_diff + port_diff));
		if (q->proto == IPPROTO_UDP && c == 0)
			c = 0xffff;
		if (bpf_skb_store_bytes(skb, q->in_l4 + q->l4_check_off, &c, 2, 0))
			return -1;
		icmp_diff = csum_diff2(icmp_diff, q->l4_check, c);
	}
	__u32 off = p->l4_off + 2; /* the ICMPv6 checksum */
	if (bpf_l4_csum_replace(skb, off, 0, outer_diff, BPF_F_PSEUDO_HDR))
		return -1;
	return bpf_l4_csum_replace(skb, off, 0, icmp_diff, 0) ? -1 : 0;
}

/* The ICMPv6 program's body (sluice6.c): the error, parsed, is the scratch's; which hook runs
 * waits there too. */
static __always_inline int icmp_related6(struct __sk_buff *skb)
{
	struct scratch *s = scratch();
	if (!s)
		return TC_ACT_OK;
	struct pkt *p = &s->in;
	bool egress = s->egress;
	struct icmp_quote q = {};
	if (icmp_quote_parse(skb, p, &q))
		return TC_ACT_OK;
	struct tuple in, out;
	struct ct_entry *e = icmp_flow(p, &q, egress, &in, &out);
	if (!e)
		return TC_ACT_OK;
	if (egress || (e->flags & CT_F_LOCAL)) {
		if (icmp_rewrite(skb, p, &q, &in, &out, false))
			return TC_ACT_SHOT;
		count_reason(REASON_ICMP_RELATED);
		return TC_ACT_OK;
	}
	struct bpf_fib_lookup *fib = (struct bpf_fib_lookup *)s->fib;
	__builtin_memset(fib, 0, sizeof(*fib));
	int rc = fwd_lookup(skb, false, fib, &out, IPPROTO_ICMPV6, p->tos, 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		count_reason(REASON_DROP_NO_ROUTE);
		return TC_ACT_SHOT;
	}
	__u8 hl;
	if (bpf_skb_load_bytes(skb, p->l3_off + offsetof(struct ipv6hdr, hop_limit), &hl, 1) || hl <= 1) {
		count_reason(REASON_DROP_TTL_EXCEEDED);
		return TC_ACT_SHOT;
	}
	if (icmp_rewrite(skb, p, &q, &in, &out, true))
		return TC_ACT_SHOT;
	count_reason(REASON_ICMP_RELATED);
	return fwd_send(skb, false, rc, fib);
}

/* An ICMPv6 error (p in the scratch): to its program. Echo and neighbour discovery are not
 * errors and stay here, untouched. */
static __always_inline int icmp_related(struct __sk_buff *skb, bool egress)
{
	struct scratch *s = scratch();
	if (!s)
		return TC_ACT_OK;
	__u8 type;
	if (bpf_skb_load_bytes(skb, s->in.l4_off, &type, 1) || type == 0 || type > ICMPV6_ERROR_MAX)
		return TC_ACT_OK;
	s->egress = egress;
	bpf_tail_call(skb, &sluice_calls_tc6, CALL_ICMP);
	return TC_ACT_OK;
}

#endif
