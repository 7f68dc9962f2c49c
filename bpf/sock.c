// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sock.c: the socket-level programs (cgroup sock_addr hooks, and post_bind4), an object of their own: loaded
 * only with socket load balancing on, sharing the packet path's maps. */
#include "lib/sock.h"

SEC("cgroup/connect4")
int sluice_connect4(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx);
}

SEC("cgroup/sendmsg4")
int sluice_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx);
}

SEC("cgroup/recvmsg4")
int sluice_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx);
}

SEC("cgroup/getpeername4")
int sluice_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx);
}

SEC("cgroup/post_bind4")
int sluice_post_bind4(struct bpf_sock *ctx)
{
	return sock_post_bind(ctx);
}

char __license[] SEC("license") = "Dual BSD/GPL";
