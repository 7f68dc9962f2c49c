/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* sctp.h: SCTP's CRC32c, updated when NAT rewrites the ports. SCTP's checksum covers the whole
 * SCTP packet but no pseudo-header, so new addresses leave it alone and new ports change it by
 * a term that depends only on the changed bits and the bytes that follow them:
 *
 *   crc(new) = crc(old) ^ crc0(delta) * x^(8 * (len - 4)) mod P
 *
 * (CRC is linear over GF(2); crc0 is the CRC without init and final XOR; delta is old ^ new
 * ports, the first 4 bytes). The multiply is zlib's multmodp and x^(8n) its x2nmodp: about 16
 * carry-less multiplies for any length, instead of a pass over the payload. */
#ifndef SLUICE_SCTP_H
#define SLUICE_SCTP_H

#include "common.h"

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

#define SCTP_CHUNK_INIT 1
#define CRC32C_POLY 0x82F63B78 /* reflected */

struct sctphdr {
	__be16 source;
	__be16 dest;
	__be32 vtag;
	__u32 checksum; /* little endian CRC32c */
};

/* x^(2^k) mod P, reflected, k = 0..31. */
static const __u32 crc32c_x2n[32] = {
	0x40000000, 0x20000000, 0x08000000, 0x00800000, 0x00008000, 0x82f63b78, 0x6ea2d55c, 0x18b8ea18,
	0x510ac59a, 0xb82be955, 0xb8fdb1e7, 0x88e56f72, 0x74c360a4, 0xe4172b16, 0x0d65762a, 0x35d73a62,
	0x28461564, 0xbf455269, 0xe2ea32dc, 0xfe7740e6, 0xf946610b, 0x3c204f8f, 0x538586e3, 0x59726915,
	0x734d5309, 0xbc1ac763, 0x7d0722cc, 0xd289cabe, 0xe94ca9bc, 0x05b74f3f, 0xa51e1f42, 0x40000000,
};

/* a * b mod P, reflected. The two functions are global (not static): the verifier checks each
 * once with unknown arguments rather than at every call site, and both are branch-free, so it
 * walks one straight path (an older verifier explores every branch of a bounded loop). */
__noinline __u32 crc32c_mulmod(__u32 a, __u32 b)
{
	__u32 p = 0;
	for (int i = 0; i < 32; i++) {
		p ^= b & -((a >> (31 - i)) & 1);
		b = (b >> 1) ^ (CRC32C_POLY & -(b & 1));
	}
	return p;
}

/* The CRC32c change when the first 4 bytes of an SCTP packet of len bytes change by delta
 * (old ^ new, as the little-endian word the bytes make). */
__noinline __u32 crc32c_port_delta(__u32 delta, __u32 len)
{
	__u32 s = delta;
	for (int i = 0; i < 32; i++)
		s = (s >> 1) ^ (CRC32C_POLY & -(s & 1));
	/* x^(8 * n) for the n bytes after the ports: bit k of n contributes x^(2^(k + 3)); a clear
	 * bit multiplies by 1 (0x80000000), which keeps the loop free of branches. */
	__u32 n = (len - 4) & 0xffff;
	__u32 x = 0x80000000U;
	for (int k = 0; k < 16; k++) {
		__u32 bit = (n >> k) & 1;
		__u32 f = (crc32c_x2n[(k + 3) & 31] & -bit) | (0x80000000U & (bit - 1));
		x = crc32c_mulmod(f, x);
	}
	return crc32c_mulmod(x, s);
}

#endif
