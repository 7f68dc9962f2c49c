/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* csum.h: the few Internet checksum steps (RFC 1071, RFC 1624) the generator needs. A copy of
 * the idea in bpf/lib/csum.h rather than an include, so the datapath's headers can change
 * without making this committed object stale. */
#ifndef PKTGEN_CSUM_H
#define PKTGEN_CSUM_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

static __always_inline __u16 csum_fold(__u64 c)
{
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)c;
}

/* Ones'-complement sum of replacing 32-bit `from` with `to`, added to diff. */
static __always_inline __u32 csum_diff4(__u32 diff, __be32 from, __be32 to)
{
	__u64 c = diff;
	c += (~from & 0xffff) + (~from >> 16);
	c += (to & 0xffff) + (to >> 16);
	return csum_fold(c);
}

/* Ones'-complement sum of replacing 16-bit `from` with `to`, added to diff. */
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

#endif
