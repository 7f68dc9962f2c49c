// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* fwd.c: the bare XDP forwarder, the benchmarks' ceiling. It does the least a forwarder must:
 * parse Ethernet and IPv4, compare the destination address with a few fixed rules (no map
 * lookup, no connection table, no NAT, no FIB), decrement the TTL (updating the header
 * checksum incrementally), rewrite both MAC addresses and send the frame out with XDP_TX, or
 * with bpf_redirect when the rule names another device. Anything else goes to the kernel. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_RULES 4

/* One destination: frames to daddr leave through ifindex (0: the device they came in on)
 * from smac to dmac. Go: fwdRule (bpf2go). */
struct rule {
	__be32 daddr;
	__u32 ifindex;
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
};

/* Settings, written from Go (spec.Variables) before load. */
volatile const struct rule cfg_rules[MAX_RULES];
volatile const __u32 cfg_nrules = 0;

/* Frames forwarded, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} fwd_count SEC(".maps");

SEC("xdp")
int fwd_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + sizeof(*eth);

	if ((void *)(iph + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;

#pragma unroll
	for (int i = 0; i < MAX_RULES; i++) {
		if (i >= cfg_nrules)
			break;
		if (iph->daddr != cfg_rules[i].daddr)
			continue;
		if (iph->ttl <= 1)
			return XDP_PASS; /* the kernel sends the ICMP time exceeded */
		/* TTL is the high byte of a 16-bit word with the protocol: RFC 1624. */
		__u32 check = (__u32)iph->check + (__u32)bpf_htons(0x0100);
		iph->check = (__u16)(check + (check >= 0xffff)); /* the kernel's ip_decrease_ttl */
		iph->ttl--;
		/* Byte by byte: the settings are volatile, so the compiler must read them. */
#pragma unroll
		for (int j = 0; j < ETH_ALEN; j++) {
			eth->h_dest[j] = cfg_rules[i].dmac[j];
			eth->h_source[j] = cfg_rules[i].smac[j];
		}
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&fwd_count, &zero);
		if (n)
			(*n)++;
		if (cfg_rules[i].ifindex == 0 || cfg_rules[i].ifindex == ctx->ingress_ifindex)
			return XDP_TX;
		return bpf_redirect(cfg_rules[i].ifindex, 0);
	}
	return XDP_PASS;
}

char __license[] SEC("license") = "Dual BSD/GPL";
