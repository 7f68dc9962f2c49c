// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sock6.c: the socket-level programs for IPv6 sockets (lib/sock.h compiled for IPv6, as
 * sluice6.c is the packet path's): on IPv6's frontends and backends, sharing the rest with
 * sock.c's. */
#define SLUICE_IPV6 1
#include "lib/sock.h"

SEC("cgroup/connect6")
int sluice_connect6(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx);
}

SEC("cgroup/sendmsg6")
int sluice_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx);
}

SEC("cgroup/recvmsg6")
int sluice_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx);
}

SEC("cgroup/getpeername6")
int sluice_getpeername6(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx);
}

SEC("cgroup/post_bind6")
int sluice_post_bind6(struct bpf_sock *ctx)
{
	return sock_post_bind(ctx);
}

char __license[] SEC("license") = "Dual BSD/GPL";
