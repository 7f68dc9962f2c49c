/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* reject6.h: reject.h's packet builders for IPv6 (included by reject.h under SLUICE_IPV6): the
 * TCP RST, and ICMPv6 destination unreachable (RFC 4443 3.1) quoting the packet's IPv6 header,
 * its extension headers and the start of its L4 header, as IPv4's quotes. Both are checksummed
 * over the IPv6 pseudo-header. The reply carries no extension header. */
#ifndef SLUICE_REJECT6_H
#define SLUICE_REJECT6_H

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PORT_UNREACH 4
#define REJECT_ICMP_TYPE ICMPV6_DEST_UNREACH
#define REJECT_ICMP_CODE ICMPV6_PORT_UNREACH
/* The ICMPv6 header and the longest quote: the headers parse6.h walks, and TCP's 20 bytes. */
#define ICMP_QUOTE_MAX_WORDS ((8 + L3_MAX + 20) / 2)

struct icmp6_hdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest;
};

/* The IPv6 pseudo-header's sum (RFC 8200 8.1) for an upper-layer packet of len bytes. */
static __always_inline __u32 csum_pseudo6(const union addr6 *s, const union addr6 *d, __u8 proto, __u16 len)
{
	__u64 c = 0;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		c += (s->w[i] & 0xffff) + (s->w[i] >> 16);
		c += (d->w[i] & 0xffff) + (d->w[i] >> 16);
	}
	c += bpf_htons(proto);
	c += bpf_htons(len);
	return csum_fold(c);
}

static __always_inline void put_ipv6(struct ipv6hdr *ip6, const union addr6 *saddr, const union addr6 *daddr,
				     __u8 proto, __u16 payload_len)
{
	*(__be32 *)ip6 = bpf_htonl(0x60000000); /* version 6, traffic class 0, no flow label */
	ip6->payload_len = bpf_htons(payload_len);
	ip6->nexthdr = proto;
	ip6->hop_limit = REJECT_TTL;
	__builtin_memcpy(&ip6->saddr, saddr, sizeof(*saddr));
	__builtin_memcpy(&ip6->daddr, daddr, sizeof(*daddr));
}

/* As IPv4's reject_tcp (rst_answering). p is the scratch's copy: the addresses it holds stay as
 * they arrived while the packet is rewritten. */
static __always_inline int reject_tcp(void *ctx, const bool xdp, const struct pkt *p)
{
	void *data = ctx_data(ctx, xdp);
	void *data_end = ctx_data_end(ctx, xdp);
	__u32 l2 = p->l3_off & 0x1f;
	struct tcphdr *th = data + (p->l4_off & L4_OFF_MASK);
	if ((void *)(th + 1) > data_end)
		return -1;

	struct rst r;
	rst_answering(th, p->ip_len - (p->l4_off - p->l3_off) - th->doff * 4, &r);

	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + l2;
	th = data + l2 + sizeof(struct ipv6hdr);
	if ((void *)(th + 1) > data_end || (void *)(eth + 1) > data_end)
		return -1;
	swap_macs(eth);
	put_ipv6(ip6, &p->daddr, &p->saddr, IPPROTO_TCP, sizeof(struct tcphdr));

	put_rst(th, &r);
	__u32 sum = csum_pseudo6(&p->daddr, &p->saddr, IPPROTO_TCP, sizeof(struct tcphdr));
	sum += csum_words((__u16 *)th, sizeof(*th) / 2);
	th->check = (__u16)~csum_fold(sum);

	return ctx_trim(ctx, xdp, l2 + sizeof(struct ipv6hdr) + sizeof(struct tcphdr));
}

/* Wrap p's headers, up to its L4 checksum, into an ICMPv6 error of type/code from p's
 * destination to its source; `rest` is the header's second word (packet too big: the MTU). */
static __always_inline int icmp_error_reply(void *ctx, const bool xdp, const struct pkt *p,
					    __u8 type, __u8 code, __be32 rest)
{
	const __u32 room = sizeof(struct ipv6hdr) + sizeof(struct icmp6_hdr);
	__u32 l2 = p->l3_off & 0x1f;
	__u32 quote = (p->l4_off - p->l3_off) + icmp_quote_l4(p);

	if (ctx_trim(ctx, xdp, l2 + quote))
		return -1;
	if (ctx_insert_after_l2(ctx, xdp, room, l2))
		return -1;

	void *data = ctx_data(ctx, xdp);
	void *data_end = ctx_data_end(ctx, xdp);
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + l2;
	struct icmp6_hdr *ih = data + l2 + sizeof(struct ipv6hdr);
	if ((void *)(ih + 1) > data_end || (void *)(eth + 1) > data_end)
		return -1;
	swap_macs(eth);
	__u16 len = sizeof(struct icmp6_hdr) + quote;
	put_ipv6(ip6, &p->daddr, &p->saddr, IPPROTO_ICMPV6, len);
	ih->type = type;
	ih->code = code;
	ih->checksum = 0;
	ih->rest = rest;

	__u32 words = len / 2;
	__u32 sum = csum_pseudo6(&p->daddr, &p->saddr, IPPROTO_ICMPV6, len);
	for (__u32 i = 0; i < ICMP_QUOTE_MAX_WORDS; i++) {
		if (i >= words)
			break;
		void *w = (void *)ih + i * 2;
		asm volatile("" : "+r"(w)); /* as IPv4's: no folding into data_end arithmetic */
		if (w + 2 > data_end)
			return -1;
		sum += *(__u16 *)w;
	}
	ih->checksum = (__u16)~csum_fold(sum);
	return 0;
}

#endif
