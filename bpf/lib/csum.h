/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* csum.h: Internet checksum arithmetic (RFC 1071, incremental updates per RFC 1624).
 *
 * A "diff" is an unfolded 32-bit ones'-complement sum of (new - old) words, the same thing the
 * kernel calls a __wsum, so it can be applied by hand (XDP) or handed to bpf_l4_csum_replace
 * (tc, which also copes with CHECKSUM_PARTIAL skbs). */
#ifndef SLUICE_CSUM_H
#define SLUICE_CSUM_H

#include "common.h"

static __always_inline __u16 csum_fold(__u64 c)
{
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)c;
}

/* Add the diff of replacing 32-bit `from` with `to`. */
static __always_inline __u32 csum_diff4(__u32 diff, __be32 from, __be32 to)
{
	__u64 c = diff;
	c += (~from & 0xffff) + (~from >> 16);
	c += (to & 0xffff) + (to >> 16);
	return csum_fold(c);
}

/* Add the diff of replacing 16-bit `from` with `to`. */
static __always_inline __u32 csum_diff2(__u32 diff, __u16 from, __u16 to)
{
	__u64 c = diff;
	c += (__u16)~from;
	c += to;
	return csum_fold(c);
}

/* Apply a diff to a stored checksum field (which holds the complement of the sum). */
static __always_inline __u16 csum_apply(__u16 check, __u32 diff)
{
	__u64 c = (__u16)~check;
	c += diff;
	return (__u16)~csum_fold(c);
}

/* Sum of `n` 16-bit words at p (p must be verified for n*2 bytes by the caller). */
static __always_inline __u32 csum_words(const __u16 *p, int n)
{
	__u32 c = 0;
#pragma unroll
	for (int i = 0; i < n; i++)
		c += p[i];
	return c;
}

/* IPv4 header checksum of a 20-byte header without options. */
static __always_inline __u16 csum_ipv4_hdr20(struct iphdr *iph)
{
	iph->check = 0;
	return (__u16)~csum_fold(csum_words((__u16 *)iph, 10));
}

/* Pseudo-header sum for TCP/UDP over IPv4. */
static __always_inline __u32 csum_pseudo(__be32 saddr, __be32 daddr, __u8 proto, __u16 l4_len)
{
	__u64 c = 0;
	c += (saddr & 0xffff) + (saddr >> 16);
	c += (daddr & 0xffff) + (daddr >> 16);
	c += bpf_htons(proto);
	c += bpf_htons(l4_len);
	return csum_fold(c);
}

#endif
