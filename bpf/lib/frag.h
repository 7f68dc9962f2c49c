/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* frag.h: IPv4 datagrams of translated flows that arrive in fragments (a 4 KB UDP datagram over
 * a 1500-byte link). Only the first fragment has the L4 header, so only it can be matched to a
 * flow: when it is translated, its ports are remembered under the datagram's reassembly key
 * (sluice_frags), and each later fragment takes them from there, finds the same connection
 * table entry and gets the same addresses (its payload has no ports or L4 checksum to
 * rewrite; the first fragment's checksum update covers the whole datagram). sluice does not
 * reassemble: a later fragment that arrives before its first, or after the entry was evicted,
 * is passed untouched and counted (pass_fragment), as Cilium does. */
#ifndef SLUICE_FRAG_H
#define SLUICE_FRAG_H

#include "maps.h"
#include "parse.h"

static __always_inline void frag_key_of(struct frag_key *k, const struct pkt *p)
{
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->id = p->ip_id;
	k->proto = p->proto;
#ifdef SLUICE_IPV6
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
#else
	k->pad = 0;
#endif
}

/* A first fragment about to be translated: remember its ports for the rest. */
static __always_inline void frag_remember(const struct pkt *p)
{
	if (p->frag != FRAG_FIRST || cfg_trace)
		return;
	struct frag_key k;
	struct frag_ports v = {.sport = p->sport, .dport = p->dport};
	frag_key_of(&k, p);
	bpf_map_update_elem(&sluice_frags, &k, &v, BPF_ANY);
}

/* A later fragment: give it its first fragment's ports. False if they are not known. */
static __always_inline bool frag_resolve(struct pkt *p)
{
	if (p->frag != FRAG_LATER)
		return false;
	struct frag_key k;
	frag_key_of(&k, p);
	struct frag_ports *v = bpf_map_lookup_elem(&sluice_frags, &k);
	if (!v)
		return false;
	p->sport = v->sport;
	p->dport = v->dport;
	return true;
}

#endif
