/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* sock4in6.h: IPv4-mapped addresses (::ffff:a.b.c.d) in the IPv6 socket programs. An IPv6
 * socket without IPV6_V6ONLY (Java's, by default) reaches IPv4 addresses through them; its
 * connect() to an IPv4 frontend runs connect6, and must be balanced as connect4 balances an
 * IPv4 socket's, as Cilium does. IPv4's frontends and backends, declared here under names of
 * their own with IPv4's layouts (the IPv6 object's own structs hold 16-byte addresses); the
 * agent hands the object IPv4's live maps for them. */
#ifndef SLUICE_SOCK4IN6_H
#define SLUICE_SOCK4IN6_H

#ifdef SLUICE_IPV6

/* IPv4's frontend_key, frontend and backend (maps.h compiled for IPv4).
 * Go: datapath.SluiceFrontendKey, datapath.SluiceFrontend, datapath.SluiceBackend */
struct frontend_key4 {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 scope;
};

struct frontend4 {
	__u32 svc_id;
	__u16 count;
	__u16 flags;
	__u32 affinity_timeout_s;
	__be32 snat_addr;
};

struct backend4 {
	__be32 addr;
	__be16 port;
	__u8 flags;
	__u8 pad;
};

/* Not pinned: replaced by IPv4's sluice_frontends and sluice_backends at load. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct frontend_key4);
	__type(value, struct frontend4);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sluice_frontends4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct backend4);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} sluice_backends4 SEC(".maps");

#define V4_MAPPED_WORD 0x0000ffff /* ::ffff:0:0/96's third word */

static __always_inline bool sock_v4_mapped(const addr_t *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(V4_MAPPED_WORD);
}

static __always_inline void sock_map_v4(addr_t *a, __be32 v4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(V4_MAPPED_WORD);
	a->w[3] = v4;
}

/* The IPv4 frontend an IPv4-mapped address and port are, for clients on the node (as
 * lb_frontend_node), localhost's for any loopback address if host may have it. */
static __always_inline struct frontend4 *sock_frontend4(__be32 addr, __be16 port, __u8 proto, bool host)
{
	struct frontend_key4 fk = { .addr = addr, .port = port, .proto = proto, .scope = FE_SCOPE_SOCK };
	if ((bpf_ntohl(fk.addr) >> 24) == LOOPBACK_NET) {
		if (!cfg_localhost || !host)
			return 0;
		fk.addr = bpf_htonl(LOCALHOST);
	}
	struct frontend4 *fe = bpf_map_lookup_elem(&sluice_frontends4, &fk);
	if (fe)
		return fe;
	fk.scope = FE_SCOPE_ALL;
	return bpf_map_lookup_elem(&sluice_frontends4, &fk);
}

/* sock_forward for an IPv4-mapped address: the same decisions on IPv4's entries, the backend
 * written back IPv4-mapped, the reverse entry in IPv6's table under the mapped backend. */
static __always_inline int sock_forward_mapped(struct bpf_sock_addr *ctx, __u8 proto, const addr_t *asked, bool host)
{
	__be16 port = (__be16)ctx->user_port;
	struct frontend4 *fe = sock_frontend4(asked->w[3], port, proto, host);
	if (!fe)
		return 1;
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
	__u32 svc_id = fe->svc_id;
	__u32 sel = proto == IPPROTO_UDP ? lb_hash((__u32)cookie, (__u32)(cookie >> 32), svc_id) : bpf_get_prandom_u32();
	__u32 id = sock_pick(svc_id, fe->count, fe->flags, fe->affinity_timeout_s, bpf_get_netns_cookie(ctx), sel, &sluice_backends4);
	if (!id)
		return 1;
	struct backend4 *be = bpf_map_lookup_elem(&sluice_backends4, &id);
	if (!be)
		return 1;
	struct sock_revnat_key rk = { .cookie = cookie, .port = be->port, .proto = proto };
	sock_map_v4(&rk.addr, be->addr);
	struct sock_revnat rv = { .addr = *asked, .port = port, .scope = FE_SCOPE_SOCK, .svc_id = svc_id };
	if (bpf_map_update_elem(&sluice_sock_revnat, &rk, &rv, BPF_ANY))
		return 1;
	addr_t to;
	sock_map_v4(&to, be->addr);
	sock_set_user_addr(ctx, &to);
	ctx->user_port = (__u32)be->port;
	return 1;
}

/* Whether the IPv4 frontend a mapped reverse entry names still leads to its service. */
static __always_inline bool sock_reverse_mapped_live(const struct sock_revnat *rv, __u8 proto)
{
	struct frontend4 *fe = sock_frontend4(rv->addr.w[3], rv->port, proto, true);
	return fe && fe->svc_id == rv->svc_id;
}

#endif
#endif
