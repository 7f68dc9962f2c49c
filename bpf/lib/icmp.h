/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* icmp.h: ICMP errors about translated flows, translated for the flow's other end, as Linux's
 * conntrack NAT does for RELATED packets (nf_nat_icmp_reply_translation).
 *
 * An error quotes the packet it is about, as that packet was when it met the error: a backend's
 * "port unreachable" or a router's "fragmentation needed" quotes the node's SNAT address and
 * port; a router on the client's side quotes the frontend. The quoted tuple turned around is a
 * flow's conntrack key at the hook that sees the error, so one lookup finds the flow, and the
 * entry's rewrite gives the quote the tuple the other end knows, and the error its addresses:
 * the destination is the flow's other end; the source becomes the address that end talks to
 * when the flow rewrites sources (the frontend for clients, the SNAT address for remote
 * backends), and stays the reporting router's when it does not (a local backend sees clients'
 * own addresses).
 *
 * tc only (XDP passes ICMP to tc): errors are rare, and the rewrite touches the quote's IPv4
 * and L4 checksums and the ICMP checksum over them. Errors are translated at tc ingress (about
 * remote flows, and about local backends' replies) and at tc egress (a local backend's, or the
 * node's own, about a client's packet). */
#ifndef SLUICE_ICMP_H
#define SLUICE_ICMP_H

#include "ct.h"
#include "fib.h"
#include "stats.h"

/* The packet an ICMP error quotes. Offsets are from the start of the frame. */
struct icmp_quote {
	__u16 in_l3;       /* its IPv4 header */
	__u16 in_l4;       /* its L4 header */
	__u16 in_l4_len;   /* how many L4 bytes are quoted (8 at least) */
	__u16 ip_check;    /* its IPv4 header checksum (IPv6 has none) */
	__u16 l4_check;    /* its TCP or UDP checksum, if quoted (l4_check_off != 0) */
	__u8 l4_check_off; /* where in the L4 header, 0: not quoted, UDP's 0 ("none"), or SCTP */
	__u8 proto;
	addr_t saddr;
	addr_t daddr;
	__be16 sport;
	__be16 dport;
};

/* The flow an error's quote q is about, at the hook egress says, or NULL; and what the error
 * becomes: the quote's tuple as the flow's other end knows it (in), and the error's addresses
 * (out): to that end, from the address it talks to when the flow rewrites sources (the
 * frontend, a SNAT address), else from the reporting router still. */
static __always_inline struct ct_entry *icmp_flow(const struct pkt *p, const struct icmp_quote *q, bool egress,
						  struct tuple *in, struct tuple *out)
{
	/* An error goes to whoever sent the packet it quotes. */
	if (!ADDR_EQ(p->daddr, q->saddr))
		return 0;
	struct ct_key k = {
		.saddr = q->daddr,
		.daddr = q->saddr,
		.sport = q->dport,
		.dport = q->sport,
		.proto = q->proto,
	};
	struct ct_entry *e = ct_lookup(&k, egress ? CT_F_EGRESS : CT_F_INGRESS, bpf_ktime_get_ns());
	if (!e)
		return 0;
	trace_flow(TRACE_RELATED, e);
	in->saddr = e->nat_daddr;
	in->daddr = e->nat_saddr;
	in->sport = e->nat_dport;
	in->dport = e->nat_sport;
	out->saddr = !ADDR_EQ(e->nat_saddr, k.saddr) ? e->nat_saddr : p->saddr;
	out->daddr = e->nat_daddr;
	out->sport = out->dport = 0;
	return e;
}

#ifdef SLUICE_IPV6
#include "icmp6.h"
#else
/* Quote bytes read: the IPv4 header with options, and TCP up to its checksum. */
#define ICMP_QUOTE_READ (sizeof(struct icmphdr) + 60 + 20)

static __always_inline int icmp_quote_parse(struct __sk_buff *skb, const struct pkt *p,
					    struct icmp_quote *q)
{
	if (p->ip_len < p->ihl * 4 + sizeof(struct icmphdr) + sizeof(struct iphdr) + 8)
		return -1;
	ctx_pull(skb, false, p->l4_off + ICMP_QUOTE_READ);
	void *data = ctx_data(skb, false);
	void *data_end = ctx_data_end(skb, false);
	struct icmphdr *ih = data + (p->l4_off & 0x7f);
	if ((void *)(ih + 1) > data_end)
		return -1;
	if (ih->type != ICMP_DEST_UNREACH && ih->type != ICMP_TIME_EXCEEDED &&
	    ih->type != ICMP_PARAMETERPROB)
		return -1;
	struct iphdr *in = (void *)(ih + 1);
	if ((void *)(in + 1) > data_end)
		return -1;
	/* A later fragment quotes no ports. */
	if (in->version != 4 || in->ihl < 5 || (in->frag_off & bpf_htons(IP_OFFSET)))
		return -1;
	if (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP && in->protocol != IPPROTO_SCTP)
		return -1;
	__u32 in_hlen = in->ihl * 4;
	__u32 quoted = p->ip_len - p->ihl * 4 - sizeof(struct icmphdr);
	if (quoted < in_hlen + 8)
		return -1;
	q->in_l3 = p->l4_off + sizeof(struct icmphdr);
	q->in_l4 = q->in_l3 + in_hlen;
	q->in_l4_len = quoted - in_hlen;
	q->proto = in->protocol;
	q->saddr = in->saddr;
	q->daddr = in->daddr;
	q->ip_check = in->check;

	__be16 *ports = data + (q->in_l4 & 0xff);
	if ((void *)(ports + 2) > data_end)
		return -1;
	q->sport = ports[0];
	q->dport = ports[1];

	/* SCTP's CRC covers the whole packet, which the quote does not hold: left as it is (the
	 * kernel's SCTP error handler does not check it). */
	__u8 off = q->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check) :
		   q->proto == IPPROTO_UDP ? offsetof(struct udphdr, check) : 0;
	if (off && q->in_l4_len >= off + 2) {
		__u16 *c = data + ((q->in_l4 + off) & 0xff);
		if ((void *)(c + 1) <= data_end && !(q->proto == IPPROTO_UDP && *c == 0)) {
			q->l4_check = *c;
			q->l4_check_off = off;
		}
	}
	return 0;
}

/* Give the error the outer addresses `out` (TTL decremented when we forward it) and the quote
 * the tuple `in`, with every checksum that covers them: the outer IPv4 header's, the quote's
 * IPv4 and L4 (when quoted) ones, and the ICMP checksum over the quote. */
static __always_inline int icmp_rewrite(struct __sk_buff *skb, const struct pkt *p,
					const struct icmp_quote *q, const struct tuple *in,
					const struct tuple *out, bool dec_ttl)
{
	__u32 l3 = p->l3_off;
	__u16 ttl_old, ttl_new;
	if (bpf_skb_load_bytes(skb, l3 + offsetof(struct iphdr, ttl), &ttl_old, 2))
		return -1;
	ttl_new = ttl_old;
	if (dec_ttl)
		((__u8 *)&ttl_new)[0]--;
	__u32 ip_diff = csum_diff4(0, p->saddr, out->saddr);
	ip_diff = csum_diff4(ip_diff, p->daddr, out->daddr);
	ip_diff = csum_diff2(ip_diff, ttl_old, ttl_new);
	__be32 out_addrs[2] = {out->saddr, out->daddr};
	if (bpf_skb_store_bytes(skb, l3 + offsetof(struct iphdr, ttl), &ttl_new, 2, 0) ||
	    bpf_skb_store_bytes(skb, l3 + offsetof(struct iphdr, saddr), out_addrs, 8, 0) ||
	    bpf_l3_csum_replace(skb, l3 + offsetof(struct iphdr, check), 0, ip_diff, 0))
		return -1;

	__u32 addr_diff = csum_diff4(0, q->saddr, in->saddr);
	addr_diff = csum_diff4(addr_diff, q->daddr, in->daddr);
	__u32 port_diff = csum_diff2(0, q->sport, in->sport);
	port_diff = csum_diff2(port_diff, q->dport, in->dport);
	__u16 ip_check = csum_apply(q->ip_check, addr_diff);
	/* The ICMP checksum covers every quoted word we change, checksums included. */
	__u32 icmp_diff = csum_fold((__u64)addr_diff + port_diff);
	icmp_diff = csum_diff2(icmp_diff, q->ip_check, ip_check);
	__be32 in_addrs[2] = {in->saddr, in->daddr};
	__be16 in_ports[2] = {in->sport, in->dport};
	if (bpf_skb_store_bytes(skb, q->in_l3 + offsetof(struct iphdr, saddr), in_addrs, 8, 0) ||
	    bpf_skb_store_bytes(skb, q->in_l3 + offsetof(struct iphdr, check), &ip_check, 2, 0) ||
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
	return bpf_l4_csum_replace(skb, p->l4_off + offsetof(struct icmphdr, checksum), 0, icmp_diff, 0) ? -1 : 0;
}

/* Translate the ICMP error in skb if it is about one of our flows; egress says which hook runs.
 * Returns the verdict (TC_ACT_OK untouched when the error is not about a flow of ours). Inlined
 * on a branch of its own: as a global function its frame would add to the packet path's, over
 * the 512 bytes of stack a program may have. */
static __always_inline int icmp_related(struct __sk_buff *skb, bool egress)
{
	struct pkt p = {};
	if (parse_pkt(skb, false, &p) != PARSE_OTHER_L4 || p.proto != IPPROTO_ICMP)
		return TC_ACT_OK;
	struct icmp_quote q = {};
	if (icmp_quote_parse(skb, &p, &q))
		return TC_ACT_OK;
	struct tuple in, out;
	struct ct_entry *e = icmp_flow(&p, &q, egress, &in, &out);
	if (!e)
		return TC_ACT_OK;

	/* At egress the error is on its way already; about a local backend's flow, the stack
	 * routes it into the pod (its source is not ours). */
	if (egress || (e->flags & CT_F_LOCAL)) {
		if (icmp_rewrite(skb, &p, &q, &in, &out, false))
			return TC_ACT_SHOT;
		count_reason(REASON_ICMP_RELATED);
		return TC_ACT_OK;
	}
	/* Its new source is a node address: forwarded by us, as the flow's packets are (the
	 * stack would take it for a martian). */
	struct scratch *s = scratch();
	if (!s)
		return TC_ACT_SHOT;
	struct bpf_fib_lookup *fib = (struct bpf_fib_lookup *)s->fib;
	__builtin_memset(fib, 0, sizeof(*fib));
	int rc = fwd_lookup(skb, false, fib, &out, IPPROTO_ICMP, p.tos, 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		count_reason(REASON_DROP_NO_ROUTE);
		return TC_ACT_SHOT;
	}
	__u8 ttl;
	if (bpf_skb_load_bytes(skb, p.l3_off + offsetof(struct iphdr, ttl), &ttl, 1) || ttl <= 1) {
		count_reason(REASON_DROP_TTL_EXCEEDED);
		return TC_ACT_SHOT;
	}
	if (icmp_rewrite(skb, &p, &q, &in, &out, true))
		return TC_ACT_SHOT;
	count_reason(REASON_ICMP_RELATED);
	return fwd_send(skb, false, rc, fib);
}

#endif /* SLUICE_IPV6 */

#endif
