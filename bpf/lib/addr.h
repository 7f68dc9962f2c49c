/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* addr.h: the address family an object is compiled for. The packet path is written once over
 * addr_t and these macros; bpf/sluice.c compiles it for IPv4, bpf/sluice6.c (SLUICE_IPV6) for
 * IPv6, as Calico builds its programs per family. Each family keeps maps of its own for what
 * holds addresses (IPv4's keep the layout and names they had, so an upgrade converts nothing);
 * what holds none (slots, counters, Maglev tables, service names) is one map both share. */
#ifndef SLUICE_ADDR_H
#define SLUICE_ADDR_H

#include "common.h"

#ifdef SLUICE_IPV6
/* Go: [16]uint8 in network order. The words are for comparing and checksums. */
union addr6 {
	__u8 b[16];
	__be32 w[4];
};
typedef union addr6 addr_t;

static __always_inline bool addr6_eq(const union addr6 *a, const union addr6 *b)
{
	return ((a->w[0] ^ b->w[0]) | (a->w[1] ^ b->w[1]) | (a->w[2] ^ b->w[2]) | (a->w[3] ^ b->w[3])) == 0;
}

#define ADDR_EQ(a, b) addr6_eq(&(a), &(b))
#define ADDR_IS_ZERO(a) (((a).w[0] | (a).w[1] | (a).w[2] | (a).w[3]) == 0)
#define ADDR_ZERO(a) __builtin_memset(&(a), 0, sizeof(addr_t))
/* A 32-bit summary of an address, for hashing. */
#define ADDR_HASH(a) ((a).w[0] ^ (a).w[1] ^ (a).w[2] ^ (a).w[3])
#define ADDR_BITS 128
#define L4_ICMP 58 /* ICMPv6 */

/* The maps that hold addresses, IPv6's own (each declared once, in maps.h, under its IPv4 name). */
#define sluice_frontends sluice_frontends6
#define sluice_backends sluice_backends6
#define sluice_ct sluice_ct6
#define sluice_frags sluice_frags6
#define sluice_affinity sluice_affinity6
#define sluice_source_ranges sluice_source_ranges6
#define sluice_device_addrs sluice_device_addrs6
#define sluice_trace sluice_trace6
#define sluice_scratch sluice_scratch6
#define sluice_sock_revnat sluice_sock_revnat6
#else
typedef __be32 addr_t;

#define ADDR_EQ(a, b) ((a) == (b))
#define ADDR_IS_ZERO(a) ((a) == 0)
#define ADDR_ZERO(a) ((a) = 0)
#define ADDR_HASH(a) (a)
#define ADDR_BITS 32
#define L4_ICMP 1 /* IPPROTO_ICMP */
#endif

#endif
