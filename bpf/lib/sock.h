/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* sock.h: socket-level load balancing for clients on the node (its processes and its pods):
 * a connect() or an unconnected sendmsg() to a frontend is pointed at the chosen backend once,
 * at the socket, so that no packet of the flow needs translating; recvmsg() and getpeername()
 * show the frontend again. The same frontends, slots and backends as the packet path: the
 * agent writes once. Kernel 5.10: the cgroup sock_addr hooks, socket and netns cookies.
 * Written once for both families (addr.h): bpf/sock.c compiles it for IPv4's hooks,
 * bpf/sock6.c for IPv6's, each on its family's frontends and backends. */
#ifndef SLUICE_SOCK_H
#define SLUICE_SOCK_H

#include "maps.h"
#include "lb.h"

/* bpf_set_retval (Linux 5.18): a connect() or sendmsg() to a frontend with no endpoint fails
 * with ECONNREFUSED, as kube-proxy's REJECT makes it. The agent sets it where the kernel has
 * the helper; a frozen constant, so older verifiers prune the call unseen. Without it such a
 * socket is left to the kernel (refused on a node address, where nothing listens; a ClusterIP
 * routes nowhere and times out). */
volatile const __u8 cfg_set_retval = 0;

#define SOCK_ECONNREFUSED 111

/* The host network namespace's cookie (0: unknown, a kernel before 5.14 cannot tell the agent
 * its namespace's). cfg_localhost: only the host's processes reach NodePorts on loopback
 * (127.0.0.0/8), as kube-proxy's iptables mode serves them from the host's OUTPUT chain; a
 * pod's loopback is its own. cfg_hostns_only: pods' sockets are left alone (some service
 * meshes want their connects untouched), as Cilium's bpf-lb-sock-hostns-only. */
volatile const __u64 cfg_host_netns_cookie = 0;
volatile const __u8 cfg_localhost = 0;
volatile const __u8 cfg_hostns_only = 0;

#define LOOPBACK_NET 127
#define LOCALHOST 0x7f000001

/* Which frontend a translated socket talks to, by the backend it was pointed at: recvmsg and
 * getpeername show it. Go: datapath.SluiceSockRevnatKey */
struct sock_revnat_key {
	__u64 cookie; /* bpf_get_socket_cookie: unique for the socket's life */
#ifdef SLUICE_IPV6
	addr_t addr;  /* the backend. Go: datapath.SluiceSock6SockRevnatKey */
#else
	__be32 addr;  /* the backend */
#endif
	__be16 port;
	__u8 proto;
	__u8 pad;
#ifdef SLUICE_IPV6
	__u32 pad6; /* named, so that initializers zero it: the key is hashed whole */
#endif
};

/* Go: datapath.SluiceSockRevnat */
struct sock_revnat {
#ifdef SLUICE_IPV6
	addr_t addr; /* the frontend the application asked for. Go: datapath.SluiceSock6SockRevnat */
#else
	__be32 addr; /* the frontend the application asked for */
#endif
	__be16 port;
	__u8 scope; /* the frontend entry's (FE_SCOPE_*) */
	__u8 pad;
	__u32 svc_id; /* the frontend's service when translated: a stale entry is not shown */
};

/* LRU: a socket's entry goes when the table is full; sockets that talked to many backends
 * (unconnected UDP) leave entries nothing else removes. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_revnat_key);
	__type(value, struct sock_revnat);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sock_revnat SEC(".maps");

/* Session affinity for socket clients: a client is a network namespace (the node's, a pod's),
 * as kube-proxy's is a source address, which all of a namespace's sockets share.
 * Go: datapath.SluiceSockAffinityKey */
struct sock_affinity_key {
	__u64 netns_cookie;
	__u32 svc_id;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_affinity_key);
	__type(value, struct affinity);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sock_affinity SEC(".maps");

/* The backend for a new socket of namespace netns to a frontend with these fields (0: none
 * usable); backends is the map its IDs name (IPv4's for an IPv4-mapped address, sock4in6.h).
 * sel spreads the choice: random for TCP, the socket's cookie for UDP so that every datagram an
 * unconnected socket sends to the service goes to one backend, as a connected one's do. */
static __always_inline __u32 sock_pick(__u32 svc_id, __u16 count, __u16 flags, __u32 timeout_s, __u64 netns, __u32 sel,
				       void *backends)
{
	__u64 now = bpf_ktime_get_ns();
	struct sock_affinity_key ak = { .netns_cookie = netns, .svc_id = svc_id };
	__u32 id = 0;

	if (flags & FE_F_AFFINITY)
		/* backends, not the object's: an IPv4-mapped connect's are IPv4's (sock4in6.h). */
		id = lb_remembered_in(bpf_map_lookup_elem(&sluice_sock_affinity, &ak), svc_id, timeout_s, now, backends);
	if (!id)
		id = lb_slot_id(svc_id, count, flags, sel, false);
	if ((flags & FE_F_AFFINITY) && id && bpf_map_lookup_elem(backends, &id)) {
		struct affinity a = { .backend_id = id, .last_seen = now };
		bpf_map_update_elem(&sluice_sock_affinity, &ak, &a, BPF_ANY);
	}
	return id;
}

/* sock_pick for a frontend of the object's family. */
static __always_inline __u32 sock_pick_id(const struct frontend *fe, __u64 netns, __u32 sel)
{
	return sock_pick(fe->svc_id, fe->count, fe->flags, fe->affinity_timeout_s, netns, sel, &sluice_backends);
}

/* The address a sock_addr hook is asked for, and rewriting it: user_ip4, or user_ip6 a word at
 * a time (the context allows 4-byte accesses). */
static __always_inline void sock_user_addr(const struct bpf_sock_addr *ctx, addr_t *a)
{
#ifdef SLUICE_IPV6
	a->w[0] = ctx->user_ip6[0];
	a->w[1] = ctx->user_ip6[1];
	a->w[2] = ctx->user_ip6[2];
	a->w[3] = ctx->user_ip6[3];
#else
	*a = ctx->user_ip4;
#endif
}

static __always_inline void sock_set_user_addr(struct bpf_sock_addr *ctx, const addr_t *a)
{
#ifdef SLUICE_IPV6
	ctx->user_ip6[0] = a->w[0];
	ctx->user_ip6[1] = a->w[1];
	ctx->user_ip6[2] = a->w[2];
	ctx->user_ip6[3] = a->w[3];
#else
	ctx->user_ip4 = *a;
#endif
}

/* A loopback address: every one is localhost's NodePort entry in IPv4 (127.0.0.0/8). IPv6 has
 * none: kube-proxy serves no NodePort on ::1. */
static __always_inline bool sock_loopback(const addr_t *a)
{
#ifdef SLUICE_IPV6
	return false;
#else
	return (bpf_ntohl(*a) >> 24) == LOOPBACK_NET;
#endif
}

static __always_inline void sock_set_localhost(addr_t *a)
{
#ifndef SLUICE_IPV6
	*a = bpf_htonl(LOCALHOST);
#endif
}

#include "sock4in6.h"

/* The socket's protocol if sluice balances it (TCP, UDP), else 0. A narrowing through
 * constants: the verifier then knows the byte the map keys get. */
static __always_inline __u8 sock_proto(const struct bpf_sock_addr *ctx)
{
	if (ctx->protocol == IPPROTO_TCP)
		return IPPROTO_TCP;
	if (ctx->protocol == IPPROTO_UDP)
		return IPPROTO_UDP;
	return 0;
}

/* connect4, and sendmsg4 (unconnected UDP: the kernel runs it per datagram sent with an
 * address). Returns 1, but for a frontend with no endpoint where the kernel lets the call be
 * refused: a socket to no frontend, or to one sluice leaves to the kernel, goes on untouched
 * (0 alone would fail the call with EPERM). */
static __always_inline int sock_forward(struct bpf_sock_addr *ctx)
{
	__u8 proto = sock_proto(ctx);
	if (!proto)
		return 1;
	struct frontend_key fk = {
		.port = (__be16)ctx->user_port,
		.proto = proto,
		.scope = FE_SCOPE_SOCK,
	};
	addr_t asked;
	sock_user_addr(ctx, &asked);
	fk.addr = asked;
	bool host = cfg_host_netns_cookie && bpf_get_netns_cookie(ctx) == cfg_host_netns_cookie;
	if (cfg_hostns_only && !host)
		return 1;
#ifdef SLUICE_IPV6
	if (sock_v4_mapped(&asked))
		return sock_forward_mapped(ctx, proto, &asked, host);
#endif
	if (sock_loopback(&fk.addr)) {
		/* Every loopback address is localhost's NodePort entry (socket scope only). */
		if (!cfg_localhost || !host)
			return 1;
		sock_set_localhost(&fk.addr);
	}
	struct frontend *fe = lb_frontend_node(&fk);
	if (!fe)
		return 1;
	/* Left to the kernel: a traffic policy with no local endpoint (kube-proxy drops; the
	 * socket scope's entry gives clients on the node the Cluster endpoints where kube-proxy
	 * does), and source ranges (what a node's own source is depends on the route). */
	if (fe->flags & (FE_F_DROP_EMPTY | FE_F_SOURCE_RANGES))
		return 1;
	if (!fe->count) {
		if (cfg_set_retval) {
			bpf_set_retval(-SOCK_ECONNREFUSED);
			return 0;
		}
		return 1;
	}
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u32 sel = proto == IPPROTO_UDP ? lb_hash((__u32)cookie, (__u32)(cookie >> 32), fe->svc_id)
					  : bpf_get_prandom_u32();
	__u32 id = sock_pick_id(fe, bpf_get_netns_cookie(ctx), sel);
	if (!id)
		return 1;
	struct backend *be = bpf_map_lookup_elem(&sluice_backends, &id);
	if (!be)
		return 1;
	struct sock_revnat_key rk = { .cookie = cookie, .addr = be->addr, .port = be->port, .proto = proto };
	/* The address the application asked for (a loopback one may not be the entry's). */
	struct sock_revnat rv = { .addr = asked, .port = fk.port, .scope = fk.scope, .svc_id = fe->svc_id };
	/* Without its reverse entry the application would see replies from the backend: then
	 * leave the socket alone rather than translate it half. */
	if (bpf_map_update_elem(&sluice_sock_revnat, &rk, &rv, BPF_ANY))
		return 1;
	sock_set_user_addr(ctx, &be->addr);
	ctx->user_port = (__u32)be->port;
	return 1;
}

/* recvmsg4 and getpeername4: a translated socket's peer is shown as the frontend it asked for,
 * if that frontend still leads to the same service. Must return 1. */
static __always_inline int sock_reverse(struct bpf_sock_addr *ctx)
{
	__u8 proto = sock_proto(ctx);
	if (!proto)
		return 1;
	struct sock_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.port = (__be16)ctx->user_port,
		.proto = proto,
	};
	sock_user_addr(ctx, &rk.addr);
	struct sock_revnat *rv = bpf_map_lookup_elem(&sluice_sock_revnat, &rk);
	if (!rv)
		return 1;
#ifdef SLUICE_IPV6
	if (sock_v4_mapped(&rv->addr)) {
		if (!sock_reverse_mapped_live(rv, proto)) {
			bpf_map_delete_elem(&sluice_sock_revnat, &rk);
			return 1;
		}
		sock_set_user_addr(ctx, &rv->addr);
		ctx->user_port = (__u32)rv->port;
		return 1;
	}
#endif
	struct frontend_key fk = { .addr = rv->addr, .port = rv->port, .proto = proto, .scope = rv->scope };
	if (sock_loopback(&fk.addr))
		sock_set_localhost(&fk.addr);
	struct frontend *fe = bpf_map_lookup_elem(&sluice_frontends, &fk);
	if (!fe || fe->svc_id != rv->svc_id) {
		bpf_map_delete_elem(&sluice_sock_revnat, &rk);
		return 1;
	}
	sock_set_user_addr(ctx, &rv->addr);
	ctx->user_port = (__u32)rv->port;
	return 1;
}

/* post_bind4: a socket bound to a frontend's address and port (a NodePort on a node address, an
 * external IP the node holds) would never see a connection, sluice translating every one of
 * them before it: the bind fails (EPERM) rather than leave a listener that silently gets
 * nothing, as Cilium refuses it. kube-proxy holds no port since 1.24, and its rules take the
 * traffic the same way. A wildcard bind is refused to the node's own processes only (a pod's
 * ports are its own), for the NodePorts served on loopback (their localhost entries say which:
 * 5.14+, with cfg_localhost). A specific address needs no namespace test: only the node holds
 * its addresses. Returns 1 to let the bind be. */
static __always_inline int sock_post_bind(struct bpf_sock *ctx)
{
	__u8 proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	struct frontend_key fk = {
		.port = bpf_htons((__u16)ctx->src_port),
		.proto = proto,
	};
#ifdef SLUICE_IPV6
	fk.addr.w[0] = ctx->src_ip6[0];
	fk.addr.w[1] = ctx->src_ip6[1];
	fk.addr.w[2] = ctx->src_ip6[2];
	fk.addr.w[3] = ctx->src_ip6[3];
	/* The wildcard [::] has no NodePort of its own: localhost's are IPv4's. */
	if (ADDR_IS_ZERO(fk.addr))
		return 1;
#else
	fk.addr = ctx->src_ip4;
	if (!fk.addr || (bpf_ntohl(fk.addr) >> 24) == LOOPBACK_NET) {
		if (!cfg_localhost || bpf_get_netns_cookie(ctx) != cfg_host_netns_cookie)
			return 1;
		fk.addr = bpf_htonl(LOCALHOST);
	}
#endif
	return lb_frontend_node(&fk) ? 0 : 1;
}

#endif
