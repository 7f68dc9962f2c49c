/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* nat.h: rewrite a parsed packet's addresses and ports with correct IPv4 and L4 checksums.
 *
 * XDP updates the checksums by hand (RFC 1624). tc uses bpf_l4_csum_replace, which also handles
 * CHECKSUM_PARTIAL skbs (where the L4 field only holds the pseudo-header sum, so port changes
 * must not touch it). A UDP checksum of 0 means "none" and stays 0. */
#ifndef SLUICE_NAT_H
#define SLUICE_NAT_H

#include "csum.h"
#include "parse.h"

struct tuple {
	addr_t saddr;
	addr_t daddr;
	__be16 sport;
	__be16 dport;
};

/* Does p already carry t (nothing to rewrite)? */
static __always_inline bool tuple_is(const struct tuple *t, const struct pkt *p)
{
	return ADDR_EQ(t->saddr, p->saddr) && ADDR_EQ(t->daddr, p->daddr) && t->sport == p->sport &&
	       t->dport == p->dport;
}

static __always_inline __u16 l4_csum_off(const struct pkt *p)
{
	return p->l4_off + (p->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
						     : offsetof(struct udphdr, check));
}

/* XDP's L4 part of a rewrite, in either family: the ports, then the SCTP CRC or the TCP/UDP
 * checksum by hand (RFC 1624). Each header is checked again where the verifier sees which it
 * is: the caller's checks reach here only as the compiler lays them out, which Linux 5.10 and
 * 6.1 did not follow. A UDP checksum of 0 ("none", IPv4 only: parse6.h passes such IPv6
 * packets to the kernel) stays 0; a result of 0 is written 0xffff. */
static __always_inline int nat_write_l4_xdp(void *l4, void *data_end, const struct pkt *p,
					    const struct tuple *to, __u32 addr_diff, __u32 port_diff,
					    __u32 crc)
{
	__be16 *ports = l4;
	if ((void *)(ports + 2) > data_end)
		return -1;
	ports[0] = to->sport;
	ports[1] = to->dport;
	if (p->proto == IPPROTO_SCTP) {
		struct sctphdr *sh = l4;
		if ((void *)(sh + 1) > data_end)
			return -1;
		sh->checksum = crc;
		return 0;
	}
	__u16 *check;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			return -1;
		check = &th->check;
	} else {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > data_end)
			return -1;
		check = &uh->check;
	}
	if (p->proto == IPPROTO_UDP && *check == 0)
		return 0;
	__u16 c = csum_apply(*check, csum_fold((__u64)addr_diff + port_diff));
	if (p->proto == IPPROTO_UDP && c == 0)
		c = 0xffff;
	*check = c;
	return 0;
}

/* The SCTP CRC32c p gets with its ports rewritten to to's: over the SCTP packet only (no
 * pseudo-header), so the ports' change alone, at XDP and tc alike, in either family. A sender
 * that offloads the CRC (a pod behind a veth: CHECKSUM_PARTIAL) leaves the field 0 until the
 * packet leaves, when the kernel computes it over what the packet holds then, rewritten ports
 * included: such a field stays 0. (A computed CRC that happens to be 0, one in 2^32, is left
 * too; the peer drops that one packet and SCTP sends it again.) -1 if the header is gone. */
static __always_inline int nat_sctp_crc(void *l4, void *data_end, const struct pkt *p,
					const struct tuple *to, __u32 *crc)
{
	struct sctphdr *sh = l4;
	if ((void *)(sh + 1) > data_end) /* checked by the caller, but not where the verifier sees it */
		return -1;
	__u32 delta = (*(__u32 *)l4) ^ (((__u32)to->dport << 16) | to->sport);
	*crc = sh->checksum;
	if (delta && *crc)
		*crc ^= crc32c_port_delta(delta, p->ip_len - (p->l4_off - p->l3_off));
	return 0;
}

#ifdef SLUICE_IPV6
#include "nat6.h"
#else
/* XDP writes the packet directly and updates the checksums by hand. */
static __always_inline int nat_write_xdp(struct iphdr *iph, void *l4, void *data_end,
					 const struct pkt *p, const struct tuple *to, __u16 ttl_new,
					 __u32 ip_diff, __u32 addr_diff, __u32 port_diff, __u32 crc)
{
	*(__u16 *)&iph->ttl = ttl_new;
	iph->saddr = to->saddr;
	iph->daddr = to->daddr;
	iph->check = csum_apply(iph->check, ip_diff);
	return nat_write_l4_xdp(l4, data_end, p, to, addr_diff, port_diff, crc);
}

/* tc writes only through helpers. A program that writes the packet directly gets a prologue
 * from the verifier that makes the head writable before every run, copying the head of every
 * cloned sk_buff (each TCP segment the node sends passes tc egress as one); the helpers make
 * only what they write writable, and only for the packets sluice rewrites. */
static __always_inline int nat_write_tc(void *ctx, const struct pkt *p, const struct tuple *to,
					__u16 ttl_old, __u16 ttl_new, __u32 ip_diff, __u32 addr_diff,
					__u32 port_diff, __u32 crc)
{
	__u32 l3 = p->l3_off;
	__be32 addrs[2] = {to->saddr, to->daddr};
	__be16 ports[2] = {to->sport, to->dport};
	if (ttl_new != ttl_old &&
	    bpf_skb_store_bytes(ctx, l3 + offsetof(struct iphdr, ttl), &ttl_new, 2, 0))
		return -1;
	if (bpf_skb_store_bytes(ctx, l3 + offsetof(struct iphdr, saddr), addrs, 8, 0))
		return -1;
	if (bpf_l3_csum_replace(ctx, l3 + offsetof(struct iphdr, check), 0, ip_diff, 0))
		return -1;
	if (bpf_skb_store_bytes(ctx, p->l4_off, ports, 4, 0))
		return -1;
	if (p->proto == IPPROTO_SCTP)
		return bpf_skb_store_bytes(ctx, p->l4_off + offsetof(struct sctphdr, checksum), &crc, 4, 0) ? -1 : 0;
	/* bpf_l4_csum_replace also copes with CHECKSUM_PARTIAL (where the field holds only the
	 * pseudo-header sum, so the ports' change must not touch it); a UDP checksum of 0 stays 0
	 * (BPF_F_MARK_MANGLED_0). */
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 off = l4_csum_off(p);
	if (bpf_l4_csum_replace(ctx, off, 0, addr_diff, BPF_F_PSEUDO_HDR | mangled))
		return -1;
	if (bpf_l4_csum_replace(ctx, off, 0, port_diff, mangled))
		return -1;
	return 0;
}

/* A later fragment has no L4 header: only its addresses (and TTL) change, with the IPv4
 * header checksum. */
static __always_inline int nat_rewrite_l3(void *ctx, const bool xdp, const struct pkt *p,
					  struct iphdr *iph, const struct tuple *to, bool dec_ttl)
{
	__u32 ip_diff = csum_diff4(0, iph->saddr, to->saddr);
	ip_diff = csum_diff4(ip_diff, iph->daddr, to->daddr);
	__u16 ttl_old = *(__u16 *)&iph->ttl;
	__u16 ttl_new = ttl_old;
	if (dec_ttl)
		((__u8 *)&ttl_new)[0]--;
	ip_diff = csum_diff2(ip_diff, ttl_old, ttl_new);
	if (xdp) {
		*(__u16 *)&iph->ttl = ttl_new;
		iph->saddr = to->saddr;
		iph->daddr = to->daddr;
		iph->check = csum_apply(iph->check, ip_diff);
		return 0;
	}
	__u32 l3 = p->l3_off;
	__be32 addrs[2] = {to->saddr, to->daddr};
	if (bpf_skb_store_bytes(ctx, l3 + offsetof(struct iphdr, ttl), &ttl_new, 2, 0) ||
	    bpf_skb_store_bytes(ctx, l3 + offsetof(struct iphdr, saddr), addrs, 8, 0) ||
	    bpf_l3_csum_replace(ctx, l3 + offsetof(struct iphdr, check), 0, ip_diff, 0))
		return -1;
	return 0;
}

/* Rewrite p's tuple to `to`; with dec_ttl, also decrement the TTL (we forward the packet
 * ourselves). sctp false (a constant) leaves SCTP out: the caller has refused it, and the
 * CRC's function is then no call of its (the verifier counts every frame a call chain can
 * stack). Returns 0, or -1 if the packet no longer has the headers parse_pkt saw. */
static __always_inline int nat_rewrite_for(void *ctx, const bool xdp, const struct pkt *p,
					   const struct tuple *to, bool dec_ttl, const bool sctp)
{
	void *data = ctx_data(ctx, xdp);
	void *data_end = ctx_data_end(ctx, xdp);
	struct iphdr *iph = data + (p->l3_off & 0x1f);
	if ((void *)(iph + 1) > data_end)
		return -1;
	if (p->frag == FRAG_LATER)
		return nat_rewrite_l3(ctx, xdp, p, iph, to, dec_ttl);
	__u8 proto = p->proto;
	/* Ports are the first 4 bytes of TCP, UDP and SCTP; the checksum is at 16 (TCP), 6 (UDP),
	 * 8 (SCTP). */
	void *l4 = data + (p->l4_off & 0x7f);
	if (l4 + sizeof(struct tcphdr) > data_end && proto == IPPROTO_TCP)
		return -1;
	if (l4 + sizeof(struct sctphdr) > data_end && proto == IPPROTO_SCTP)
		return -1;
	if (l4 + sizeof(struct udphdr) > data_end)
		return -1;

	__u32 addr_diff = 0, port_diff = 0, ip_diff = 0;
	addr_diff = csum_diff4(addr_diff, iph->saddr, to->saddr);
	addr_diff = csum_diff4(addr_diff, iph->daddr, to->daddr);
	__be16 *ports = l4;
	port_diff = csum_diff2(port_diff, ports[0], to->sport);
	port_diff = csum_diff2(port_diff, ports[1], to->dport);
	__u16 ttl_old = *(__u16 *)&iph->ttl; /* TTL shares a 16-bit word with the protocol */
	__u16 ttl_new = ttl_old;
	if (dec_ttl) {
		((__u8 *)&ttl_new)[0]--;
		ip_diff = csum_diff2(ip_diff, ttl_old, ttl_new);
	}
	ip_diff = csum_fold((__u64)ip_diff + addr_diff);
	__u32 crc = 0;
	if (sctp && proto == IPPROTO_SCTP && nat_sctp_crc(l4, data_end, p, to, &crc))
		return -1;
	if (xdp)
		return nat_write_xdp(iph, l4, data_end, p, to, ttl_new, ip_diff, addr_diff, port_diff, crc);
	return nat_write_tc(ctx, p, to, ttl_old, ttl_new, ip_diff, addr_diff, port_diff, crc);
}

#endif /* SLUICE_IPV6 */

static __always_inline int nat_rewrite(void *ctx, const bool xdp, const struct pkt *p,
				       const struct tuple *to, bool dec_ttl)
{
	return nat_rewrite_for(ctx, xdp, p, to, dec_ttl, true);
}

#endif
