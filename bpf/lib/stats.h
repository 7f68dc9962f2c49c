/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* stats.h: per-CPU counters, per service and per reason. No atomics needed: each CPU owns its
 * slot and the agent sums them. */
#ifndef SLUICE_STATS_H
#define SLUICE_STATS_H

#include "maps.h"

/* A trace run counts nothing (it leaves no trace in the live maps) but records the reason. */
static __always_inline void count_reason(__u32 reason)
{
	struct trace_record *t = trace_rec();
	if (t) {
		t->reason = reason + 1;
		if (reason == REASON_ICMP_RELATED)
			t->stage = TRACE_RELATED;
		else if (reason == REASON_ICMP_FRAG_NEEDED_SENT || reason == REASON_FRAG_BY_STACK)
			t->stage = TRACE_TOO_BIG;
		else if (reason >= REASON_DROP_SNAT_EXHAUSTED && reason <= REASON_DROP_NO_LOCAL_ENDPOINT)
			t->stage = TRACE_DROP;
		else if (reason == REASON_PASS_TO_TC)
			t->stage = TRACE_TO_TC;
		else if (reason == REASON_PASS_NO_FLOW)
			t->stage = TRACE_NO_FLOW;
		else if (reason == REASON_REJECT_TCP_RST || reason == REASON_REJECT_ICMP_UNREACHABLE)
			t->stage = TRACE_REJECT;
		else
			t->stage = TRACE_PARSE;
		return;
	}
	__u64 *v = bpf_map_lookup_elem(&sluice_reasons, &reason);
	if (v)
		*v += 1;
}

static __always_inline struct svc_stats *svc_stats(__u32 svc_id)
{
	if (cfg_trace || svc_id >= cfg_max_services)
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
