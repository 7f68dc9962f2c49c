/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* nat6.h: nat_rewrite_for for IPv6 (included by nat.h under SLUICE_IPV6). IPv6 has no header
 * checksum: the addresses' change goes into the L4 checksum through the pseudo-header, as in
 * IPv4, and the hop limit is written alone. UDP always has a checksum here (parse6.h passes
 * one of 0 to the kernel), and a result of 0 is written as 0xffff (RFC 8200 8.1). */
#ifndef SLUICE_NAT6_H
#define SLUICE_NAT6_H

/* The checksum diff of replacing address a with b. */
static __always_inline __u32 csum_diff_addr6(__u32 diff, const union addr6 *a, const union addr6 *b)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		diff = csum_diff4(diff, a->w[i], b->w[i]);
	return diff;
}

static __always_inline int nat_write_xdp(struct ipv6hdr *ip6, void *l4, void *data_end,
					 const struct pkt *p, const struct tuple *to, bool dec_ttl,
					 __u32 addr_diff, __u32 port_diff, __u32 crc)
{
	if (dec_ttl)
		ip6->hop_limit--;
	__builtin_memcpy(&ip6->saddr, &to->saddr, sizeof(to->saddr));
	__builtin_memcpy(&ip6->daddr, &to->daddr, sizeof(to->daddr));
	return nat_write_l4_xdp(l4, data_end, p, to, addr_diff, port_diff, crc);
}

/* As IPv4's nat_write_tc: only helpers write, so tc egress gets no unclone prologue. */
static __always_inline int nat_write_tc(void *ctx, const struct pkt *p, const struct tuple *to,
					bool dec_ttl, __u8 hop_limit, __u32 addr_diff,
					__u32 port_diff, __u32 crc)
{
	__u32 l3 = p->l3_off;
	__be16 ports[2] = {to->sport, to->dport};
	__u8 hl = hop_limit - 1;
	if (dec_ttl && bpf_skb_store_bytes(ctx, l3 + offsetof(struct ipv6hdr, hop_limit), &hl, 1, 0))
		return -1;
	if (bpf_skb_store_bytes(ctx, l3 + offsetof(struct ipv6hdr, saddr), &to->saddr, 32, 0))
		return -1;
	if (p->frag == FRAG_LATER)
		return 0;
	if (bpf_skb_store_bytes(ctx, p->l4_off, ports, 4, 0))
		return -1;
	if (p->proto == IPPROTO_SCTP)
		return bpf_skb_store_bytes(ctx, p->l4_off + offsetof(struct sctphdr, checksum), &crc, 4, 0) ? -1 : 0;
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 off = l4_csum_off(p);
	if (bpf_l4_csum_replace(ctx, off, 0, addr_diff, BPF_F_PSEUDO_HDR | mangled))
		return -1;
	if (bpf_l4_csum_replace(ctx, off, 0, port_diff, mangled))
		return -1;
	return 0;
}

static __always_inline int nat_rewrite_for(void *ctx, const bool xdp, const struct pkt *p,
					   const struct tuple *to, bool dec_ttl, const bool sctp)
{
	void *data = ctx_data(ctx, xdp);
	void *data_end = ctx_data_end(ctx, xdp);
	struct ipv6hdr *ip6 = data + (p->l3_off & 0x1f);
	if ((void *)(ip6 + 1) > data_end)
		return -1;
	__u8 hop_limit = ip6->hop_limit;
	if (p->frag == FRAG_LATER) {
		/* No L4 header: the addresses and the hop limit only (no header checksum). */
		if (xdp) {
			if (dec_ttl)
				ip6->hop_limit--;
			__builtin_memcpy(&ip6->saddr, &to->saddr, sizeof(to->saddr));
			__builtin_memcpy(&ip6->daddr, &to->daddr, sizeof(to->daddr));
			return 0;
		}
		return nat_write_tc(ctx, p, to, dec_ttl, hop_limit, 0, 0, 0);
	}
	__u8 proto = p->proto;
	void *l4 = data + (p->l4_off & L4_OFF_MASK);
	if (l4 + sizeof(struct tcphdr) > data_end && proto == IPPROTO_TCP)
		return -1;
	if (l4 + sizeof(struct sctphdr) > data_end && proto == IPPROTO_SCTP)
		return -1;
	if (l4 + sizeof(struct udphdr) > data_end)
		return -1;

	/* Read in place: a copy would cost the stack 32 bytes this path cannot spare. */
	__u32 addr_diff = csum_diff_addr6(0, (const union addr6 *)&ip6->saddr, &to->saddr);
	addr_diff = csum_diff_addr6(addr_diff, (const union addr6 *)&ip6->daddr, &to->daddr);
	__be16 *ports = l4;
	__u32 port_diff = csum_diff2(0, ports[0], to->sport);
	port_diff = csum_diff2(port_diff, ports[1], to->dport);
	__u32 crc = 0;
	if (sctp && proto == IPPROTO_SCTP && nat_sctp_crc(l4, data_end, p, to, &crc))
		return -1;
	if (xdp)
		return nat_write_xdp(ip6, l4, data_end, p, to, dec_ttl, addr_diff, port_diff, crc);
	return nat_write_tc(ctx, p, to, dec_ttl, hop_limit, addr_diff, port_diff, crc);
}

#endif
