/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* nodeport.h: the packet path, shared by the XDP and tc programs of the node's devices and
 * the tc programs of its pods' devices.
 *
 * ingress: parse -> port prefilter -> conntrack (established flow, or a remote backend's
 *          reply) -> frontend -> no endpoint: reject | new flow: pick, claim SNAT port, create
 *          both entries -> forward.
 * egress:  port prefilter -> conntrack: the replies of local backends, restored to the
 *          frontend's tuple.
 * ICMP errors about a flow are translated at tc, on either hook (icmp.h); a datagram's later
 * fragments follow its first (frag.h).
 *
 * A pod's device (the host side of its veth) runs the same path with `pod` set, for the pod's
 * packets no socket hook translated (--socket-lb-hostns-only, or sent before the hooks were
 * attached): its ingress is the pod's sending side, its egress the pod's receiving side, so
 * both directions of the pod's flows pass there, wherever the backend is. */
#ifndef SLUICE_NODEPORT_H
#define SLUICE_NODEPORT_H

#include "ct.h"
#include "frag.h"
#include "fwd.h"
#include "hostnat.h"
#include "icmp.h"
#include "lb.h"
#include "reject.h"
#ifdef SLUICE_IPV6
#include "calls6.h"
#endif

static __always_inline int pass_parse_result(const bool xdp, int res)
{
	if (res == PARSE_MALFORMED)
		count_reason(REASON_PASS_MALFORMED);
	else if (res == PARSE_FRAGMENT)
		count_reason(REASON_PASS_FRAGMENT);
	else
		trace_stage(TRACE_NOT_OURS);
	return VERDICT_PASS(xdp);
}

static __always_inline void tuple_of(struct tuple *t, const struct ct_entry *e)
{
	t->saddr = e->nat_saddr;
	t->daddr = e->nat_daddr;
	t->sport = e->nat_sport;
	t->dport = e->nat_dport;
}

/* Could p be ours at ingress? Frontend ports are in the bitmap; a remote backend's reply comes
 * from a backend port (also a bitmap) to a SNAT port. Everything else is the node's own traffic
 * (to 6443, 10250, VXLAN's 4789 or 8472, ... from ephemeral ports) and leaves after at most two
 * array lookups, without a connection-table lookup. */
static __always_inline bool ingress_candidate(const struct pkt *p)
{
	if (port_bit(&sluice_frontend_ports, p->dport))
		return true;
	__u16 dport = bpf_ntohs(p->dport);
	return dport >= cfg_snat_port_min && dport <= cfg_snat_port_max &&
	       port_bit(&sluice_backend_ports, p->sport);
}

/* A local backend's reverse entry is keyed by (pod, client) tuples the pod could also use
 * for other traffic; never take one over from a live flow. A closed TCP flow's (FIN both
 * ways, or RST) is over at both ends: a client reusing its port for a SYN to another frontend
 * of the same backend gets it, as the backend would see it without NAT (a SYN on a TIME_WAIT
 * tuple). Found in a pod's connections per second, each to a ClusterIP, then a NodePort. */
static __always_inline int ct_claim_local(struct ct_key *rk, struct ct_entry *rv, __u64 now)
{
	if (cfg_trace)
		return 0;
	if (bpf_map_update_elem(&sluice_ct, rk, rv, BPF_NOEXIST) == 0)
		return 0;
	struct ct_entry *old = bpf_map_lookup_elem(&sluice_ct, rk);
	if (old && !ct_same_flow(old, rv) && !ct_expired(old, rk->proto, now) &&
	    !(rk->proto == IPPROTO_TCP && (old->flags & CT_F_CLOSING) && !(old->flags & CT_F_KERNEL)))
		return -1;
	return bpf_map_update_elem(&sluice_ct, rk, rv, BPF_ANY);
}

/* The source address a flow to the remote backend be gets: the address of the device the flow
 * leaves by when sluice runs there (the backend's replies then come back to a device that
 * translates them, wherever the client came in: a node with a public and a private NIC), else
 * the frontend's SNAT address, else the address the client reached. */
static __always_inline addr_t snat_addr_for(void *ctx, const bool xdp, const struct pkt *p,
					    const struct frontend *fe, const struct backend *be)
{
	addr_t dflt = ADDR_IS_ZERO(fe->snat_addr) ? p->daddr : fe->snat_addr;
	struct scratch *s = scratch();
	if (!s)
		return dflt;
	struct bpf_fib_lookup *fib = (struct bpf_fib_lookup *)s->fib;
	__builtin_memset(fib, 0, sizeof(*fib));
	struct tuple t = {.saddr = dflt, .daddr = be->addr, .sport = p->sport, .dport = be->port};
	int rc = fwd_lookup(ctx, xdp, fib, &t, p->proto, p->tos, 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return dflt;
	__u32 ifindex = fib->ifindex;
	addr_t *addr = bpf_map_lookup_elem(&sluice_device_addrs, &ifindex);
	return addr && !ADDR_IS_ZERO(*addr) ? *addr : dflt;
}

/* A new flow's two keys and entries: on the stack for IPv4; in the per-CPU scratch for IPv6,
 * whose are 24 bytes longer each (see PKT_DECL). */
#ifdef SLUICE_IPV6
#define CT_PAIR_DECL(fk, rk, fwd, rev, xdp)                                    \
	struct scratch *fk##_s = scratch();                                    \
	if (!fk##_s)                                                           \
		return VERDICT_DROP(xdp);                                      \
	struct ct_key *fk = &fk##_s->keys[0], *rk = &fk##_s->keys[1];          \
	struct ct_entry *fwd = &fk##_s->ents[0], *rev = &fk##_s->ents[1];      \
	__builtin_memset(fwd, 0, sizeof(*fwd))
#else
#define CT_PAIR_DECL(fk, rk, fwd, rev, xdp)                                    \
	struct ct_key fk##_v, rk##_v;                                          \
	struct ct_entry fwd##_v = {}, rev##_v;                                 \
	struct ct_key *fk = &fk##_v, *rk = &rk##_v;                            \
	struct ct_entry *fwd = &fwd##_v, *rev = &rev##_v
#endif

#define OPEN_REMOTE -1 /* forward `to` to a remote backend */
#define OPEN_LOCAL -2  /* deliver `to` to a local backend, through the stack */

/* A new flow to fe: choose its backend and translation, record both directions and put the
 * tuple the packet gets in *to. Returns OPEN_REMOTE or OPEN_LOCAL, or the program's verdict
 * when the packet goes no further. (IPv6 runs it in a program of its own, so it reads the
 * clock itself.) */
static __always_inline int nodeport_open_flow(void *ctx, const bool xdp, const bool pod,
					      const struct pkt *p, const struct frontend *fe,
					      struct tuple *to)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 backend_id = 0;
	struct trace_record *t = trace_rec();
	if (t)
		t->svc_id = fe->svc_id;
	struct backend *be = lb_pick(fe, p, &backend_id);
	if (!be) {
		count_reason(REASON_DROP_NO_BACKEND);
		return VERDICT_DROP(xdp);
	}

	CT_PAIR_DECL(fk, rk, fwd, rev, xdp);
	bool local = be->flags & BACKEND_F_LOCAL;
	/* A pod's flow is DNAT only, as kube-proxy leaves it (the backend sees the pod, and
	 * network policies by source hold); the reply is restored at the pod's device's egress,
	 * which it passes wherever the backend is. Only a pod that reaches itself (hairpin) gets
	 * another source: a packet from its own address is a martian to it. */
	if (pod)
		local = !ADDR_EQ(be->addr, p->saddr);
	ct_key_of(fk, p);
	fwd->svc_id = fe->svc_id;
	fwd->backend_id = backend_id;
	fwd->last_seen = now;
	fwd->nat_daddr = be->addr;
	fwd->nat_dport = be->port;
	fwd->flags = CT_F_INGRESS | (p->proto == IPPROTO_TCP ? CT_F_SYN : 0);
	if (local) {
		/* DNAT only: the pod sees the client's address, and its reply, routed back out by
		 * the stack, is restored at tc egress (a NIC's, or the client pod's device's). */
		fwd->nat_saddr = p->saddr;
		fwd->nat_sport = p->sport;
		fwd->flags |= CT_F_LOCAL;
		ct_peer(p, fwd, rk, rev);
		if (ct_claim_local(rk, rev, now)) {
			/* A live flow holds the tuple: the client's port, reused for another frontend
			 * of this backend (a UDP socket per request). The backend would see one tuple
			 * for both; the new flow gets another source port, the client's address kept,
			 * as the kernel's NAT resolves such a clash. */
			__u16 port = ct_snat_claim(rk, rev, now, 0);
			if (!port) {
				count_reason(REASON_DROP_CT_COLLISION);
				return VERDICT_DROP(xdp);
			}
			fwd->nat_sport = bpf_htons(port);
		}
	} else {
		/* DNAT + SNAT to a node address, so the reply comes back through us (for a hairpin,
		 * to the pod's device, from which the FIB sends both directions back in). */
		fwd->nat_saddr = snat_addr_for(ctx, xdp, p, fe, be);
		ct_peer(p, fwd, rk, rev);
		__u16 port = ct_snat_claim(rk, rev, now, 0);
		if (!port) {
			count_reason(REASON_DROP_SNAT_EXHAUSTED);
			return VERDICT_DROP(xdp);
		}
		fwd->nat_sport = bpf_htons(port);
	}
	if (!cfg_trace)
		bpf_map_update_elem(&sluice_ct, fk, fwd, BPF_ANY);
	trace_flow(TRACE_NEW_FLOW, fwd);
	tuple_of(to, fwd);
	return local ? OPEN_LOCAL : OPEN_REMOTE;
}

static __always_inline int nodeport_new_flow(void *ctx, const bool xdp, const bool pod,
					     const struct pkt *p, const struct frontend *fe)
{
	struct tuple to;
	int rc = nodeport_open_flow(ctx, xdp, pod, p, fe, &to);
	if (rc >= 0)
		return rc;
	return fwd_translated(ctx, xdp, p, &to, rc == OPEN_LOCAL, fe->svc_id, false);
}

#ifndef SLUICE_IPV6
/* IPv4's programs are the ones attached; they hand IPv6 packets to the IPv6 programs
 * (bpf/sluice6.c) by tail call. The agent fills the arrays when it loads IPv6 (datapath
 * LoadIPv6); empty, IPv6 packets go to the kernel, as before there was an IPv6 path. Pinned:
 * an unpinned program array is emptied when its last user's file descriptor closes, which
 * would cut IPv6 off when the agent restarts. */
#define PROG6_INGRESS 0  /* a NIC's XDP or tc ingress */
#define PROG6_EGRESS 1   /* a NIC's tc egress */
#define PROG6_FROM_POD 2 /* a pod's device's tc ingress (what the pod sends) */
#define PROG6_TO_POD 3   /* a pod's device's tc egress */
#define PROG6_MAX 4

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, PROG6_MAX);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_progs6_xdp SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, PROG6_MAX);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_progs6_tc SEC(".maps");

static __always_inline int nodeport_to_ipv6(void *ctx, const bool xdp, __u32 which)
{
	if (xdp)
		bpf_tail_call(ctx, &sluice_progs6_xdp, which);
	else
		bpf_tail_call(ctx, &sluice_progs6_tc, which);
	trace_stage(TRACE_NOT_OURS);
	return VERDICT_PASS(xdp);
}
#endif

#ifdef SLUICE_IPV6
/* IPv6 opens a flow in a program of its own, reached by tail call with a stack of its own
 * (calls6.h): what the path holds until it finds the frontend and what opening a flow needs
 * would not fit one program's 512 bytes together. */

/* Hand the new flow to fe (p is in the scratch already) to its program. */
static __always_inline int nodeport_call_new_flow(void *ctx, const bool xdp, const bool pod,
						  const struct frontend *fe)
{
	struct scratch *s = scratch();
	if (!s)
		return VERDICT_DROP(xdp);
	s->fe = *fe;
	if (xdp)
		bpf_tail_call(ctx, &sluice_calls_xdp6, CALL_NEW_FLOW);
	else
		bpf_tail_call(ctx, &sluice_calls_tc6, pod ? CALL_NEW_FLOW_POD : CALL_NEW_FLOW);
	/* No program there: the agent has not filled the array. */
	count_reason(REASON_DROP_NO_BACKEND);
	return VERDICT_DROP(xdp);
}

/* The new-flow programs' body: the packet and its frontend from the scratch. */
static __always_inline int nodeport_new_flow_call(void *ctx, const bool xdp, const bool pod)
{
	struct scratch *s = scratch();
	if (!s)
		return VERDICT_DROP(xdp);
	return nodeport_new_flow(ctx, xdp, pod, &s->in, &s->fe);
}
#endif

/* The parsed packet: on the stack for IPv4; IPv6's (56 bytes) in the per-CPU scratch, where it
 * costs no stack the rest of the path needs. */
#ifdef SLUICE_IPV6
#define PKT_DECL(name, xdp)                                    \
	struct scratch *name##_s = scratch();                  \
	if (!name##_s)                                         \
		return VERDICT_PASS(xdp);                      \
	struct pkt *name = &name##_s->in;                      \
	__builtin_memset(name, 0, sizeof(*name))
#else
#define PKT_DECL(name, xdp)        \
	struct pkt name##_v = {};  \
	struct pkt *name = &name##_v
#endif

static __always_inline int nodeport_ingress(void *ctx, const bool xdp, const bool pod)
{
	PKT_DECL(p, xdp);
	int res = parse_pkt(ctx, xdp, p);
#ifndef SLUICE_IPV6
	if (res == PARSE_IPV6)
		return nodeport_to_ipv6(ctx, xdp, pod ? PROG6_FROM_POD : PROG6_INGRESS);
#endif
	if (!xdp && res == PARSE_OTHER_L4 && p->proto == L4_ICMP)
		return icmp_related((struct __sk_buff *)ctx, false);
	/* A later fragment is ours only if its first fragment was: its ports say. */
	bool later = res == PARSE_FRAGMENT && frag_resolve(p);
	if (res != PARSE_OK && !later)
		return pass_parse_result(xdp, res);
	if (!later && !ingress_candidate(p)) {
		trace_stage(TRACE_NOT_OURS);
		return VERDICT_PASS(xdp);
	}
	if (!l3_csum_ok(ctx, xdp, p)) {
		count_reason(REASON_PASS_MALFORMED);
		return VERDICT_PASS(xdp);
	}
	/* A tagged frame may have to leave untagged or on another VLAN device: only tc, where
	 * the tag is skb metadata and redirect goes through the right device, gets that right. */
	if (xdp && p->vlan) {
		count_reason(REASON_PASS_TO_TC);
		return XDP_PASS;
	}

	__u64 now = bpf_ktime_get_ns();
	struct ct_key k;
	ct_key_of(&k, p);
	struct ct_entry *e = ct_lookup(&k, CT_F_INGRESS, now);
	bool syn = p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_F_SYN | TCP_F_ACK)) == TCP_F_SYN;
	/* A SYN on a closing flow starts a new connection on the same tuple: choose again. */
	if (e && !(syn && (e->flags & CT_F_CLOSING))) {
		struct tuple to;
		tuple_of(&to, e);
		__u32 svc_id = e->svc_id;
		bool reply = e->flags & CT_F_REPLY;
		/* A kernel flow's reply (hostnat.h) goes to the stack, as a local backend's flow does. */
		bool local = e->flags & (CT_F_LOCAL | CT_F_KERNEL);
		trace_flow(reply ? TRACE_REPLY : TRACE_ESTABLISHED, e);
		ct_touch(p, e, now);
		frag_remember(p);
		return fwd_translated(ctx, xdp, p, &to, local, svc_id, reply);
	}
	/* Only a first fragment (or a whole datagram) opens a flow. */
	if (later) {
		count_reason(REASON_PASS_FRAGMENT);
		return VERDICT_PASS(xdp);
	}

	struct frontend *fe;
	if (pod) {
		/* A pod is a client on the node: it gets what the socket hooks would give it. */
		struct frontend_key fk = { .addr = p->daddr, .port = p->dport, .proto = p->proto };
		fe = lb_frontend_node(&fk);
	} else {
		fe = lb_frontend(p);
	}
	if (!fe) {
		trace_stage(TRACE_NO_FRONTEND);
		return VERDICT_PASS(xdp);
	}
	struct trace_record *t = trace_rec();
	if (t)
		t->svc_id = fe->svc_id;
	if (!lb_source_allowed(fe, p)) {
		count_reason(REASON_DROP_SOURCE_RANGE);
		return VERDICT_DROP(xdp);
	}
	if (fe->count == 0 && (fe->flags & FE_F_DROP_EMPTY)) {
		count_reason(REASON_DROP_NO_LOCAL_ENDPOINT);
		return VERDICT_DROP(xdp);
	}
	if (fe->count == 0) {
		/* Never answer a RST with a RST. */
		if (p->proto == IPPROTO_TCP && (p->tcp_flags & TCP_F_RST)) {
			trace_stage(TRACE_DROP);
			return VERDICT_DROP(xdp);
		}
		return reject(ctx, xdp, p, fe->svc_id);
	}
	/* Only a SYN opens a TCP flow (an INIT an SCTP one): anything else lost its flow (or never
	 * had one) and a new
	 * backend would not know it. The kernel answers it, or kube-proxy's rules still there
	 * during a migration take it. */
	if ((p->proto == IPPROTO_TCP && !syn) || (p->proto == IPPROTO_SCTP && !(p->tcp_flags & TCP_F_SYN))) {
		count_reason(REASON_PASS_NO_FLOW);
		return VERDICT_PASS(xdp);
	}
	frag_remember(p);
#ifdef SLUICE_IPV6
	return nodeport_call_new_flow(ctx, xdp, pod, fe);
#else
	return nodeport_new_flow(ctx, xdp, pod, p, fe);
#endif
}

static __always_inline int nodeport_egress(struct __sk_buff *skb, const bool pod)
{
	PKT_DECL(p, false);
	int res = parse_pkt(skb, false, p);
#ifndef SLUICE_IPV6
	if (res == PARSE_IPV6)
		return nodeport_to_ipv6(skb, false, pod ? PROG6_TO_POD : PROG6_EGRESS);
#endif
	if (res == PARSE_OTHER_L4 && p->proto == L4_ICMP)
		return icmp_related(skb, true);
	bool hostnat = false;
	if (res == PARSE_FRAGMENT) {
		if (!frag_resolve(p))
			return TC_ACT_OK;
	} else if (res != PARSE_OK) {
		return TC_ACT_OK;
	} else {
		/* Kernel NAT flows leave by the NICs; a pod's device has none to keep apart. */
		hostnat = !pod && hostnat_candidate(p);
		if (!hostnat && !port_bit(&sluice_backend_ports, p->sport))
			return TC_ACT_OK;
	}

	__u64 now = bpf_ktime_get_ns();
	struct ct_key k;
	ct_key_of(&k, p);
	struct ct_entry *e = ct_lookup(&k, CT_F_EGRESS, now);
	if (!e) {
		if (hostnat)
			return hostnat_track_call(skb, p, now);
		return TC_ACT_OK;
	}
	/* The tuple of a kernel flow that was moved is the sluice flow's it was moved off. */
	if ((e->flags & CT_F_KERNEL) && hostnat_from_sluice(skb))
		return TC_ACT_OK;

	struct tuple to;
	tuple_of(&to, e);
	count_svc(e->svc_id, true, p->len);
	ct_touch(p, e, now);
	frag_remember(p);
	/* A kernel flow tracked under its own port is left as it is. */
	if (tuple_is(&to, p))
		return TC_ACT_OK;
	if (nat_rewrite(skb, false, p, &to, false))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

#endif
