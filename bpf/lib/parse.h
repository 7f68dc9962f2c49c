/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* parse.h: Ethernet (one VLAN tag), IPv4 (with options), TCP, UDP and SCTP, with a bounds check before
 * every read. The result is a struct pkt of offsets and header fields, so later stages can
 * re-derive pointers after a helper has invalidated them. */
#ifndef SLUICE_PARSE_H
#define SLUICE_PARSE_H

#include "addr.h"
#include "ctx.h"
#include "sctp.h"

#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

#define L2_MAX 18 /* Ethernet and one VLAN tag */
#ifdef SLUICE_IPV6
/* The IPv6 header and its extension headers before L4: at most this much (parse6.h). */
#define L3_MAX 256
#define L4_OFF_MASK 0x1ff
#else
/* The largest L2 + L3 header we parse: Ethernet, one VLAN tag, IPv4 with 40 bytes of options. */
#define L3_MAX 60
#define L4_OFF_MASK 0x7f
#endif
#define L4_OFF_MAX (L2_MAX + L3_MAX)

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IPV4,   /* ARP, ...: not the family this object is for, nor ours */
	PARSE_IPV6,       /* IPv6 to the IPv4 programs: the IPv6 programs' (nodeport.h) */
	PARSE_OTHER_L4,   /* ICMP, ...: not ours */
	PARSE_MALFORMED,  /* truncated or inconsistent headers: passed untouched, counted */
	PARSE_FRAGMENT,   /* IPv4 fragment after the first (no L4 header): see frag.h */
};

/* A parsed packet. Offsets are from the start of the frame. */
struct pkt {
	__u32 len;        /* whole frame */
	__u16 l3_off;     /* 14 or 18 */
	__u16 l4_off;     /* l3_off + IHL*4 */
	addr_t saddr;
	addr_t daddr;
	__be16 sport;
	__be16 dport;
	__u16 ip_len;     /* IPv4 total length */
#ifdef SLUICE_IPV6
	__be32 ip_id;     /* the fragment header's identification */
#else
	__be16 ip_id;     /* IPv4 identification: which datagram a fragment belongs to */
#endif
	__u8 proto;
	__u8 tcp_flags;   /* TCP_F_* below; for SCTP, TCP_F_SYN marks an INIT chunk */
	__u8 tos;
	__u8 ihl;
	__u8 vlan;        /* 1 if the frame carries a VLAN tag */
	__u8 df;          /* 1 if the IPv4 header says don't fragment */
	__u8 frag;        /* FRAG_FIRST, FRAG_LATER, or 0 for a whole datagram */
	__u8 l4_hlen;     /* TCP header with options, UDP 8, SCTP 12 (for GSO segment sizes) */
};                        /* 32 bytes: every path keeps one on its stack */

#define FRAG_FIRST 1 /* offset 0, more to come: has the L4 header */
#define FRAG_LATER 2 /* offset > 0: no L4 header; its ports come from frag.h */

#define TCP_F_FIN 0x01
#define TCP_F_SYN 0x02
#define TCP_F_RST 0x04
#define TCP_F_ACK 0x10

/* Ethernet and at most one VLAN tag: where L3 starts and its ethertype. -1 if truncated. */
static __always_inline int parse_l2(void *data, void *data_end, __u16 *l3_off, __be16 *h_proto)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	*l3_off = sizeof(*eth);
	*h_proto = eth->h_proto;
	if (*h_proto == bpf_htons(ETH_P_8021Q) || *h_proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vh = (void *)(eth + 1);
		if ((void *)(vh + 1) > data_end)
			return -1;
		*h_proto = vh->proto;
		*l3_off += sizeof(*vh);
	}
	return 0;
}

/* The L4 header at p->l4_off (l3_hlen bytes past the L3 header, p->ip_len the L3 length):
 * ports, TCP flags, and whether it fits. Both families' parsers end here. */
static __always_inline int parse_l4(void *ctx, const bool xdp, struct pkt *p, __u16 l3_hlen)
{
	void *data = ctx_data(ctx, xdp);
	void *data_end = ctx_data_end(ctx, xdp);
	__u16 ip_len = p->ip_len;
	__u16 hlen = l3_hlen;
	__u32 l4_need = p->proto == IPPROTO_TCP ? sizeof(struct tcphdr) :
			p->proto == IPPROTO_SCTP ? sizeof(struct sctphdr) + 4 : sizeof(struct udphdr);
	if (!xdp && (__u32)(data_end - data) < (__u32)p->l4_off + l4_need) {
		ctx_pull(ctx, xdp, p->l4_off + l4_need);
		data = ctx_data(ctx, xdp);
		data_end = ctx_data_end(ctx, xdp);
	}
	/* The verifier needs l4 bounded; the parsers hold l4_off within L4_OFF_MASK. */
	void *l4 = data + (p->l4_off & L4_OFF_MASK);
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			return PARSE_MALFORMED;
		if (th->doff < 5 || ip_len < hlen + th->doff * 4)
			return PARSE_MALFORMED;
		p->sport = th->source;
		p->dport = th->dest;
		p->l4_hlen = th->doff * 4;
		p->tcp_flags = (th->fin ? TCP_F_FIN : 0) | (th->syn ? TCP_F_SYN : 0) |
			       (th->rst ? TCP_F_RST : 0) | (th->ack ? TCP_F_ACK : 0);
	} else if (p->proto == IPPROTO_SCTP) {
		/* The common header, and the first chunk's type: only an INIT opens a flow. */
		struct sctphdr *sh = l4;
		__u8 *chunk = (void *)(sh + 1);
		if ((void *)(sh + 1) > data_end || ip_len < hlen + sizeof(*sh) + 4)
			return PARSE_MALFORMED;
		if ((void *)(chunk + 1) > data_end)
			return PARSE_MALFORMED;
		p->sport = sh->source;
		p->dport = sh->dest;
		p->l4_hlen = sizeof(*sh);
		p->tcp_flags = *chunk == SCTP_CHUNK_INIT ? TCP_F_SYN : 0;
	} else {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > data_end)
			return PARSE_MALFORMED;
		/* A first fragment's UDP length is the whole datagram's. */
		if (ip_len < hlen + sizeof(*uh) || bpf_ntohs(uh->len) < sizeof(*uh) ||
		    (bpf_ntohs(uh->len) > ip_len - hlen && !p->frag))
			return PARSE_MALFORMED;
		p->sport = uh->source;
		p->dport = uh->dest;
		p->l4_hlen = sizeof(*uh);
	}
	return PARSE_OK;
}

#ifdef SLUICE_IPV6
#include "parse6.h"
#else
static __always_inline int parse_pkt(void *ctx, const bool xdp, struct pkt *p)
{
	/* Headers may sit in a non-linear tc skb: pull what the L2 and L3 headers need, and the L4
	 * header's below, each only when not linear already. Pulling more than that would copy
	 * the head of every cloned sk_buff (every TCP segment the node sends is one), even when
	 * its headers are all there. */
	ctx_pull(ctx, xdp, L2_MAX + sizeof(struct iphdr));

	void *data = ctx_data(ctx, xdp);
	void *data_end = ctx_data_end(ctx, xdp);
	__u16 l3_off;
	__be16 h_proto;
	if (parse_l2(data, data_end, &l3_off, &h_proto))
		return PARSE_MALFORMED;
	if (h_proto == bpf_htons(ETH_P_IPV6))
		return PARSE_IPV6;
	if (h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;
	p->vlan = l3_off != sizeof(struct ethhdr);

	struct iphdr *iph = data + l3_off;
	if ((void *)(iph + 1) > data_end)
		return PARSE_MALFORMED;
	if (iph->version != 4 || iph->ihl < 5)
		return PARSE_MALFORMED;

	__u32 len = ctx_len(ctx, xdp);
	__u16 ip_len = bpf_ntohs(iph->tot_len);
	__u16 hlen = iph->ihl * 4;
	if (ip_len < hlen || l3_off + ip_len > len)
		return PARSE_MALFORMED;

	p->len = len;
	p->l3_off = l3_off;
	p->l4_off = l3_off + hlen;
	p->saddr = iph->saddr;
	p->daddr = iph->daddr;
	p->proto = iph->protocol;
	p->ip_len = ip_len;
	p->tos = iph->tos;
	p->ihl = iph->ihl;
	p->df = (iph->frag_off & bpf_htons(IP_DF)) != 0;
	p->ip_id = iph->id;
	if (iph->frag_off & bpf_htons(IP_OFFSET)) {
		p->frag = FRAG_LATER;
		return PARSE_FRAGMENT;
	}
	if (iph->frag_off & bpf_htons(IP_MF))
		p->frag = FRAG_FIRST;

	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP && p->proto != IPPROTO_SCTP)
		return PARSE_OTHER_L4;
	/* SCTP's CRC covers the whole packet, whose length no first fragment tells. */
	if (p->frag && p->proto == IPPROTO_SCTP)
		return PARSE_FRAGMENT;

	return parse_l4(ctx, xdp, p, hlen);
}

/* The TTL p arrived with, or -1 if the header is no longer there. */
static __always_inline int pkt_ttl(void *ctx, const bool xdp, const struct pkt *p)
{
	void *data = ctx_data(ctx, xdp);
	void *data_end = ctx_data_end(ctx, xdp);
	struct iphdr *iph = data + (p->l3_off & 0x1f);
	if ((void *)(iph + 1) > data_end)
		return -1;
	return iph->ttl;
}

/* Is the IPv4 header checksum right? The kernel drops a packet whose header checksum is wrong;
 * translating and forwarding it from XDP would launder it, so such packets are left to the
 * kernel. (L4 checksums are updated incrementally: a wrong one stays wrong, and the receiver
 * drops it, as after any router.) */
static __always_inline bool l3_csum_ok(void *ctx, const bool xdp, const struct pkt *p)
{
	void *data = ctx_data(ctx, xdp);
	void *data_end = ctx_data_end(ctx, xdp);
	void *ip = data + (p->l3_off & 0x1f);
	__u32 words = p->ihl * 2;
	__u32 sum = 0;
	for (__u32 i = 0; i < 30; i++) {
		if (i >= words)
			break;
		void *w = ip + i * 2;
		asm volatile("" : "+r"(w));
		if (w + 2 > data_end)
			return false;
		sum += *(__u16 *)w;
	}
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

#endif /* SLUICE_IPV6 */

#endif
