/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* lb.h: find the frontend a packet is for, and pick a backend for a new flow: one random slot
 * among the service's `count`, so the cost does not grow with the number of backends. */
#ifndef SLUICE_LB_H
#define SLUICE_LB_H

#include "maps.h"
#include "parse.h"

static __always_inline struct frontend *lb_frontend(const struct pkt *p)
{
	struct frontend_key k = {
		.addr = p->daddr,
		.port = p->dport,
		.proto = p->proto,
	};
	return bpf_map_lookup_elem(&sluice_frontends, &k);
}

/* A uniformly random backend of fe, or NULL if the agent's maps are mid-update. */
static __always_inline struct backend *lb_pick(const struct frontend *fe, __u32 *backend_id)
{
	struct slot_key sk = {
		.svc_id = fe->svc_id,
		.slot = bpf_get_prandom_u32() % fe->count + 1,
	};
	__u32 *id = bpf_map_lookup_elem(&sluice_slots, &sk);
	if (!id)
		return 0;
	*backend_id = *id;
	return bpf_map_lookup_elem(&sluice_backends, id);
}

#endif
