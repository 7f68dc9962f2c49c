// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sluice.c: the entry programs. All logic lives in lib/; these only name the context. */
#include "lib/nodeport.h"

SEC("xdp")
int sluice_xdp(struct xdp_md *ctx)
{
	return nodeport_ingress(ctx, true, false);
}

SEC("tc")
int sluice_tc_ingress(struct __sk_buff *skb)
{
	return nodeport_ingress(skb, false, false);
}

SEC("tc")
int sluice_tc_egress(struct __sk_buff *skb)
{
	return nodeport_egress(skb, false);
}

/* A pod's device (the host side of its veth): ingress is what the pod sends, egress what it
 * receives. */
SEC("tc")
int sluice_tc_from_pod(struct __sk_buff *skb)
{
	return nodeport_ingress(skb, false, true);
}

SEC("tc")
int sluice_tc_to_pod(struct __sk_buff *skb)
{
	return nodeport_egress(skb, true);
}

char __license[] SEC("license") = "Dual BSD/GPL";
