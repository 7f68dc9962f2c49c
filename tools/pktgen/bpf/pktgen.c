// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* pktgen.c: the generator. Go runs it with BPF_PROG_TEST_RUN and BPF_F_TEST_XDP_LIVE_FRAMES
 * (Linux 5.18+), where each repetition is a real frame: the verdict sends it out of the
 * ingress device (XDP_TX) or to cfg_redirect_ifindex (bpf_redirect).
 *
 * Every frame is built from scratch: live-frame pages are recycled without being
 * re-initialised, and whatever received the frame (a NAT, the kernel's forwarding) may have
 * rewritten it in place, so the program copies the template's first TMPL_LEN bytes over the
 * frame and only then sets the flow's source address and port, updating the checksums
 * incrementally from the template's (which Go computed), never from what the frame holds.
 *
 * IPv6 templates vary the source address's last 32 bits; having no header checksum, only the
 * L4 checksum (over the pseudo-header) changes. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "csum.h"

/* Bytes of the template rewritten in every frame: Ethernet, IPv4 without options and a TCP
 * or UDP header fit in TMPL_LEN, as do Ethernet, IPv6 and UDP; IPv6 and TCP need
 * TMPL_LEN_LONG (Go pads shorter templates, and says which length with cfg_tmpl_long). */
#define TMPL_LEN 64
#define TMPL_LEN_LONG 80
#define L3_OFF sizeof(struct ethhdr)
#define L4_OFF (L3_OFF + sizeof(struct iphdr))
#define L4_OFF6 (L3_OFF + sizeof(struct ipv6hdr))

/* Per-CPU generator state; Go writes it before a run (one worker pinned per CPU) and reads
 * it after. Go: pktgenState */
struct state {
	__u64 sent;     /* frames handed to XDP_TX or bpf_redirect */
	/* Past the limit frames are dropped: a test run that the kernel restarts after a signal
	 * (EINTR) repeats its whole count, so the limit, not the repeat count, keeps counts exact. */
	__u64 limit;
	__u32 flow;     /* this frame's flow, 0..cfg_flows-1 */
	__u32 port_idx; /* its source port is cfg_port_min + port_idx */
	__u32 addr_idx; /* its source address is cfg_addr_min + addr_idx */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct state);
} pktgen_state SEC(".maps");

/* Settings, written from Go (spec.Variables) before load. */
volatile const __u64 cfg_tmpl[TMPL_LEN_LONG / 8]; /* the template's first bytes */
volatile const __u8 cfg_tmpl_long = 0;       /* copy TMPL_LEN_LONG bytes, not TMPL_LEN */
volatile const __u8 cfg_ipv6 = 0;            /* the template is IPv6 */
volatile const __u8 cfg_proto = IPPROTO_UDP; /* the template's L4 protocol */
/* Flows cycle through source ports first, then addresses: flow f has port index
 * f % cfg_port_count and address index f / cfg_port_count (stepped, not divided). */
volatile const __u32 cfg_flows = 1;
volatile const __u16 cfg_port_min = 1024;    /* host order */
volatile const __u32 cfg_port_count = 1;
volatile const __u32 cfg_addr_min = 0;       /* host order; IPv6: the last 32 bits */
volatile const __u32 cfg_addr_count = 1;
volatile const __u32 cfg_redirect_ifindex = 0; /* 0: XDP_TX out of the ingress device */

SEC("xdp")
int pktgen_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;

	struct state *st = bpf_map_lookup_elem(&pktgen_state, &zero);
	if (!st)
		return XDP_ABORTED;
	if (st->sent >= st->limit)
		return XDP_DROP;
	__u64 *w = data;
	if (cfg_tmpl_long) {
		if (data + TMPL_LEN_LONG > data_end)
			return XDP_ABORTED;
#pragma unroll
		for (int i = 0; i < TMPL_LEN_LONG / 8; i++)
			w[i] = cfg_tmpl[i];
	} else {
		if (data + TMPL_LEN > data_end)
			return XDP_ABORTED;
#pragma unroll
		for (int i = 0; i < TMPL_LEN / 8; i++)
			w[i] = cfg_tmpl[i];
	}

	__be32 saddr = bpf_htonl(cfg_addr_min + st->addr_idx);
	__be16 sport = bpf_htons(cfg_port_min + st->port_idx);
	__u32 diff;
	void *l4;
	if (cfg_ipv6) {
		struct ipv6hdr *ip6 = data + L3_OFF;
		if ((void *)(ip6 + 1) > data_end)
			return XDP_ABORTED;
		diff = csum_diff4(0, ip6->saddr.in6_u.u6_addr32[3], saddr);
		ip6->saddr.in6_u.u6_addr32[3] = saddr;
		l4 = data + L4_OFF6;
	} else {
		struct iphdr *iph = data + L3_OFF;
		if ((void *)(iph + 1) > data_end)
			return XDP_ABORTED;
		diff = csum_diff4(0, iph->saddr, saddr);
		iph->check = csum_apply(iph->check, diff);
		iph->saddr = saddr;
		l4 = data + L4_OFF;
	}

	/* Bounds checked again: the copy's length and the family are separate settings. */
	if (cfg_proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			return XDP_ABORTED;
		diff = csum_diff2(diff, th->source, sport);
		th->check = csum_apply(th->check, diff);
		th->source = sport;
	} else {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > data_end)
			return XDP_ABORTED;
		diff = csum_diff2(diff, uh->source, sport);
		/* 0 means "no checksum" (IPv4 only) and stays so; a computed 0 is sent as 0xffff
		 * (RFC 768, RFC 8200 8.1). */
		if (uh->check) {
			__u16 c = csum_apply(uh->check, diff);
			uh->check = c ? c : 0xffff;
		}
		uh->source = sport;
	}

	st->sent++;
	if (++st->flow >= cfg_flows) {
		st->flow = 0;
		st->port_idx = 0;
		st->addr_idx = 0;
	} else if (++st->port_idx >= cfg_port_count) {
		st->port_idx = 0;
		st->addr_idx++;
	}

	if (cfg_redirect_ifindex)
		return bpf_redirect(cfg_redirect_ifindex, 0);
	return XDP_TX;
}

char __license[] SEC("license") = "Dual BSD/GPL";
