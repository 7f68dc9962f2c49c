/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* fib.h: the next hop of a rewritten packet (bpf_fib_lookup), and sending it there. */
#ifndef SLUICE_FIB_H
#define SLUICE_FIB_H

#include "maps.h"
#include "nat.h"

/* Per-CPU room for what does not fit on the stack: a program has 512 bytes for all its frames
 * (TestStackFitsOlderVerifiers), and the packet path's deepest point, where it calls
 * fwd_too_big and fwd_to_kernel (functions of their own), leaves little. Holds the FIB lookup
 * (64 bytes) there, and those functions' own packet, lookup and tuple. Not shared with Go. */
struct scratch {
	__u64 fib[sizeof(struct bpf_fib_lookup) / 8]; /* (bpf2go cannot mirror its unions) */
	struct tuple to;
	struct pkt p;
#ifdef SLUICE_IPV6
	/* What IPv4 keeps on the stack (nodeport.h PKT_DECL, CT_PAIR_DECL) and what a new flow's
	 * program gets from the one that found its frontend. */
	struct pkt in;
	struct frontend fe;
	struct ct_key keys[2];
	struct ct_entry ents[2];
	__u16 len; /* what the FIB refused (mtu6.h) */
	__u8 egress; /* which hook the ICMPv6 program runs for (icmp6.h) */
#endif
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct scratch);
	__uint(max_entries, 1);
} sluice_scratch SEC(".maps");

static __always_inline struct scratch *scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sluice_scratch, &zero);
}

static __always_inline bool mac_zero(const __u8 *mac)
{
	return !(mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]);
}

static __always_inline bool mac_equal(const __u8 *a, const __u8 *b)
{
	return !((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5]));
}

/* The FIB's answer for a packet from saddr to daddr that arrived on this device; fib holds the
 * next hop. tot_len 0 skips the MTU check. */
static __always_inline int fwd_lookup(void *ctx, const bool xdp, struct bpf_fib_lookup *fib,
				      const struct tuple *to, __u8 proto, __u8 tos, __u16 tot_len)
{
	fib->l4_protocol = proto;
	fib->sport = to->sport;
	fib->dport = to->dport;
	fib->tot_len = tot_len;
#ifdef SLUICE_IPV6
	fib->family = AF_INET6;
	fib->flowinfo = bpf_htonl((__u32)tos << 20);
	__builtin_memcpy(fib->ipv6_src, &to->saddr, 16);
	__builtin_memcpy(fib->ipv6_dst, &to->daddr, 16);
#else
	fib->family = AF_INET;
	fib->tos = tos;
	fib->ipv4_src = to->saddr;
	fib->ipv4_dst = to->daddr;
#endif
	fib->ifindex = ctx_ifindex(ctx, xdp);
	int rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	/* 5.10 kernels without the NUD_FAILED fix report success with a zero MAC. A device without
	 * link-layer addresses (an IPIP or GRE tunnel, wg0, a tun) reports its own address, or
	 * none, as its NOARP neighbour's: there is no MAC to write, and fwd_send leaves such a
	 * next hop to the kernel. */
	if (rc == BPF_FIB_LKUP_RET_SUCCESS &&
	    (mac_zero(fib->dmac) || mac_equal(fib->dmac, fib->smac)))
		rc = BPF_FIB_LKUP_RET_NO_NEIGH;
	return rc;
}

/* Send a rewritten packet to the next hop fwd_lookup found (rc SUCCESS, or NO_NEIGH at tc). */
static __always_inline int fwd_send(void *ctx, const bool xdp, int rc, const struct bpf_fib_lookup *fib)
{
	if (!xdp && rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* An L3 device (the agent marks them): the kernel routes the packet again and sends
		 * it with that route attached, which an NBMA tunnel (Calico's tunl0, "remote any")
		 * takes its far end from; sent with a next hop instead, or by bpf_redirect, it carries
		 * no route and the tunnel drops it. The second lookup costs only such traffic. */
		__u32 *flags = bpf_map_lookup_elem(&sluice_devices, &fib->ifindex);
		if (flags && (*flags & DEVICE_F_L3))
			return bpf_redirect_neigh(fib->ifindex, NULL, 0, 0);
		/* Let the kernel resolve the next hop and fill in the MACs. */
		struct bpf_redir_neigh nh = {};
#ifdef SLUICE_IPV6
		nh.nh_family = AF_INET6;
		__builtin_memcpy(nh.ipv6_nh, fib->ipv6_dst, 16);
#else
		nh.nh_family = AF_INET;
		nh.ipv4_nh = fib->ipv4_dst;
#endif
		return bpf_redirect_neigh(fib->ifindex, &nh, sizeof(nh), 0);
	}
	void *data = ctx_data(ctx, xdp);
	void *data_end = ctx_data_end(ctx, xdp);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return VERDICT_DROP(xdp);
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	return ctx_redirect(ctx, xdp, fib->ifindex);
}

/* The length the next hop's MTU is checked against, as the kernel's forwarding does: the IP
 * length, or for a GSO sk_buff (GRO-merged, or sent by a TSO sender on a veth) that of the
 * segments it leaves as. */
static __always_inline __u16 fwd_mtu_len(void *ctx, const bool xdp, const struct pkt *p)
{
	if (xdp)
		return p->ip_len;
	__u32 gso = ((struct __sk_buff *)ctx)->gso_size;
	if (!gso)
		return p->ip_len;
	return (__u16)(p->l4_off - p->l3_off + p->l4_hlen + gso);
}

#endif
