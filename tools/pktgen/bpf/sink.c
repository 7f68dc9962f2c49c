// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sink.c: the receiving end. Attached as XDP to the device that receives the generated
 * frames, it counts every frame, separately those for the expected backend, optionally keeps
 * a few for Go to check and counts frames per source port, and drops them all. Being an XDP
 * program on a veth is also what makes the peer's XDP_TX and redirects into it deliver at
 * once (a veth without one drops them, or with GRO on parks them until other traffic). */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define SAMPLE_MAX 256 /* bytes of a frame kept in a sample */
#define SCRIBBLE_LEN 64
#define SCRIBBLE_LEN_LONG 80 /* the generator's IPv6 TCP frames */

/* Per-CPU counters. Go: sinkStats */
struct stats {
	__u64 packets; /* every frame */
	__u64 bytes;
	__u64 matched; /* frames to cfg_match_addr(6):cfg_match_port over cfg_match_proto */
	__u64 sampled; /* frames copied to sink_samples */
};

/* Leads every record in sink_samples; the frame's first cap bytes follow. Go: sampleHdr,
 * written by hand (BTF has no type used only on the stack, so bpf2go cannot generate it). */
struct sample_hdr {
	__u32 len; /* the frame's length */
	__u32 cap; /* bytes of it that follow */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stats);
} sink_stats SEC(".maps");

/* Perf rather than a ring buffer: bpf_perf_event_output copies frame bytes from an XDP
 * context by length (Linux 4.x), where a ring buffer would need bpf_xdp_load_bytes (5.18). */
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} sink_samples SEC(".maps");

/* Frames per source port (host order). Go shrinks it to one entry when ports are not tracked. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} sink_ports SEC(".maps");

/* Settings, written from Go (spec.Variables) before load. */
volatile const __be32 cfg_match_addr = 0;
volatile const __u8 cfg_match_ipv6 = 0;   /* match cfg_match_addr6, in IPv6 frames */
volatile const __be32 cfg_match_addr6[4];
volatile const __be16 cfg_match_port = 0;
volatile const __u8 cfg_match_proto = 0;   /* 0: nothing counts as matched */
volatile const __u32 cfg_sample = 0;       /* frames to keep, per CPU */
volatile const __u32 cfg_sample_every = 1; /* keep every Nth frame a CPU sees */
volatile const __u8 cfg_track_ports = 0;
/* Tests: overwrite the frame's first bytes before dropping it, as a NAT rewriting in place
 * would, to prove the generator rebuilds recycled live-frame pages. */
volatile const __u8 cfg_scribble = 0;

SEC("xdp")
int sink_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	__u32 zero = 0;

	struct stats *st = bpf_map_lookup_elem(&sink_stats, &zero);
	if (!st)
		return XDP_DROP;

	if (cfg_sample && st->sampled < cfg_sample && st->packets % cfg_sample_every == 0) {
		struct sample_hdr hdr = { .len = len, .cap = len < SAMPLE_MAX ? len : SAMPLE_MAX };
		__u64 flags = BPF_F_CURRENT_CPU | ((__u64)hdr.cap << 32);
		if (bpf_perf_event_output(ctx, &sink_samples, flags, &hdr, sizeof(hdr)) == 0)
			st->sampled++;
	}
	st->packets++;
	st->bytes += len;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		goto out;
	/* TCP and UDP both start with the source and destination ports. */
	struct udphdr *ports;
	int matched;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end || iph->ihl < 5)
			goto out;
		if (iph->protocol != IPPROTO_TCP && iph->protocol != IPPROTO_UDP)
			goto out;
		ports = (void *)iph + iph->ihl * 4;
		if ((void *)(ports + 1) > data_end)
			goto out;
		matched = !cfg_match_ipv6 && iph->protocol == cfg_match_proto && iph->daddr == cfg_match_addr;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		/* What the generator sends and a NAT forwards: no extension headers. */
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			goto out;
		if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
			goto out;
		ports = (void *)(ip6 + 1);
		if ((void *)(ports + 1) > data_end)
			goto out;
		const __be32 *d = ip6->daddr.in6_u.u6_addr32;
		matched = cfg_match_ipv6 && ip6->nexthdr == cfg_match_proto && d[0] == cfg_match_addr6[0] &&
			  d[1] == cfg_match_addr6[1] && d[2] == cfg_match_addr6[2] && d[3] == cfg_match_addr6[3];
	} else {
		goto out;
	}
	if (cfg_match_proto && matched && ports->dest == cfg_match_port)
		st->matched++;
	if (cfg_track_ports) {
		__u32 key = bpf_ntohs(ports->source);
		__u64 *n = bpf_map_lookup_elem(&sink_ports, &key);
		if (n)
			__sync_fetch_and_add(n, 1);
	}

out:
	if (cfg_scribble && data + SCRIBBLE_LEN_LONG <= data_end) {
		__u64 *w = data;
#pragma unroll
		for (int i = 0; i < SCRIBBLE_LEN_LONG / 8; i++)
			w[i] = 0xa5a5a5a5a5a5a5a5ULL;
	} else if (cfg_scribble && data + SCRIBBLE_LEN <= data_end) {
		__u64 *w = data;
#pragma unroll
		for (int i = 0; i < SCRIBBLE_LEN / 8; i++)
			w[i] = 0xa5a5a5a5a5a5a5a5ULL;
	}
	return XDP_DROP;
}

char __license[] SEC("license") = "Dual BSD/GPL";
