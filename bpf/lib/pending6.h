/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* pending6.h: what the IPv6 path does not do yet, in one place, each with the verdict it gives
 * meanwhile (included by hostnat.h under SLUICE_IPV6, in place of its IPv4 body). It goes
 * when its IPv6 version lands:
 *   - kernel NAT flows beside sluice's (hostnat.h: a pod's connection the kernel masquerades
 *     to a backend, whose port a sluice flow could also take): not tracked, as before IPv6. */
#ifndef SLUICE_PENDING6_H
#define SLUICE_PENDING6_H

#include "parse.h"
#include "stats.h"

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
