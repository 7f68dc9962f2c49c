/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ctx.h: one API over the two program contexts, XDP (struct xdp_md) and tc (struct __sk_buff).
 *
 * Every function takes `const bool xdp`; the entry programs pass a literal, and since everything
 * is __always_inline the compiler folds the branch away, so each program only ever touches its
 * own context type (the verifier rejects anything else). */
#ifndef SLUICE_CTX_H
#define SLUICE_CTX_H

#include "common.h"

/* Verdicts in the program's own terms. */
#define VERDICT_PASS(xdp) ((xdp) ? XDP_PASS : TC_ACT_OK)
#define VERDICT_DROP(xdp) ((xdp) ? XDP_DROP : TC_ACT_SHOT)

static __always_inline void *ctx_data(void *ctx, const bool xdp)
{
	if (xdp)
		return (void *)(long)((struct xdp_md *)ctx)->data;
	return (void *)(long)((struct __sk_buff *)ctx)->data;
}

static __always_inline void *ctx_data_end(void *ctx, const bool xdp)
{
	if (xdp)
		return (void *)(long)((struct xdp_md *)ctx)->data_end;
	return (void *)(long)((struct __sk_buff *)ctx)->data_end;
}

/* Full length of the packet; for tc that includes non-linear parts. */
static __always_inline __u32 ctx_len(void *ctx, const bool xdp)
{
	if (xdp)
		return (__u32)(ctx_data_end(ctx, xdp) - ctx_data(ctx, xdp));
	return ((struct __sk_buff *)ctx)->len;
}

static __always_inline __u32 ctx_ifindex(void *ctx, const bool xdp)
{
	if (xdp)
		return cfg_xdp_ifindex ? cfg_xdp_ifindex : ((struct xdp_md *)ctx)->ingress_ifindex;
	return ((struct __sk_buff *)ctx)->ifindex;
}

/* Make the first `want` bytes directly readable; only tc can have headers outside the linear
 * area. Invalidates packet pointers. */
static __always_inline void ctx_pull(void *ctx, const bool xdp, __u32 want)
{
	if (xdp)
		return;
	struct __sk_buff *skb = ctx;
	__u32 linear = (__u32)(ctx_data_end(ctx, xdp) - ctx_data(ctx, xdp));
	if (linear < want && skb->len > linear)
		bpf_skb_pull_data(skb, skb->len < want ? skb->len : want);
}

/* Send the packet back out of the device it arrived on. */
static __always_inline int ctx_bounce(void *ctx, const bool xdp)
{
	if (xdp)
		return XDP_TX;
	return bpf_redirect(ctx_ifindex(ctx, xdp), 0);
}

/* Send the packet out of ifindex (resolved L2 addresses already written). */
static __always_inline int ctx_redirect(void *ctx, const bool xdp, __u32 ifindex)
{
	if (xdp && ifindex == ctx_ifindex(ctx, xdp))
		return XDP_TX;
	return bpf_redirect(ifindex, 0);
}

/* Change the packet's length to `len` bytes by trimming its tail (len must not grow it). */
static __always_inline int ctx_trim(void *ctx, const bool xdp, __u32 len)
{
	__u32 cur = ctx_len(ctx, xdp);
	if (len > cur)
		return -1;
	if (len == cur)
		return 0;
	if (xdp)
		return bpf_xdp_adjust_tail(ctx, -(int)(cur - len));
	return bpf_skb_change_tail(ctx, len, 0);
}

/* Insert `room` bytes right after the L2 header of `l2_len` bytes. The new bytes sit at
 * [l2_len, l2_len+room); the L2 header stays in front. */
static __always_inline int ctx_insert_after_l2(void *ctx, const bool xdp, __u32 room, __u32 l2_len)
{
	if (!xdp)
		return bpf_skb_adjust_room(ctx, room, BPF_ADJ_ROOM_MAC, 0);

	if (bpf_xdp_adjust_head(ctx, -(int)room))
		return -1;
	void *data = ctx_data(ctx, xdp);
	void *data_end = ctx_data_end(ctx, xdp);
	/* Move the L2 header (14 or 18 bytes) from `room` to the front. */
	if (data + room + 18 > data_end)
		return -1;
	if (l2_len == 18)
		__builtin_memmove(data, data + room, 18);
	else
		__builtin_memmove(data, data + room, 14);
	return 0;
}

#endif
