/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* parse6.h: parse_pkt for IPv6 (included by parse.h under SLUICE_IPV6). The extension headers
 * before L4 (hop-by-hop, destination options, routing with no segment left, fragment) are
 * walked with a bounded loop; a packet with more of them than IPV6_EXT_MAX, with an extension
 * header sluice does not walk (AH, ESP, a routing header still on its way), or whose headers
 * end past L3_MAX is passed untouched and counted: the kernel handles it, as it handles every
 * packet that is not ours. */
#ifndef SLUICE_PARSE6_H
#define SLUICE_PARSE6_H

#include <linux/ipv6.h>

#ifndef NEXTHDR_HOP
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST 60
#endif
#define IPV6_EXT_MAX 4

/* The fragment header (RFC 8200 4.5). */
struct frag6_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset in 8-byte units << 3, M flag in bit 0 */
	__be32 id;
};
#define IP6_OFFSET 0xfff8
#define IP6_MF 0x0001

static __always_inline int parse_pkt(void *ctx, const bool xdp, struct pkt *p)
{
	/* As IPv4's: pull only what the fixed headers need, and more only when not linear. */
	ctx_pull(ctx, xdp, L2_MAX + sizeof(struct ipv6hdr));

	void *data = ctx_data(ctx, xdp);
	void *data_end = ctx_data_end(ctx, xdp);
	__u16 l3_off;
	__be16 h_proto;
	if (parse_l2(data, data_end, &l3_off, &h_proto))
		return PARSE_MALFORMED;
	if (h_proto != bpf_htons(ETH_P_IPV6))
		return PARSE_NOT_IPV4;
	p->vlan = l3_off != sizeof(struct ethhdr);

	struct ipv6hdr *ip6 = data + l3_off;
	if ((void *)(ip6 + 1) > data_end)
		return PARSE_MALFORMED;
	if (ip6->version != 6)
		return PARSE_MALFORMED;
	__u32 len = ctx_len(ctx, xdp);
	__u32 plen = bpf_ntohs(ip6->payload_len);
	/* A payload length of 0 is a jumbogram's (hop-by-hop option): not on the links we run on. */
	if (plen == 0 || l3_off + sizeof(*ip6) + plen > len)
		return PARSE_MALFORMED;

	p->len = len;
	p->l3_off = l3_off;
	__builtin_memcpy(&p->saddr, &ip6->saddr, sizeof(p->saddr));
	__builtin_memcpy(&p->daddr, &ip6->daddr, sizeof(p->daddr));
	p->ip_len = sizeof(*ip6) + plen;
	p->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
	p->ihl = 0;
	/* IPv6 routers never fragment: every packet is as if DF were set. */
	p->df = 1;

	__u8 nexthdr = ip6->nexthdr;
	__u16 off = sizeof(*ip6);
	for (int i = 0; i < IPV6_EXT_MAX; i++) {
		if (nexthdr != NEXTHDR_HOP && nexthdr != NEXTHDR_ROUTING && nexthdr != NEXTHDR_DEST &&
		    nexthdr != NEXTHDR_FRAGMENT)
			break;
		if (!xdp)
			ctx_pull(ctx, xdp, l3_off + off + sizeof(struct frag6_hdr));
		data = ctx_data(ctx, xdp);
		data_end = ctx_data_end(ctx, xdp);
		/* l3_off + off stays below L2_MAX + L3_MAX: the verifier sees it bounded. */
		__u8 *h = data + ((l3_off + off) & L4_OFF_MASK);
		if ((void *)(h + sizeof(struct frag6_hdr)) > data_end)
			return PARSE_MALFORMED;
		if (nexthdr == NEXTHDR_FRAGMENT) {
			struct frag6_hdr *fh = (void *)h;
			p->ip_id = fh->id;
			nexthdr = fh->nexthdr;
			off += sizeof(*fh);
			if (fh->frag_off & bpf_htons(IP6_OFFSET)) {
				p->proto = nexthdr;
				p->l4_off = l3_off + off;
				p->frag = FRAG_LATER;
				return PARSE_FRAGMENT;
			}
			if (fh->frag_off & bpf_htons(IP6_MF))
				p->frag = FRAG_FIRST;
		} else {
			/* A routing header with segments left addresses another node after this one. */
			if (nexthdr == NEXTHDR_ROUTING && h[3] != 0)
				return PARSE_OTHER_L4;
			nexthdr = h[0];
			off += (h[1] + 1) * 8;
		}
		if (off > L3_MAX - sizeof(struct frag6_hdr) || off > p->ip_len)
			return PARSE_MALFORMED;
	}
	p->proto = nexthdr;
	p->l4_off = l3_off + off;

	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP && p->proto != IPPROTO_SCTP)
		return PARSE_OTHER_L4;
	/* SCTP's CRC covers the whole packet, whose length no first fragment tells. */
	if (p->frag && p->proto == IPPROTO_SCTP)
		return PARSE_FRAGMENT;
	int res = parse_l4(ctx, xdp, p, off);
	if (res != PARSE_OK || p->proto != IPPROTO_UDP)
		return res;
	/* UDP over IPv6 must carry a checksum (RFC 8200 8.1): one of 0 is the kernel's to drop. */
	data = ctx_data(ctx, xdp);
	data_end = ctx_data_end(ctx, xdp);
	struct udphdr *uh = data + (p->l4_off & L4_OFF_MASK);
	if ((void *)(uh + 1) > data_end)
		return PARSE_MALFORMED;
	return uh->check ? PARSE_OK : PARSE_MALFORMED;
}

/* The hop limit p arrived with, or -1 if the header is no longer there. */
static __always_inline int pkt_ttl(void *ctx, const bool xdp, const struct pkt *p)
{
	void *data = ctx_data(ctx, xdp);
	void *data_end = ctx_data_end(ctx, xdp);
	struct ipv6hdr *ip6 = data + (p->l3_off & 0x1f);
	if ((void *)(ip6 + 1) > data_end)
		return -1;
	return ip6->hop_limit;
}

/* IPv6 has no header checksum to check. */
static __always_inline bool l3_csum_ok(void *ctx, const bool xdp, const struct pkt *p)
{
	return true;
}

#endif
