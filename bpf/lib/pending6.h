/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* pending6.h: what the IPv6 path does not do yet, in one place, each with the verdict it gives
 * meanwhile (included by icmp.h and hostnat.h under SLUICE_IPV6, in place of their IPv4
 * bodies). Each goes when its IPv6 version lands:
 *   - ICMPv6 errors about translated flows (a backend's packet too big, unreachable): left to
 *     the kernel untranslated, so the client does not learn them;
 *   - kernel NAT flows beside sluice's (hostnat.h): not tracked. */
#ifndef SLUICE_PENDING6_H
#define SLUICE_PENDING6_H

#include "parse.h"
#include "stats.h"

static __always_inline int icmp_related(struct __sk_buff *skb, bool egress)
{
	return TC_ACT_OK;
}

static __always_inline bool hostnat_candidate(const struct pkt *p)
{
	return false;
}

static __always_inline bool hostnat_from_sluice(struct __sk_buff *skb)
{
	return false;
}

static __always_inline int hostnat_track(struct __sk_buff *skb, const struct pkt *p, __u64 now)
{
	return TC_ACT_OK;
}

#endif
