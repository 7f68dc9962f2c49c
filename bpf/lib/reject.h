/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* reject.h: refuse a connection to a service with no ready endpoint as kube-proxy does (TCP RST,
 * ICMP port unreachable for UDP), built in place from the client's packet and sent straight back
 * out of the device it came in on, so the client fails at once instead of timing out.
 *
 * Both builders read every field they need before writing, because the reply overlaps the
 * original headers. The L2 header (and its VLAN tag) is kept, with the MACs swapped. */
#ifndef SLUICE_REJECT_H
#define SLUICE_REJECT_H

#include "csum.h"
#include "parse.h"
#include "stats.h"

#define REJECT_TTL 64

static __always_inline void swap_macs(struct ethhdr *eth)
{
	__u8 tmp[ETH_ALEN];
	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
}

/* The RST that answers a TCP segment (RFC 9293 3.10.7.1, as Linux's tcp_v4_send_reset): with
 * ACK set, <SEQ=SEG.ACK><RST>; otherwise <SEQ=0><ACK=SEG.SEQ+SEG.LEN><RST,ACK>, where SYN and
 * FIN count in SEG.LEN (seg_len: the payload's length). */
struct rst {
	__be32 seq;
	__be32 ack;
	__be16 sport;
	__be16 dport;
	bool had_ack;
};

static __always_inline void rst_answering(const struct tcphdr *th, __u32 seg_len, struct rst *r)
{
	if (th->syn)
		seg_len++;
	if (th->fin)
		seg_len++;
	r->had_ack = th->ack;
	r->seq = r->had_ack ? th->ack_seq : 0;
	r->ack = r->had_ack ? 0 : bpf_htonl(bpf_ntohl(th->seq) + seg_len);
	r->sport = th->dest;
	r->dport = th->source;
}

/* Write r as a TCP header without options at th (the checksum is the family's to fill in). */
static __always_inline void put_rst(struct tcphdr *th, const struct rst *r)
{
	__builtin_memset(th, 0, sizeof(*th));
	th->source = r->sport;
	th->dest = r->dport;
	th->seq = r->seq;
	th->ack_seq = r->ack;
	th->doff = 5;
	th->rst = 1;
	th->ack = !r->had_ack;
}

/* How much of p's L4 header an ICMP error about it quotes: at least 8 bytes (RFC 792), and up
 * to the L4 checksum, since the kernel will not cut a packet whose checksum it is still to fill
 * in (CHECKSUM_PARTIAL, from a sender on a veth) before that field: TCP 20, SCTP 12, UDP 8. */
static __always_inline __u32 icmp_quote_l4(const struct pkt *p)
{
	return p->proto == IPPROTO_TCP ? sizeof(struct tcphdr) :
	       p->proto == IPPROTO_SCTP ? sizeof(struct sctphdr) : sizeof(struct udphdr);
}

#ifdef SLUICE_IPV6
#include "reject6.h"
#else
#define ICMP_QUOTE_MAX_WORDS ((sizeof(struct icmphdr) + 60 + 20) / 2)
#define REJECT_ICMP_TYPE ICMP_DEST_UNREACH
#define REJECT_ICMP_CODE ICMP_PORT_UNREACH

static __always_inline void put_ipv4(struct iphdr *iph, __be32 saddr, __be32 daddr, __u8 proto,
				     __u16 tot_len)
{
	*(__u8 *)iph = 0x45; /* version 4, IHL 5: the reply carries no options */
	iph->tos = 0;
	iph->tot_len = bpf_htons(tot_len);
	iph->id = 0;
	iph->frag_off = bpf_htons(0x4000); /* DF */
	iph->ttl = REJECT_TTL;
	iph->protocol = proto;
	iph->saddr = saddr;
	iph->daddr = daddr;
	iph->check = csum_ipv4_hdr20(iph);
}

/* Turn a TCP segment into the RST that answers it (rst_answering). */
static __always_inline int reject_tcp(void *ctx, const bool xdp, const struct pkt *p)
{
	void *data = ctx_data(ctx, xdp);
	void *data_end = ctx_data_end(ctx, xdp);
	__u32 l2 = p->l3_off & 0x1f;
	struct tcphdr *th = data + (p->l4_off & 0x7f);
	if ((void *)(th + 1) > data_end)
		return -1;

	struct rst r;
	rst_answering(th, p->ip_len - p->ihl * 4 - th->doff * 4, &r);

	struct ethhdr *eth = data;
	struct iphdr *iph = data + l2;
	th = data + l2 + sizeof(struct iphdr);
	if ((void *)(th + 1) > data_end || (void *)(eth + 1) > data_end)
		return -1;
	swap_macs(eth);
	put_ipv4(iph, p->daddr, p->saddr, IPPROTO_TCP, sizeof(struct iphdr) + sizeof(struct tcphdr));

	put_rst(th, &r);
	__u32 sum = csum_pseudo(p->daddr, p->saddr, IPPROTO_TCP, sizeof(struct tcphdr));
	sum += csum_words((__u16 *)th, sizeof(*th) / 2);
	th->check = (__u16)~csum_fold(sum);

	return ctx_trim(ctx, xdp, l2 + sizeof(struct iphdr) + sizeof(struct tcphdr));
}

/* Wrap p's IPv4 header and the start of its L4 header into an ICMP error of type/code from p's
 * destination to its source; `rest` is the header's second word (the next-hop MTU of
 * "fragmentation needed"). The tail is cut first: that also drops a GSO sk_buff's offload
 * state, which must not be applied to the error. */
static __always_inline int icmp_error_reply(void *ctx, const bool xdp, const struct pkt *p,
					    __u8 type, __u8 code, __be32 rest)
{
	const __u32 room = sizeof(struct iphdr) + sizeof(struct icmphdr);
	__u32 l2 = p->l3_off & 0x1f;
	__u32 quote = p->ihl * 4 + icmp_quote_l4(p);

	if (ctx_trim(ctx, xdp, l2 + quote))
		return -1;
	if (ctx_insert_after_l2(ctx, xdp, room, l2))
		return -1;

	void *data = ctx_data(ctx, xdp);
	void *data_end = ctx_data_end(ctx, xdp);
	struct ethhdr *eth = data;
	struct iphdr *iph = data + l2;
	struct icmphdr *ih = data + l2 + sizeof(struct iphdr);
	if ((void *)(ih + 1) > data_end || (void *)(eth + 1) > data_end)
		return -1;
	swap_macs(eth);
	put_ipv4(iph, p->daddr, p->saddr, IPPROTO_ICMP, room + quote);
	ih->type = type;
	ih->code = code;
	ih->checksum = 0;
	ih->un.gateway = rest;

	/* ICMP checksum over the ICMP header and the quote: at most 8 + 60 + 20 bytes. */
	__u32 words = (sizeof(struct icmphdr) + quote) / 2;
	__u32 sum = 0;
	for (__u32 i = 0; i < ICMP_QUOTE_MAX_WORDS; i++) {
		if (i >= words)
			break;
		void *w = (void *)ih + i * 2;
		/* Keep the compiler from folding the check into arithmetic on data_end, which the
		 * verifier refuses. */
		asm volatile("" : "+r"(w));
		if (w + 2 > data_end)
			return -1;
		sum += *(__u16 *)w;
	}
	ih->checksum = (__u16)~csum_fold(sum);
	return 0;
}

#endif /* SLUICE_IPV6 */

/* Refuse p; returns the verdict. */
static __always_inline int reject(void *ctx, const bool xdp, const struct pkt *p, __u32 svc_id)
{
	/* A GSO skb's checksum offload state would be applied to the rebuilt packet on the way
	 * out: let the kernel answer it (it has no socket there either). */
	if (!xdp && ((struct __sk_buff *)ctx)->gso_segs > 1)
		return TC_ACT_OK;
	int err = p->proto == IPPROTO_TCP ? reject_tcp(ctx, xdp, p) :
		  icmp_error_reply(ctx, xdp, p, REJECT_ICMP_TYPE, REJECT_ICMP_CODE, 0);
	if (err) {
		count_reason(REASON_DROP_REJECT_FAILED);
		return VERDICT_DROP(xdp);
	}
	count_reason(p->proto == IPPROTO_TCP ? REASON_REJECT_TCP_RST : REASON_REJECT_ICMP_UNREACHABLE);
	count_rejected(svc_id);
	return ctx_bounce(ctx, xdp);
}

#endif
