// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sluice6.c: the IPv6 programs, the packet path of lib/ compiled for IPv6 (lib/addr.h). The
 * IPv4 programs hand them IPv6 packets by tail call (sluice_progs6), so a device carries one
 * XDP program and one per tc hook, as before. */
#define SLUICE_IPV6 1
#include "lib/nodeport.h"

SEC("xdp")
int sluice_xdp6(struct xdp_md *ctx)
{
	return nodeport_ingress(ctx, true, false);
}

SEC("tc")
int sluice_tc_ingress6(struct __sk_buff *skb)
{
	return nodeport_ingress(skb, false, false);
}

SEC("tc")
int sluice_tc_egress6(struct __sk_buff *skb)
{
	return nodeport_egress(skb, false);
}

/* A new flow, by tail call from the programs above (nodeport_call_new_flow). */
SEC("xdp")
int sluice_xdp6_new_flow(struct xdp_md *ctx)
{
	return nodeport_new_flow_call(ctx, true, false);
}

SEC("tc")
int sluice_tc6_new_flow(struct __sk_buff *skb)
{
	return nodeport_new_flow_call(skb, false, false);
}

/* A pod's device (the host side of its veth), from the IPv4 programs there: ingress is what
 * the pod sends, egress what it receives. */
SEC("tc")
int sluice_tc_from_pod6(struct __sk_buff *skb)
{
	return nodeport_ingress(skb, false, true);
}

SEC("tc")
int sluice_tc_to_pod6(struct __sk_buff *skb)
{
	return nodeport_egress(skb, true);
}

/* A new flow a pod opens, by tail call from sluice_tc_from_pod6. */
SEC("tc")
int sluice_tc6_new_flow_pod(struct __sk_buff *skb)
{
	return nodeport_new_flow_call(skb, false, true);
}

/* A translated packet too big for its next hop, by tail call (fwd_too_big_to). */
SEC("tc")
int sluice_tc6_too_big(struct __sk_buff *skb)
{
	return fwd_too_big6(skb);
}

/* An ICMPv6 error about a translated flow, by tail call (icmp_related). */
SEC("tc")
int sluice_tc6_icmp(struct __sk_buff *skb)
{
	return icmp_related6(skb);
}

/* A kernel NAT flow leaving with no entry, by tail call (hostnat_track_call). */
SEC("tc")
int sluice_tc6_hostnat(struct __sk_buff *skb)
{
	return hostnat_track6(skb);
}

char __license[] SEC("license") = "Dual BSD/GPL";
