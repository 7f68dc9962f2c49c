/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* stats.h: per-CPU counters, per service and per reason. No atomics needed: each CPU owns its
 * slot and the agent sums them. */
#ifndef SLUICE_STATS_H
#define SLUICE_STATS_H

#include "maps.h"

static __always_inline void count_reason(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&sluice_reasons, &reason);
	if (v)
		*v += 1;
}

static __always_inline struct svc_stats *svc_stats(__u32 svc_id)
{
	if (svc_id >= cfg_max_services)
		return 0;
	return bpf_map_lookup_elem(&sluice_svc_stats, &svc_id);
}

static __always_inline void count_svc(__u32 svc_id, bool reply, __u32 bytes)
{
	struct svc_stats *s = svc_stats(svc_id);
	if (!s)
		return;
	if (reply) {
		s->reply_packets++;
		s->reply_bytes += bytes;
	} else {
		s->packets++;
		s->bytes += bytes;
	}
}

static __always_inline void count_rejected(__u32 svc_id)
{
	struct svc_stats *s = svc_stats(svc_id);
	if (s)
		s->rejected++;
}

#endif
